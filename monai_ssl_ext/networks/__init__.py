"""Encoders and task heads: classifiers and joint classification + segmentation networks."""

from .encoders import RESNET_LAYOUTS, ResNetEncoder, load_encoder_weights
from .heads import Classifier, JointClassSegNet, UNetDecoder, as_output_dict

__all__ = [
    "RESNET_LAYOUTS",
    "Classifier",
    "JointClassSegNet",
    "ResNetEncoder",
    "UNetDecoder",
    "as_output_dict",
    "load_encoder_weights",
]

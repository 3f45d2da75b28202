"""Encoders and task heads: classifiers and joint classification + segmentation networks."""

from .attention import ChannelAttention, InterTaskAttention, SaliencyPooling, SpatialAttention, lesion_saliency
from .backbones import BACKBONES, build_encoder
from .efficientnet import EfficientNetLite0Encoder, load_efficientnet_weights
from .encoders import RESNET_LAYOUTS, InputNormalization, ResNetEncoder, load_encoder_weights
from .heads import Classifier, JointClassSegNet, UNetDecoder, as_output_dict
from .hermes import HermesNet, ProjectionHead
from .medfusenet import MedFuseNet, SimilarityFusion

__all__ = [
    "BACKBONES",
    "RESNET_LAYOUTS",
    "ChannelAttention",
    "Classifier",
    "EfficientNetLite0Encoder",
    "HermesNet",
    "InputNormalization",
    "InterTaskAttention",
    "JointClassSegNet",
    "MedFuseNet",
    "ProjectionHead",
    "ResNetEncoder",
    "SaliencyPooling",
    "SimilarityFusion",
    "SpatialAttention",
    "UNetDecoder",
    "as_output_dict",
    "build_encoder",
    "lesion_saliency",
    "load_efficientnet_weights",
    "load_encoder_weights",
]

"""Convolutional encoders that return their stage outputs, for classification and segmentation heads."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.networks.nets import ResNet
from torch import nn

from monai_ssl_ext.utils.weights import load_weights_file

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESNET_LAYOUTS",
    "InputNormalization",
    "ResNetEncoder",
    "load_encoder_weights",
]

logger = logging.getLogger(__name__)

_PREFIXES = ("module.", "backbone.", "encoder.")

# per-channel RGB statistics of ImageNet on a [0, 1] scale, what torchvision-trained weights expect
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# depth -> (block, layers), the layouts of He et al. (CVPR 2016)
RESNET_LAYOUTS: dict[int, tuple[str, list[int]]] = {
    10: ("basic", [1, 1, 1, 1]),
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
}


class InputNormalization(nn.Module):
    """Per-channel ``(x - mean) / std``, the input scaling a pretrained backbone was trained with.

    Input ``(B, C, *spatial)``; output the same shape. Statistics given for RGB (3 values) are
    averaged over the colours when ``in_channels`` differs from 3: a greyscale image then gets
    the scaling of a grey RGB image, which matches a stem whose RGB filters were summed.

    The statistics are non-persistent buffers: they follow ``.to(device)`` but stay out of the
    state dict, so checkpoints load whether or not normalisation was switched on.

    Args:
        mean: per-channel means on the input's scale (one value, or one per channel).
        std: per-channel standard deviations.
        in_channels: channels of the input (default: ``len(mean)``).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], in_channels: int | None = None) -> None:
        super().__init__()
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean and std need the same, non-zero length; got {len(mean)} and {len(std)}.")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}.")
        channels = len(mean) if in_channels is None else int(in_channels)
        if channels != len(mean):
            mean = [sum(mean) / len(mean)] * channels
            std = [sum(std) / len(std)] * channels
        self.in_channels = channels
        self.register_buffer("mean", torch.tensor(mean).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, channels, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the buffers are 4D for images; flattening them keeps 3D volumes working too
        shape = [1, self.in_channels] + [1] * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class ResNetEncoder(nn.Module):
    """A 2D ResNet (MONAI's implementation) that returns the output of every stage.

    Input ``(B, C_in, H, W)``; output a list of 5 maps: the stem at ``H/2`` (before max-pooling)
    and ``layer1..layer4`` at ``H/4, H/8, H/16, H/32`` (the ``torchvision`` layout, so
    ImageNet checkpoints in ``torchvision`` format load directly, see :func:`load_encoder_weights`).

    Args:
        depth: 10, 18, 34 or 50.
        in_channels: input channels (1 for greyscale).
        pretrained: path of a ``torchvision``-format ResNet state dict to initialise from (no download
            happens; ``None`` keeps random initialisation).
        width: base width multiplier (1.0 is the standard 64-channel stem).
        normalize_input: apply the ImageNet mean/std (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`,
            averaged over RGB for other channel counts) to inputs in ``[0, 1]`` before the stem, the
            scaling ``torchvision`` weights were trained with. ``None``: on when ``pretrained`` is given.
    """

    def __init__(
        self,
        depth: int = 18,
        in_channels: int = 1,
        pretrained: str | os.PathLike | None = None,
        width: float = 1.0,
        normalize_input: bool | None = None,
    ) -> None:
        super().__init__()
        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth {depth} is not available; choose from {sorted(RESNET_LAYOUTS)}.")
        block, layers = RESNET_LAYOUTS[depth]
        net = ResNet(
            block=block,
            layers=layers,
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            widen_factor=width,
            feed_forward=False,
        )
        self.conv1, self.bn1, self.act, self.maxpool = net.conv1, net.bn1, net.act, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if block == "bottleneck" else 1
        stem = int(64 * width)
        self.out_channels: list[int] = [stem] + [int(c * width) * expansion for c in (64, 128, 256, 512)]
        self.in_channels = in_channels
        if normalize_input is None:
            normalize_input = bool(pretrained)
        self.input_norm: nn.Module = (
            InputNormalization(IMAGENET_MEAN, IMAGENET_STD, in_channels) if normalize_input else nn.Identity()
        )
        if pretrained:
            load_encoder_weights(self, pretrained)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stages: list[torch.Tensor] = []
        for index in range(5):
            x = self.forward_stage(x, index)
            stages.append(x)
        return stages

    def forward_stage(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Stage ``index`` (0-4) alone: maps stage ``index - 1``'s output (or the image) to the ``index``-th map.

        Lets a network change features between stages (as Hermes's inter-task attention does).
        """
        if index == 0:
            return self.act(self.bn1(self.conv1(self.input_norm(x))))
        if index == 1:
            return self.layer1(self.maxpool(x))
        if index == 2:
            return self.layer2(x)
        if index == 3:
            return self.layer3(x)
        return self.layer4(x)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a plain state dict, or one nested under ``state_dict``/``model``/``network``."""
    state = load_weights_file(path, map_location="cpu")
    for key in ("state_dict", "model", "network"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of tensors, found a {type(state).__name__}.")
    return state


def strip_wrapper_prefix(key: str) -> str:
    """``"module.encoder.conv1.weight"`` -> ``"conv1.weight"``: the names wrappers (DDP, a model's backbone) add."""
    while key.startswith(_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike, strict_backbone: bool = True) -> nn.Module:
    """Load a local checkpoint into ``encoder``, adapting the first convolution to its input channels.

    Accepts a plain state dict or a dict with ``state_dict``/``model``/``network`` inside; keys may
    carry a ``module.``, ``backbone.`` or ``encoder.`` prefix. Classification-layer keys (``fc.*``)
    are ignored. A 3-channel stem is summed over channels for a 1-channel encoder (the usual way to
    reuse ImageNet weights for greyscale images: the response to a grey image is unchanged).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: no encoder weight matched (the message lists a few keys found in the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Pretrained weights not found: {path}")
    state = read_state_dict(path)
    own = encoder.state_dict()
    matched: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        name = strip_wrapper_prefix(k)
        if name not in own:
            continue
        if name == "conv1.weight" and v.shape[1] != own[name].shape[1]:
            v = v.sum(dim=1, keepdim=True).repeat(1, own[name].shape[1], 1, 1) / own[name].shape[1]
        if v.shape != own[name].shape:
            raise ValueError(
                f"{path}: weight '{k}' has shape {tuple(v.shape)}, the encoder expects {tuple(own[name].shape)}."
            )
        matched[name] = v
    if not matched:
        sample = list(state)[:5]
        raise ValueError(f"{path}: no weight matches this encoder (keys in the file start with {sample}).")
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    if missing and strict_backbone:
        raise ValueError(f"{path}: {len(missing)} encoder weights are missing from the file, e.g. {missing[:5]}.")
    encoder.load_state_dict(matched, strict=False)
    logger.info("loaded %d pretrained tensors from %s", len(matched), path)
    return encoder

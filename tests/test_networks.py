"""Encoders and heads: stage shapes and strides, pretrained-weight loading, output formats, gradients, TorchScript."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_ssl_ext.keys import OutputKeys
from monai_ssl_ext.networks import (
    RESNET_LAYOUTS,
    Classifier,
    JointClassSegNet,
    ResNetEncoder,
    as_output_dict,
    load_encoder_weights,
)

SMALL_DECODER = (32, 16, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- ResNetEncoder


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize(
    ("depth", "channels"),
    [(10, [64, 64, 128, 256, 512]), (18, [64, 64, 128, 256, 512]), (50, [64, 256, 512, 1024, 2048])],
)
def test_encoder_stage_shapes_and_strides(depth, channels, in_channels):
    torch.manual_seed(0)
    encoder = ResNetEncoder(depth=depth, in_channels=in_channels).eval()
    assert encoder.out_channels == channels
    assert encoder.in_channels == in_channels
    with torch.no_grad():
        stages = encoder(torch.rand(1, in_channels, 64, 32))
    assert len(stages) == 5
    strides = [2, 4, 8, 16, 32]
    for stage, c, s in zip(stages, channels, strides, strict=True):
        assert tuple(stage.shape) == (1, c, 64 // s, 32 // s)


def test_encoder_width_scales_channels():
    encoder = ResNetEncoder(depth=10, width=0.5).eval()
    assert encoder.out_channels == [32, 32, 64, 128, 256]
    with torch.no_grad():
        stages = encoder(torch.rand(1, 1, 32, 32))
    assert [s.shape[1] for s in stages] == encoder.out_channels


def test_encoder_rejects_unknown_depth():
    assert 11 not in RESNET_LAYOUTS
    with pytest.raises(ValueError, match="depth 11"):
        ResNetEncoder(depth=11)


# ---------------------------------------------------------------- load_encoder_weights


def _torchvision_like_checkpoint(tmp_path, in_channels=3, prefix="module."):
    """A state dict of a 3-channel encoder with classifier keys, saved as a data-parallel checkpoint."""
    torch.manual_seed(1)
    source = ResNetEncoder(depth=10, in_channels=in_channels)
    # non-trivial running statistics, so that loading them is visible
    for module in source.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = {f"{prefix}{k}": v.clone() for k, v in source.state_dict().items()}
    state[f"{prefix}fc.weight"] = torch.randn(1000, 512)
    state[f"{prefix}fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet10_imagenet.pth"
    torch.save(state, path)
    return source.eval(), path


def test_load_weights_sums_rgb_stem_for_greyscale_encoder(tmp_path):
    source, path = _torchvision_like_checkpoint(tmp_path)
    target = ResNetEncoder(depth=10, in_channels=1)
    assert load_encoder_weights(target, path) is target

    expected_conv1 = source.conv1.weight.sum(dim=1, keepdim=True)
    torch.testing.assert_close(target.conv1.weight, expected_conv1)
    source_state = source.state_dict()
    for name, value in target.state_dict().items():
        if name != "conv1.weight":
            torch.testing.assert_close(value, source_state[name], msg=name)

    # the response to a grey image is that of the RGB network to the same grey replicated
    target.eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        grey = target(x)
        rgb = source(x.repeat(1, 3, 1, 1))
    for a, b in zip(grey, rgb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_load_weights_ignores_fc_keys_and_accepts_nested_state_dict(tmp_path):
    source, path = _torchvision_like_checkpoint(tmp_path, prefix="backbone.")
    state = torch.load(path, weights_only=True)
    assert "backbone.fc.weight" in state
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": state, "epoch": 3}, nested)

    target = ResNetEncoder(depth=10, in_channels=3)
    load_encoder_weights(target, nested)
    assert not any(k.startswith("fc.") for k in target.state_dict())
    for name, value in target.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[name], msg=name)


def test_load_weights_adapts_greyscale_stem_to_three_channels(tmp_path):
    source, path = _torchvision_like_checkpoint(tmp_path, in_channels=1)
    target = ResNetEncoder(depth=10, in_channels=3)
    load_encoder_weights(target, path)
    torch.testing.assert_close(target.conv1.weight, source.conv1.weight.repeat(1, 3, 1, 1) / 3)


def test_pretrained_argument_loads_weights(tmp_path):
    source, path = _torchvision_like_checkpoint(tmp_path)
    net = Classifier(num_classes=2, in_channels=3, depth=10, pretrained=path)
    torch.testing.assert_close(net.encoder.layer4[0].conv1.weight, source.layer4[0].conv1.weight)


def test_load_weights_missing_file(tmp_path):
    missing = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        load_encoder_weights(ResNetEncoder(depth=10), missing)


def test_load_weights_without_matching_keys_names_the_file(tmp_path):
    path = tmp_path / "unrelated.pt"
    torch.save({"decoder.weight": torch.zeros(3), "head.bias": torch.zeros(2)}, path)
    encoder = ResNetEncoder(depth=10)
    before = encoder.conv1.weight.detach().clone()
    with pytest.raises(ValueError) as info:
        load_encoder_weights(encoder, path)
    assert str(path) in str(info.value)
    assert "decoder.weight" in str(info.value)
    assert torch.equal(encoder.conv1.weight, before)


def test_load_weights_partial_checkpoint_is_rejected_when_strict(tmp_path):
    source = ResNetEncoder(depth=10, in_channels=1)
    path = tmp_path / "stem_only.pt"
    torch.save({"conv1.weight": source.conv1.weight.detach().clone()}, path)
    with pytest.raises(ValueError, match="missing"):
        load_encoder_weights(ResNetEncoder(depth=10, in_channels=1), path)
    target = ResNetEncoder(depth=10, in_channels=1)
    load_encoder_weights(target, path, strict_backbone=False)
    torch.testing.assert_close(target.conv1.weight, source.conv1.weight)


# ---------------------------------------------------------------- Classifier


def test_classifier_returns_logits_tensor():
    net = Classifier(num_classes=4, in_channels=1, depth=10).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 32, 32))
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == (2, 4)


def test_classifier_return_dict_has_class_and_features():
    torch.manual_seed(0)
    net = Classifier(num_classes=4, in_channels=3, depth=10, return_dict=True).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        pooled = net.encoder(x)[-1].mean(dim=(2, 3))
    assert set(out) == {OutputKeys.CLASS, OutputKeys.FEATURES}
    assert tuple(out[OutputKeys.CLASS].shape) == (2, 4)
    assert tuple(out[OutputKeys.FEATURES].shape) == (2, net.feature_dim) == (2, 512)
    torch.testing.assert_close(out[OutputKeys.FEATURES], pooled)
    torch.testing.assert_close(out[OutputKeys.CLASS], net.head(pooled))


def test_classifier_with_embed_dim_adds_the_projected_embedding():
    torch.manual_seed(0)
    net = Classifier(num_classes=4, in_channels=3, depth=10, return_dict=True, embed_dim=16).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
    assert set(out) == {OutputKeys.CLASS, OutputKeys.FEATURES, OutputKeys.EMBEDDING}
    assert tuple(out[OutputKeys.EMBEDDING].shape) == (2, 16)
    torch.testing.assert_close(out[OutputKeys.EMBEDDING], net.projection(out[OutputKeys.FEATURES]))
    # without one, checkpoints keep their keys
    assert not any(k.startswith("projection") for k in Classifier(4, depth=10).state_dict())


# ---------------------------------------------------------------- JointClassSegNet


@pytest.mark.parametrize("size", [(32, 32), (48, 32)])
def test_joint_net_output_shapes(size):
    net = JointClassSegNet(num_classes=3, seg_classes=2, depth=10, decoder_channels=SMALL_DECODER).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *size))
    assert set(out) == {OutputKeys.CLASS, OutputKeys.SEG, OutputKeys.FEATURES}
    assert tuple(out[OutputKeys.CLASS].shape) == (2, 3)
    assert tuple(out[OutputKeys.SEG].shape) == (2, 2, *size)
    assert tuple(out[OutputKeys.FEATURES].shape) == (2, 512)


def test_joint_net_default_decoder_and_return_dict_false():
    net = JointClassSegNet(num_classes=3, seg_classes=3, depth=10).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        out = net(x)
        assert tuple(out[OutputKeys.SEG].shape) == (1, 3, 32, 32)
        net.return_dict = False
        logits = net(x)
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(logits, out[OutputKeys.CLASS])


def _grads(module):
    return {name: p.grad for name, p in module.named_parameters()}


def test_joint_net_seg_loss_reaches_encoder_and_decoder():
    torch.manual_seed(0)
    net = JointClassSegNet(num_classes=2, depth=10, decoder_channels=SMALL_DECODER).train()
    x = torch.rand(2, 1, 48, 32)
    target = (torch.rand(2, 48, 32) > 0.5).long()
    F.cross_entropy(net(x)[OutputKeys.SEG], target).backward()
    for part in (net.encoder, net.decoder, net.seg_head):
        for name, grad in _grads(part).items():
            assert grad is not None and grad.abs().sum() > 0, name
    assert all(g is None for g in _grads(net.head).values())


def test_joint_net_class_loss_reaches_encoder_not_decoder():
    torch.manual_seed(0)
    net = JointClassSegNet(num_classes=2, depth=10, decoder_channels=SMALL_DECODER).train()
    x = torch.rand(2, 1, 32, 32)
    F.cross_entropy(net(x)[OutputKeys.CLASS], torch.tensor([0, 1])).backward()
    for part in (net.encoder, net.head):
        for name, grad in _grads(part).items():
            assert grad is not None and grad.abs().sum() > 0, name
    assert all(g is None for g in _grads(net.decoder).values())
    assert all(g is None for g in _grads(net.seg_head).values())


# ---------------------------------------------------------------- TorchScript


@pytest.mark.parametrize(
    "make",
    [
        lambda: Classifier(num_classes=3, depth=10, return_dict=False),
        lambda: Classifier(num_classes=3, depth=10, return_dict=False, embed_dim=8),
        lambda: JointClassSegNet(num_classes=3, depth=10, decoder_channels=SMALL_DECODER, return_dict=False),
    ],
    ids=["classifier", "classifier_with_projection", "joint"],
)
def test_torchscript_matches_eager(make):
    torch.manual_seed(0)
    net = make().eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        eager = net(x)
        out = scripted(x)
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == (2, 3)
    torch.testing.assert_close(out, eager)


# ---------------------------------------------------------------- as_output_dict


def test_as_output_dict_passes_dicts_through():
    d = {OutputKeys.CLASS: torch.zeros(2, 3)}
    assert as_output_dict(d) is d


def test_as_output_dict_classifies_tensors_by_rank():
    logits = torch.zeros(2, 3)
    seg = torch.zeros(2, 2, 8, 8)
    seg3d = torch.zeros(2, 2, 4, 8, 8)
    assert as_output_dict(logits).keys() == {OutputKeys.CLASS}
    assert as_output_dict(logits)[OutputKeys.CLASS] is logits
    assert as_output_dict(seg).keys() == {OutputKeys.SEG}
    assert as_output_dict(seg)[OutputKeys.SEG] is seg
    assert as_output_dict(seg3d)[OutputKeys.SEG] is seg3d


@pytest.mark.parametrize("output", [(torch.zeros(2, 3),), [torch.zeros(2, 3)]])
def test_as_output_dict_rejects_sequences(output):
    with pytest.raises(TypeError, match="tuple"):
        as_output_dict(output)


@pytest.mark.parametrize("shape", [(3,), (2, 8, 8)])
def test_as_output_dict_rejects_ambiguous_ranks(shape):
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        as_output_dict(torch.zeros(shape))

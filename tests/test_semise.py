"""SEMISE: the phase schedule, each loss term's effect, the healthy reference, resume, and its network."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import run_two_ranks
from monai.data import MetaTensor, list_data_collate

from monai_ssl_ext.algorithms import SEMISE, severity_levels
from monai_ssl_ext.keys import OutputKeys
from monai_ssl_ext.networks import JointClassSegNet

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_DECODER = (16, 8, 8, 8)
TOTAL = 20  # phase 0: steps 0-4, phase 1: steps 5-9, fine-tuning: 10-19 (defaults 0.25 / 0.5)


def _net(embed_dim: int | None = 16, **kwargs) -> JointClassSegNet:
    return JointClassSegNet(3, depth=10, decoder_channels=SMALL_DECODER, embed_dim=embed_dim, **kwargs)


def _batches(labels=(0, 1, 2, 1), seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    labeled = {
        "image": torch.rand(n, 1, 32, 32, generator=g),
        "label": torch.tensor(labels),
        "mask": (torch.rand(n, 1, 32, 32, generator=g) > 0.5).float(),
    }
    unlabeled = {
        "image_view1": torch.rand(4, 1, 32, 32, generator=g),
        "image_view2": torch.rand(4, 1, 32, 32, generator=g),
        "index": torch.arange(4),
    }
    return labeled, unlabeled


def _semise(total: int = TOTAL, net=None, **kwargs) -> SEMISE:
    kwargs.setdefault("class_levels", [0, 1, 2])
    algorithm = SEMISE(3, **kwargs)
    algorithm.setup(net if net is not None else _net(), total)
    return algorithm


# ---------------------------------------------------------------- schedule


def test_phase_boundaries_follow_shares_of_the_run():
    algorithm = _semise(phase1=0.25, phase2=0.5)
    assert algorithm.phase_ends.tolist() == [5, 10]
    assert [algorithm.phase_at(s) for s in (0, 4, 5, 9, 10, 19)] == [0, 0, 1, 1, 2, 2]
    # shares round half up, so a 4-step smoke run visits every phase
    assert _semise(total=4).phase_ends.tolist() == [1, 2]
    # no representation phases: supervised from the first step; no fine-tuning: representation to the end
    assert _semise(phase1=0.0, phase2=0.0).phase_at(0) == 2
    assert _semise(phase1=0.5, phase2=1.0).phase_at(TOTAL - 1) == 1
    with pytest.raises(RuntimeError, match="setup"):
        SEMISE(3, [0, 1, 2]).phase_at(0)


def test_each_phase_switches_on_its_own_terms():
    torch.manual_seed(0)
    net = _net()
    # margin 2 (the largest cosine distance) keeps the margin term positive for any embedding
    algorithm = _semise(net=net, margin=2.0, alpha=0.5)
    labeled, unlabeled = _batches()
    nonzero = {}
    for step in (0, 5, 10):
        out = algorithm.train_step(net, labeled, unlabeled, step)
        terms = {k: float(v) for k, v in out.terms.items()}
        nonzero[step] = {k for k in ("loss_nt_xent", "loss_margin", "loss_ranking") if terms[k] != 0}
        assert out.logs["phase"] == float(algorithm.phase_at(step)) == float(algorithm.phase)
        assert set(out.labeled_outputs) == {OutputKeys.CLASS, OutputKeys.SEG}
        assert terms["loss_sup"] > 0  # always reported, weighted 0 before fine-tuning
        if step < 10:
            rep = 0.5 * terms["loss_nt_xent"] + 0.5 * (terms["loss_margin"] + terms["loss_ranking"])
            assert terms["loss_representation"] == pytest.approx(rep, rel=1e-5)
            assert float(out.loss.detach()) == pytest.approx(rep, rel=1e-5)
            assert out.logs["supervised_weight"] == 0.0
        else:
            assert float(out.loss.detach()) == pytest.approx(terms["loss_sup"], rel=1e-5)
            assert out.logs["representation_weight"] == 0.0
    assert nonzero == {0: {"loss_nt_xent", "loss_margin"}, 5: {"loss_nt_xent", "loss_ranking"}, 10: set()}


def test_supervised_weight_during_representation_and_representation_weight_during_finetuning():
    torch.manual_seed(0)
    net = _net()
    algorithm = _semise(net=net, representation_supervised_weight=0.1, finetune_representation_weight=0.5)
    labeled, unlabeled = _batches()
    out = algorithm.train_step(net, labeled, unlabeled, 5)
    terms = {k: float(v) for k, v in out.terms.items()}
    assert float(out.loss.detach()) == pytest.approx(terms["loss_representation"] + 0.1 * terms["loss_sup"], rel=1e-5)
    out = algorithm.train_step(net, labeled, unlabeled, 15)
    terms = {k: float(v) for k, v in out.terms.items()}
    # fine-tuning keeps the final combined loss, NT-Xent + preference ranking
    assert terms["loss_nt_xent"] > 0 and terms["loss_ranking"] > 0 and terms["loss_margin"] == 0
    assert float(out.loss.detach()) == pytest.approx(terms["loss_sup"] + 0.5 * terms["loss_representation"], rel=1e-5)


# ---------------------------------------------------------------- each term trains the encoder


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize(("alpha", "step", "term"), [(1.0, 0, "nt_xent"), (0.0, 0, "margin"), (0.0, 5, "ranking")])
def test_each_representation_term_alone_changes_the_encoder_not_the_heads(alpha, step, term):
    torch.manual_seed(0)
    net = _net().train()
    algorithm = _semise(net=net, alpha=alpha, margin=2.0)
    labeled, unlabeled = _batches()
    encoder, projection, head, decoder = (_params(m) for m in (net.encoder, net.projection, net.head, net.decoder))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    out = algorithm.train_step(net, labeled, unlabeled, step)
    assert float(out.terms[f"loss_{term}"]) > 0
    optimizer.zero_grad()
    out.loss.backward()
    # every parameter is in the graph (DistributedDataParallel needs it), the heads with zero gradient
    assert all(p.grad is not None for p in net.parameters())
    optimizer.step()
    for before, module in ((encoder, net.encoder), (projection, net.projection)):
        moved = [k for k, v in module.named_parameters() if not torch.equal(v, before[k])]
        assert moved, f"{term} did not move {type(module).__name__}"
    for before, module in ((head, net.head), (decoder, net.decoder)):
        assert all(torch.equal(v, before[k]) for k, v in module.named_parameters())


def test_finetuning_trains_the_heads_and_leaves_the_projection():
    torch.manual_seed(0)
    net = _net().train()
    algorithm = _semise(net=net)
    labeled, _ = _batches()
    projection, head, decoder = (_params(m) for m in (net.projection, net.head, net.decoder))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    out = algorithm.train_step(net, labeled, None, 12)  # no unlabeled batch needed any more
    optimizer.zero_grad()
    out.loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    optimizer.step()
    assert any(not torch.equal(v, head[k]) for k, v in net.head.named_parameters())
    assert any(not torch.equal(v, decoder[k]) for k, v in net.decoder.named_parameters())
    assert all(torch.equal(v, projection[k]) for k, v in net.projection.named_parameters())


@pytest.mark.parametrize("finetune_encoder", [True, False])
def test_finetune_encoder_switch_freezes_weights_and_statistics_of_the_encoder(finetune_encoder):
    torch.manual_seed(0)
    net = _net().train()
    algorithm = _semise(net=net, finetune_encoder=finetune_encoder)
    assert algorithm.frozen_parameters(net, 2) == [] and algorithm.frozen_parameters(net, 7) == []  # representation
    frozen = algorithm.frozen_parameters(net, 12)
    assert {id(p) for p in frozen} == (set() if finetune_encoder else {id(p) for p in net.encoder.parameters()})
    labeled, _ = _batches()
    encoder = {k: v.clone() for k, v in net.encoder.state_dict().items()}  # weights and batch-norm statistics
    head = _params(net.head)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for step in (12, 13):
        net.train()  # as the trainer does before every step
        out = algorithm.train_step(net, labeled, None, step)
        optimizer.zero_grad()
        out.loss.backward()
        for p in algorithm.frozen_parameters(net, step):  # as the trainer does
            p.grad = None
        optimizer.step()
    unchanged = all(torch.equal(v, encoder[k]) for k, v in net.encoder.state_dict().items())
    assert unchanged is not finetune_encoder
    assert net.encoder.training is finetune_encoder
    assert any(not torch.equal(v, head[k]) for k, v in net.head.named_parameters())


def test_the_representation_phases_ask_for_stratified_labeled_batches():
    assert _semise().stratified_steps(TOTAL) == 10  # phases 0 and 1
    assert _semise(phase2=0.3).stratified_steps(TOTAL) == 6
    assert _semise(stratify_labeled=False).stratified_steps(TOTAL) == 0


@pytest.mark.parametrize(
    ("independent", "keys"), [(True, ("image_view1", "image_view2")), (False, ("image_weak", "image_strong"))]
)
def test_nt_xent_pairs_the_views_the_algorithm_asks_the_pipeline_for(independent, keys):
    torch.manual_seed(0)
    net = _net().eval()  # per-sample outputs: the term can be recomputed from the two views alone
    algorithm = _semise(net=net, alpha=1.0, independent_views=independent)
    assert algorithm.unlabeled_views == ("contrastive" if independent else "weak_strong")
    labeled, _ = _batches()
    g = torch.Generator().manual_seed(5)
    unlabeled = {k: torch.rand(4, 1, 32, 32, generator=g) for k in keys}
    out = algorithm.train_step(net, labeled, unlabeled, 0)
    with torch.no_grad():
        z = [net(unlabeled[k])["embedding"] for k in keys]
    assert float(out.terms["loss_nt_xent"]) == pytest.approx(float(algorithm.nt_xent(*z)), abs=1e-5)
    # the other pipeline's views: refused with the transform that makes the right ones
    opposite = ("image_weak", "image_strong") if independent else ("image_view1", "image_view2")
    other = {o: unlabeled[k] for o, k in zip(opposite, keys, strict=True)}
    with pytest.raises(ValueError, match="unlabeled_transforms"):
        algorithm.train_step(net, labeled, other, 0)


def test_representation_steps_fix_the_representation_phases_and_leave_the_rest_to_fine_tuning():
    algorithm = _semise(total=32, representation_steps=12)
    assert algorithm.phase_ends.tolist() == [6, 12]  # phase 0 takes phase1 / phase2 = half of them
    assert [algorithm.phase_at(t) for t in (5, 6, 11, 12, 31)] == [0, 1, 1, 2, 2]
    assert algorithm.stratified_steps(32) == 12
    with pytest.raises(ValueError, match="no fine-tuning step"):
        _semise(total=12, representation_steps=12)
    with pytest.raises(ValueError, match="representation_steps must be >= 1"):
        SEMISE(3, class_levels=[0, 1, 2], representation_steps=0)


def test_frozen_encoder_needs_a_network_with_an_encoder():
    algorithm = _semise(finetune_encoder=False)
    with pytest.raises(ValueError, match="needs a network with an 'encoder'"):
        algorithm.frozen_parameters(torch.nn.Linear(2, 2), 12)


# ---------------------------------------------------------------- healthy reference


def test_reference_is_a_running_mean_of_normalised_healthy_embeddings():
    algorithm = _semise(reference_momentum=0.75)
    assert not algorithm.has_reference
    z1 = torch.tensor([[3.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    algorithm.update_reference(z1, torch.tensor([0, 0, 2]))
    first = torch.tensor([0.5, 0.5])  # mean of (1, 0) and (0, 1); the level-2 row is left out
    torch.testing.assert_close(algorithm.reference, first)
    assert int(algorithm.reference_count) == 2
    algorithm.update_reference(torch.tensor([[0.0, 2.0]]), torch.tensor([0]))
    torch.testing.assert_close(algorithm.reference, 0.75 * first + 0.25 * torch.tensor([0.0, 1.0]))
    before = algorithm.reference.clone()
    algorithm.update_reference(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))  # no healthy image
    torch.testing.assert_close(algorithm.reference, before)
    assert int(algorithm.reference_count) == 3


_REFERENCE_WORKER = r"""
import json, sys
import torch, torch.distributed as dist
from monai_ssl_ext.algorithms import SEMISE
from monai_ssl_ext.networks import JointClassSegNet

rank, out = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[3], rank=rank, world_size=2)
algorithm = SEMISE(3, class_levels=[0, 1, 2], reference_momentum=0.75)
algorithm.setup(JointClassSegNet(3, depth=10, decoder_channels=(16, 8, 8, 8), embed_dim=2), 20)
# step 1: only rank 0 has healthy images; step 2: only rank 1; step 3: neither (both must still join)
batches = {0: ([[3.0, 0.0], [0.0, 5.0]], [0, 0]), 1: ([[1.0, 1.0]], [2])} if rank == 0 else \
    {0: ([[1.0, 0.0]], [1]), 1: ([[0.0, 2.0], [0.0, 3.0], [4.0, 4.0]], [0, 0, 1])}
for step in range(3):
    rows, levels = batches.get(step, ([[1.0, 1.0]], [2]))
    algorithm.update_reference(torch.tensor(rows), torch.tensor(levels))
json.dump({"reference": algorithm.reference.tolist(), "count": int(algorithm.reference_count)},
          open(out + f"/rank{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow  # two fresh interpreters importing torch
def test_two_ranks_hold_one_reference_whichever_rank_saw_the_healthy_images(tmp_path):
    results = run_two_ranks(_REFERENCE_WORKER, tmp_path)
    assert results[0] == results[1]
    # one process seeing both ranks' rows: step 1 rank 0's two healthy rows, step 2 rank 1's two, step 3 none
    first = torch.tensor([0.5, 0.5])  # mean of (1, 0) and (0, 1)
    second = torch.tensor([0.0, 1.0])  # mean of (0, 1) and (0, 1)
    torch.testing.assert_close(torch.tensor(results[0]["reference"]), 0.75 * first + 0.25 * second)
    assert results[0]["count"] == 4


def test_train_step_updates_the_reference_without_gradient_and_logs_its_norm():
    torch.manual_seed(0)
    net = _net()
    algorithm = _semise(net=net)
    labeled, unlabeled = _batches(labels=(0, 0, 2, 1))
    out = algorithm.train_step(net, labeled, unlabeled, 0)
    assert algorithm.has_reference and not algorithm.reference.requires_grad
    assert algorithm.reference.shape == (16,) and int(algorithm.reference_count) == 2
    assert out.logs["reference_norm"] == pytest.approx(float(algorithm.reference.norm()))
    assert 0 < out.logs["reference_norm"] <= 1.0 + 1e-6
    assert out.logs["reference_level"] == 0.0


def test_without_a_healthy_class_the_least_severe_level_is_the_reference():
    torch.manual_seed(0)
    net = JointClassSegNet(2, depth=10, decoder_channels=SMALL_DECODER, embed_dim=16)
    algorithm = SEMISE(2, class_levels=severity_levels("busi", ["benign", "malignant"]))
    algorithm.setup(net, TOTAL)
    assert algorithm.class_levels.tolist() == [1, 2] and algorithm.reference_level == 1
    labeled, unlabeled = _batches(labels=(0, 1, 1, 0))
    out = algorithm.train_step(net, labeled, unlabeled, 5)
    assert algorithm.has_reference and int(algorithm.reference_count) == 2  # the two benign images
    assert out.logs["reference_level"] == 1.0 and float(out.terms["loss_ranking"]) > 0


def test_before_any_healthy_image_the_batch_least_severe_level_stands_in():
    torch.manual_seed(0)
    net = _net()
    algorithm = _semise(net=net, margin=2.0)
    labeled, unlabeled = _batches(labels=(1, 2, 2, 1))
    out = algorithm.train_step(net, labeled, unlabeled, 0)
    assert not algorithm.has_reference and out.logs["reference_norm"] == 0.0
    assert out.logs["reference_level"] == 1.0 and float(out.terms["loss_margin"]) > 0
    out = algorithm.train_step(net, labeled, unlabeled, 5)
    assert not algorithm.has_reference and float(out.terms["loss_ranking"]) > 0


def test_collated_meta_tensor_batches_from_a_real_loader():
    # labeled and unlabeled images carry different metadata: their concatenation must not be sliced as MetaTensor
    def items(keys, n, extra):
        return [
            {k: MetaTensor(torch.rand(1, 32, 32), meta={"filename_or_obj": f"{k}{i}.png", **extra}) for k in keys}
            for i in range(n)
        ]

    labeled = items(["image"], 4, {"spacing": 1.0})
    for i, item in enumerate(labeled):
        item["label"] = i % 3
        item["mask"] = MetaTensor((torch.rand(1, 32, 32) > 0.5).float())
    labeled = list_data_collate(labeled)
    unlabeled = list_data_collate(items(["image_view1", "image_view2"], 4, {"scanner": "b"}))
    unlabeled["index"] = torch.arange(4)
    torch.manual_seed(0)
    net = _net()
    algorithm = _semise(net=net)
    for step in (0, 5):
        out = algorithm.train_step(net, labeled, unlabeled, step)
        out.loss.backward()
    assert int(algorithm.reference_count) == 4  # labels 0, 1, 2, 0 twice


# ---------------------------------------------------------------- resume


def test_state_dict_round_trip_keeps_the_phase_and_the_reference():
    torch.manual_seed(0)
    net = _net()
    algorithm = _semise(net=net)
    labeled, unlabeled = _batches()
    for step in range(6):
        algorithm.train_step(net, labeled, unlabeled, step)
    buffer = io.BytesIO()
    torch.save(algorithm.state_dict(), buffer)
    buffer.seek(0)
    # a resumed run may plan a different length: the checkpoint's phase boundaries win
    resumed = _semise(total=400, net=net)
    assert resumed.phase_ends.tolist() == [100, 200] and not resumed.has_reference
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.phase_ends.tolist() == [5, 10] and int(resumed.phase) == 1
    torch.testing.assert_close(resumed.reference, algorithm.reference)
    assert int(resumed.reference_count) == int(algorithm.reference_count)
    assert [resumed.phase_at(s) for s in (6, 9, 10)] == [1, 1, 2]
    out = resumed.train_step(net, labeled, unlabeled, 6)
    assert out.logs["phase"] == 1.0 and float(out.terms["loss_ranking"]) > 0


# ---------------------------------------------------------------- arguments and helpers


def test_arguments_validated():
    with pytest.raises(ValueError, match="class_levels"):
        SEMISE(3, [0, 1])
    with pytest.raises(ValueError, match=">= 0"):
        SEMISE(2, [-1, 0])
    with pytest.raises(ValueError, match="phase1"):
        SEMISE(2, [0, 1], phase1=0.6, phase2=0.5)
    with pytest.raises(ValueError, match="alpha"):
        SEMISE(2, [0, 1], alpha=1.5)
    net = _net(embed_dim=None)
    algorithm = _semise(net=net)
    with pytest.raises(ValueError, match="embedding"):
        algorithm.train_step(net, *_batches(), 0)
    with pytest.raises(ValueError, match="unlabeled"):
        _semise().train_step(_net(), _batches()[0], None, 0)


def test_severity_levels_of_a_manifest():
    assert severity_levels("busi", ["normal", "benign", "malignant"]) == [0, 1, 2]
    assert severity_levels("BUSI", ["benign", "malignant"]) == [1, 2]
    assert severity_levels(None, ["b", "a", "c"]) == [0, 1, 2]
    assert severity_levels([["benign"], ["malignant"]], ["malignant", "benign"]) == [1, 0]
    assert severity_levels({"x": 0, "y": 1}, ["y", "x"]) == [1, 0]
    with pytest.raises(ValueError, match="mel"):
        severity_levels("busi", ["benign", "mel"])


# ---------------------------------------------------------------- the network's projection output


def test_joint_net_embedding_backbone_and_prediction_outputs():
    torch.manual_seed(0)
    net = _net(embed_dim=8, backbone="resnet10").eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        out = net(x)
    assert set(out) == {OutputKeys.CLASS, OutputKeys.SEG, OutputKeys.FEATURES, OutputKeys.EMBEDDING}
    assert out[OutputKeys.EMBEDDING].shape == (2, 8)
    torch.testing.assert_close(out[OutputKeys.EMBEDDING], net.projection(out[OutputKeys.FEATURES]))
    # the default network has no projection and no embedding output (as before)
    assert _net(embed_dim=None).projection is None
    assert "projection.net.0.weight" not in _net(embed_dim=None).state_dict()
    net.training_outputs = False
    with torch.no_grad():
        assert set(net(x)) == {OutputKeys.CLASS, OutputKeys.SEG}


@pytest.mark.parametrize(
    "kwargs",
    [{"embed_dim": 8}, {"embed_dim": 8, "training_outputs": False}, {"embed_dim": 8, "return_dict": False}, {}],
    ids=["training", "prediction", "logits", "no_projection"],
)
def test_joint_net_with_projection_scripts(kwargs):
    torch.manual_seed(0)
    net = JointClassSegNet(3, depth=10, decoder_channels=SMALL_DECODER, backbone="resnet10", **kwargs).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        eager, got = net(x), scripted(x)
    if isinstance(eager, dict):
        assert set(got) == set(eager)
        for key in eager:
            torch.testing.assert_close(got[key], eager[key])
    else:
        torch.testing.assert_close(got, eager)


def test_embedding_is_what_the_losses_read():
    # the NT-Xent of two identical views is lower than that of two unrelated batches
    torch.manual_seed(0)
    net = _net().eval()
    algorithm = _semise(net=net)
    with torch.no_grad():
        z = net(torch.rand(4, 1, 32, 32))[OutputKeys.EMBEDDING]
        other = net(torch.rand(4, 1, 32, 32))[OutputKeys.EMBEDDING]
    assert algorithm.nt_xent(z, z) < algorithm.nt_xent(z, other)

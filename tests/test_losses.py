"""Loss terms against brute-force definitions on small hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from protocli import losses
from protocli.model import ModelConfig, build_model

# 3 classes x 2 prototypes: prototype j belongs to class j // 2.
IDENTITY = torch.nn.functional.one_hot(torch.arange(6) // 2, 3).float()
MIN_D = torch.tensor(
    [
        [0.5, 0.2, 3.0, 4.0, 0.1, 9.0],
        [7.0, 6.0, 1.5, 2.5, 0.3, 0.4],
        [200.0, 300.0, 250.0, 1.0, 500.0, 400.0],  # far beyond D: the original's max_dist trick breaks
    ]
)
Y = torch.tensor([0, 2, 1])


def _brute_cluster_sep(min_d, y, own_class: bool):
    total = 0.0
    for b in range(min_d.shape[0]):
        vals = [min_d[b, j].item() for j in range(min_d.shape[1]) if (j // 2 == y[b].item()) == own_class]
        total += min(vals)
    return total / min_d.shape[0]


def test_cluster_and_separation_vs_brute_force():
    assert losses.cluster_cost(MIN_D, Y, IDENTITY).item() == pytest.approx(_brute_cluster_sep(MIN_D, Y, True))
    assert losses.separation_cost(MIN_D, Y, IDENTITY).item() == pytest.approx(
        _brute_cluster_sep(MIN_D, Y, False)
    )
    # by hand: own mins 0.2, 0.3, 1.0; other mins 0.1, 1.5, 200
    assert losses.cluster_cost(MIN_D, Y, IDENTITY).item() == pytest.approx((0.2 + 0.3 + 1.0) / 3)
    assert losses.separation_cost(MIN_D, Y, IDENTITY).item() == pytest.approx((0.1 + 1.5 + 200.0) / 3)


def test_cluster_gradient_only_to_the_nearest_own_prototype():
    d = MIN_D.clone().requires_grad_(True)
    losses.cluster_cost(d, Y, IDENTITY).backward()
    expect = torch.zeros_like(MIN_D)
    expect[0, 1] = expect[1, 4] = expect[2, 3] = 1 / 3
    torch.testing.assert_close(d.grad, expect)


def test_separation_with_a_single_class_is_zero_not_inf():
    one = torch.ones(2, 1)
    assert losses.separation_cost(torch.rand(4, 2), torch.zeros(4, dtype=torch.long), one).item() == 0.0


def test_l1_wrong_class_vs_brute_force():
    w = torch.randn(3, 6)
    brute = sum(abs(w[k, j].item()) for k in range(3) for j in range(6) if j // 2 != k)
    assert losses.l1_wrong_class(w, IDENTITY).item() == pytest.approx(brute, rel=1e-6)


def test_cross_entropy_is_float32_under_bf16_logits():
    logits = torch.randn(4, 3).bfloat16()
    y = torch.tensor([0, 1, 2, 0])
    out = losses.cross_entropy(logits, y)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(torch.nn.functional.cross_entropy(logits.float(), y).item())


def _brute_refine(p, q, distance, reduce, eps=1e-4):
    sims = torch.empty(p.shape[0], q.shape[0], dtype=torch.float64)
    for j in range(p.shape[0]):
        for s in range(q.shape[0]):
            d2 = ((p[j].double() - q[s].double()) ** 2).sum().item()
            d = d2 if distance == "squared" else math.sqrt(d2)
            sims[j, s] = math.log((d + 1) / (d + eps)) / math.log(1 / eps)
    return sims.max().item() if reduce == "max" else sims.max(dim=1).values.mean().item()


@pytest.mark.parametrize("distance", ["l2", "squared"])
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_refine_vs_brute_force(distance, reduce):
    g = torch.Generator().manual_seed(0)
    p = torch.rand(7, 4, generator=g)
    q = torch.rand(3, 4, generator=g) * 0.5
    got = losses.refine(p, q, distance=distance, reduce=reduce).item()
    assert got == pytest.approx(_brute_refine(p, q, distance, reduce), rel=1e-5)
    assert 0 < got < 1


@pytest.mark.parametrize("distance", ["l2", "squared"])
def test_refine_is_one_on_an_antitype_and_finite_gradient(distance):
    p = torch.rand(5, 4)
    q = torch.stack([torch.rand(4), p[2].clone()])
    pp = p.clone().requires_grad_(True)
    r = losses.refine(pp, q, distance=distance, reduce="max")
    assert r.item() == 1.0
    r.backward()
    assert torch.isfinite(pp.grad).all()
    # mean: the sitting prototype gives 1, the others less
    assert 0 < losses.refine(p, q, distance=distance, reduce="mean").item() < 1


def test_refine_gradient_pushes_the_nearest_prototype_away():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]], requires_grad=True)
    q = torch.tensor([[0.5, 0.52]])
    losses.refine(p, q, distance="l2", reduce="max").backward()
    assert p.grad[1].abs().sum() == 0  # max: only the closest pair gets gradient
    step = p.detach() - 1e-6 * p.grad
    assert (step[0] - q[0]).norm() > (p.detach()[0] - q[0]).norm()


def test_refine_without_antitypes_is_zero_in_graph():
    p = torch.rand(3, 4, requires_grad=True)
    r = losses.refine(p, torch.empty(0, 4))
    assert r.item() == 0.0 and r.requires_grad
    r.backward()
    assert torch.equal(p.grad, torch.zeros(3, 4))


def test_refine_rejects_unknown_options():
    with pytest.raises(ValueError):
        losses.refine(torch.rand(2, 2), torch.rand(1, 2), distance="l1")
    with pytest.raises(ValueError):
        losses.refine(torch.rand(2, 2), torch.rand(1, 2), reduce="sum")


def test_con_hinge_and_count():
    p = torch.tensor([[-0.5, 0.2, 1.3], [1.0, 0.0, 2.0]])
    assert losses.con_hinge(p).item() == pytest.approx(0.5 + 0.3 + 1.0)
    assert losses.con_count(p).item() == 3 and losses.con_count(p).dtype == torch.int64
    pp = p.clone().requires_grad_(True)
    losses.con_hinge(pp).backward()
    torch.testing.assert_close(pp.grad, torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    with torch.no_grad():  # one plain SGD step, lr 0.2 (torch.optim's first step costs ~1 s of imports)
        pp -= 0.2 * pp.grad
    assert losses.con_hinge(pp).item() < losses.con_hinge(p).item()
    assert losses.con_count(pp).item() <= 3
    assert pp[0, 1].item() == pytest.approx(0.2)  # entries inside are left alone


def test_protopnet_loss_combines_terms():
    cfg = ModelConfig(backbone="tiny", num_classes=3, prototypes_per_class=2, proto_dim=4, img_size=32)
    model = build_model(cfg, seed=0)
    logits = torch.randn(3, 3)
    total, parts = losses.protopnet_loss(logits, MIN_D, Y, model)
    expect = (
        losses.cross_entropy(logits, Y)
        + 0.8 * losses.cluster_cost(MIN_D, Y, IDENTITY)
        - 0.08 * losses.separation_cost(MIN_D, Y, IDENTITY)
        + 1e-4 * losses.l1_wrong_class(model.last_layer.weight, IDENTITY)
    )
    assert total.item() == pytest.approx(expect.item())
    assert set(parts) == {"crs_ent", "clst", "sep", "l1", "total"} and all(
        isinstance(v, float) for v in parts.values()
    )
    assert parts["l1"] == pytest.approx(0.5 * 12)  # 12 wrong-class weights of -0.5
    total2, _ = losses.protopnet_loss(logits, MIN_D, Y, model, {"clst": 0.0, "sep": 0.0, "l1": 0.0})
    assert total2.item() == pytest.approx(parts["crs_ent"])
    with pytest.raises(ValueError):
        losses.protopnet_loss(logits, MIN_D, Y, model, {"cluster": 1.0})


def test_refine_ignores_autocast():
    p, q = torch.rand(20, 16), torch.rand(5, 16)
    ref = losses.refine(p, q, reduce="mean")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = losses.refine(p, q, reduce="mean")
    assert got.dtype == torch.float32 and got.item() == ref.item()

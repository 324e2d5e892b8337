"""ProtoPNet: distances vs brute force, similarity, last-layer init, masking, config, save/load."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from protocli.errors import BadInput
from protocli.model import ModelConfig, ProtoPNet, build_model, export_state, log_similarity

CFG = ModelConfig(backbone="tiny", num_classes=3, prototypes_per_class=2, proto_dim=5, img_size=32)


@pytest.fixture
def model() -> ProtoPNet:
    return build_model(CFG, seed=0).eval()


def _brute_distances(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    B, _, H, W = z.shape
    out = torch.empty(B, p.shape[0], H, W, dtype=z.dtype)
    for b in range(B):
        for j in range(p.shape[0]):
            for h in range(H):
                for w in range(W):
                    out[b, j, h, w] = ((z[b, :, h, w] - p[j]) ** 2).sum()
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distances_equal_brute_force(model, dtype):
    model = model.to(dtype)
    with torch.no_grad():
        model.prototypes.copy_(torch.randn(6, 5, dtype=dtype))  # also outside [0, 1]
    z = torch.rand(2, 5, 3, 4, dtype=dtype)
    d = model.distances(z)
    assert d.dtype == dtype and d.shape == (2, 6, 3, 4)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(d, _brute_distances(z, model.prototypes.detach()), atol=tol, rtol=tol)


def test_distances_channels_last_and_autocast_stay_float32(model):
    z = torch.rand(2, 5, 4, 4)
    ref = model.distances(z)
    torch.testing.assert_close(model.distances(z.contiguous(memory_format=torch.channels_last)), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = model.distances(z.bfloat16())
        logits, min_d = model(torch.rand(2, 3, 32, 32))
    assert d.dtype == torch.float32 and min_d.dtype == torch.float32
    torch.testing.assert_close(d, model.distances(z.bfloat16().float()))
    assert logits.shape == (2, 3)


def test_distance_is_zero_on_a_prototype(model):
    z = torch.rand(1, 5, 2, 2)
    with torch.no_grad():
        model.prototypes[3] = z[0, :, 1, 0]
    assert model.distances(z)[0, 3, 1, 0].item() == pytest.approx(0.0, abs=1e-6)


def test_log_similarity_formula():
    d = torch.tensor([0.0, 0.5, 3.0, 100.0])
    expect = torch.tensor([math.log((x + 1) / (x + 1e-4)) for x in d.tolist()])
    torch.testing.assert_close(log_similarity(d), expect)
    assert log_similarity(torch.tensor(0.0)).item() == pytest.approx(math.log(1e4), rel=1e-6)
    assert torch.all(log_similarity(d)[1:] < log_similarity(d)[:-1])


def test_forward_equals_pieces(model):
    x = torch.rand(3, 3, 32, 32)
    logits, min_d = model(x)
    z = model.encode(x)
    assert z.shape == (3, 5, 4, 4) and z.min() >= 0 and z.max() <= 1  # Sigmoid head
    torch.testing.assert_close(min_d, model.distances(z).amin(dim=(2, 3)))
    torch.testing.assert_close(logits, log_similarity(min_d) @ model.last_layer.weight.T)
    torch.testing.assert_close(model.similarity_map(z), log_similarity(model.distances(z)))


def test_encode_normalises_with_imagenet_stats(model):
    x = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.encode(x), model.add_on(model.features((x - mean) / std)))


def test_init(model):
    assert model.prototypes.shape == (6, 5) and 0 <= model.prototypes.min() and model.prototypes.max() < 1
    expect = torch.full((3, 6), -0.5)
    for j in range(6):
        expect[j // 2, j] = 1.0
    assert torch.equal(model.last_layer.weight, expect) and model.last_layer.bias is None
    assert torch.equal(model.prototype_class, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(model.class_identity.argmax(1), model.prototype_class)
    assert torch.equal(model.prototype_mask, torch.ones(6))
    for m in model.add_on.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert torch.all(m.bias == 0)
    assert isinstance(model.add_on[-1], torch.nn.Sigmoid)


def test_masked_prototype_has_no_effect_on_logits(model):
    x = torch.rand(2, 3, 32, 32)
    model.prototype_mask[4] = 0
    before, _ = model(x)
    with torch.no_grad():
        model.prototypes[4] = torch.rand(5)
    after, min_d = model(x)
    torch.testing.assert_close(after, before)
    with torch.no_grad():
        model.prototypes[5] = torch.rand(5)  # an unmasked one does change them
    assert not torch.allclose(model(x)[0], before)


def test_grid_size_cached_and_leaves_bn_alone(model):
    model.train()
    bn = model.features.block1[1]
    stats = bn.running_mean.clone()
    assert model.grid_size() == (4, 4)
    assert torch.equal(bn.running_mean, stats) and model.training and bn.training
    model.cfg = ModelConfig(**{**CFG.to_dict(), "img_size": 96})
    assert model.grid_size() == (12, 12)


def test_bottleneck_add_on():
    m = build_model(
        ModelConfig(backbone="tiny", num_classes=2, prototypes_per_class=1, proto_dim=32, add_on="bottleneck")
    )
    convs = [x for x in m.add_on if isinstance(x, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(128, 64), (64, 64), (64, 32), (32, 32)]
    assert isinstance(m.add_on[3], torch.nn.ReLU) and isinstance(m.add_on[-1], torch.nn.Sigmoid)


def test_config_round_trip_and_validation():
    assert ModelConfig.from_dict(CFG.to_dict()) == CFG
    assert CFG.num_prototypes == 6
    with pytest.raises(BadInput, match="colour"):
        ModelConfig.from_dict({**CFG.to_dict(), "colour": 1})
    with pytest.raises(BadInput, match="add_on"):
        ModelConfig(add_on="deep")
    with pytest.raises(BadInput, match="proto_dim"):
        ModelConfig(proto_dim=0)


def test_seed_makes_build_deterministic_without_touching_global_rng():
    state = torch.get_rng_state()
    a, b = build_model(CFG, seed=3), build_model(CFG, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_safetensors_round_trip_into_fresh_model(tmp_path, model):
    with torch.no_grad():
        model.prototypes.add_(0.25)
        model.last_layer.weight.mul_(2)
    model.prototype_mask[1] = 0
    model.features.block2[1].running_mean.fill_(0.3)
    model = model.to(memory_format=torch.channels_last)  # non-contiguous conv weights
    path = tmp_path / "model.safetensors"
    save_file(export_state(model), str(path), metadata={"config": str(CFG.to_dict())})
    fresh = build_model(CFG, seed=99)
    fresh.load_state_dict(load_file(str(path)), strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))


def test_encoder_digest_tracks_encoder_only(model):
    digest = model.encoder_digest()
    keys = model.encoder_state_dict().keys()
    assert all(k.startswith(("features.", "add_on.")) for k in keys) and "prototypes" not in keys
    with torch.no_grad():
        model.prototypes.add_(1)
        model.last_layer.weight.add_(1)
    model.features.block1[1].num_batches_tracked += 5
    assert model.encoder_digest() == digest
    with torch.no_grad():
        model.add_on[0].bias.add_(1e-3)
    assert model.encoder_digest() != digest


def test_protopnet_without_backbone_argument():
    m = ProtoPNet(CFG)
    assert m.add_on[0].in_channels == 128

"""Training: frozen BatchNorm stays put, a tiny run learns, --resume is exact, push/evaluate contracts."""

import json

import pytest
import torch
from safetensors.torch import load_file

from protocli.cache import latents
from protocli.model import ModelConfig, build_model
from protocli.phases import set_phase
from protocli.run import Run
from protocli.train import TrainConfig, train_run


def test_frozen_batchnorm_statistics_do_not_change():
    model = build_model(ModelConfig(backbone="tiny", num_classes=2, prototypes_per_class=1, proto_dim=8,
                                    img_size=32))
    before = {k: v.clone() for k, v in model.features.state_dict().items()}
    set_phase(model, "warm")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        logits, _ = model(torch.rand(4, 3, 32, 32))
        logits.sum().backward()
        opt.step()
    for k, v in model.features.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed while the backbone was frozen"
    set_phase(model, "joint")
    model(torch.rand(4, 3, 32, 32))
    bn_mean = [k for k in before if k.endswith("running_mean")][0]
    assert not torch.equal(model.features.state_dict()[bn_mean], before[bn_mean])  # and it does move when trained


def test_tiny_training_learns(_tiny_run_master):
    run = Run.open(_tiny_run_master)
    kinds = [s["kind"] for s in run.stage_log()]
    assert kinds == ["train", "push", "last"]
    last = run.stage_log("last")[-1]
    assert last["train_accuracy"] > 0.5  # 4 classes: chance is 0.25


def test_push_prototypes_are_real_own_class_latents(_tiny_run_master, tiny_train_cfg):
    run = Run.open(_tiny_run_master)
    model = run.load_model()
    z, y = latents(model, run.cub(), "train", crop=True, cache_dir=run.cache_dir, device=torch.device("cpu"))
    doc = json.loads((run.latest_push() / "prototypes.json").read_text())
    pushed = load_file(str(run.latest_push() / "model.safetensors"))["prototypes"]
    for p in doc["prototypes"]:
        h, w = p["cell"]
        assert torch.equal(pushed[p["prototype"]], z[p["image_index"], :, h, w].float())
        assert int(y[p["image_index"]]) == p["class"] == p["prototype"] // tiny_train_cfg["prototypes_per_class"]
        x0, y0, x1, y1 = p["box"]
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        for sub in ("patches", "images", "heatmaps"):
            assert (run.latest_push() / sub / f"{p['prototype']:04d}.png").exists()


def test_resume_gives_the_same_weights(tiny_data, tiny_train_cfg, tmp_path, monkeypatch):
    import protocli.train as T

    cfg = TrainConfig(**{**tiny_train_cfg, "stop_after": "joint", "joint_epochs": 2})
    train_run(tiny_data, tmp_path / "full", cfg, device=torch.device("cpu"))

    calls = {"n": 0}
    real_epoch = T.train_epoch

    def dying_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # killed during the third epoch (after warm 1 and joint 1)
            raise KeyboardInterrupt
        return real_epoch(*a, **k)

    monkeypatch.setattr(T, "train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(tiny_data, tmp_path / "cut", cfg, device=torch.device("cpu"))
    assert Run.open(tmp_path / "cut").stage_log() == []  # nothing committed
    monkeypatch.setattr(T, "train_epoch", real_epoch)
    train_run(tiny_data, tmp_path / "cut", cfg, device=torch.device("cpu"), resume=True)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_evaluate_never_changes_the_model(tiny_run):
    from protocli.evaluate import evaluate_run

    before = (tiny_run / "model.safetensors").read_bytes()
    manifest = (tiny_run / "manifest.json").read_text()
    out = evaluate_run(tiny_run, criterion="box")
    assert (tiny_run / "model.safetensors").read_bytes() == before
    assert (tiny_run / "manifest.json").read_text() == manifest
    for key in ("accuracy", "train_accuracy", "prototypes", "active_prototypes", "non_object", "overlap_ge_75",
                "criterion", "non_object_box", "non_object_cell", "activation_precision", "per_class_accuracy"):
        assert key in out, key
    assert out["prototypes"] == out["active_prototypes"] == 8
    assert 0 <= out["non_object"] <= 8 and 0.0 <= out["activation_precision"] <= 1.0

"""Masking: a masked prototype has no effect on the logits; `mask` masks the rejected prototypes of
the latest push, fine-tunes only the last layer, records three accuracies, and forks with --out."""

from __future__ import annotations

import pytest
import torch

from protocli.errors import BadInput
from protocli.mask import mask_run
from protocli.model import ModelConfig, build_model
from protocli.run import Run, load_weights


def test_masked_prototypes_have_no_effect_on_the_logits():
    cfg = ModelConfig(backbone="tiny", num_classes=3, prototypes_per_class=2, proto_dim=8, img_size=32)
    model = build_model(cfg, seed=0).eval()
    z = torch.rand(5, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    masked = torch.tensor([1, 4])
    with torch.no_grad():
        model.prototype_mask[masked] = 0
        before, _ = model.head(z)
        model.prototypes[masked] = torch.rand(2, 8) * 3 - 1  # anywhere, even outside [0, 1]
        model.last_layer.weight[:, masked] = torch.randn(3, 2) * 10
        after, _ = model.head(z)
        assert torch.equal(before, after)
        model.prototypes[0] += 0.5  # an active prototype does change them
        assert not torch.allclose(model.head(z)[0], before)


def test_mask_run_masks_rejected_and_refits_the_last_layer(tiny_run, tmp_path, decide):
    rejected = [1, 6]
    decide.reject(tiny_run, rejected)
    run = Run.open(tiny_run)
    old = run.load_model()
    out = tmp_path / "masked"
    res = mask_run(tiny_run, last_epochs=3, out=out, generator=torch.Generator().manual_seed(0))
    # the original run is untouched; the fork has a committed mask stage
    assert torch.equal(Run.open(tiny_run).load_model().prototype_mask, torch.ones(old.num_prototypes))
    fork = Run.open(out)
    assert [s["kind"] for s in fork.stage_log()][-1] == "mask" and res["forked_from"] == str(tiny_run)
    new = fork.load_model()
    want = torch.ones(old.num_prototypes)
    want[rejected] = 0
    assert torch.equal(new.prototype_mask, want)
    assert res["masked"] == len(rejected) and res["active_prototypes"] == old.num_prototypes - len(rejected)
    # only the last layer changed
    for k, v in old.state_dict().items():
        if k not in ("last_layer.weight", "prototype_mask"):
            assert torch.equal(v, new.state_dict()[k]), k
    assert not torch.equal(old.last_layer.weight, new.last_layer.weight)
    for k in (
        "accuracy_before",
        "accuracy_masked",
        "accuracy_after",
        "train_accuracy_before",
        "train_accuracy_masked",
        "train_accuracy_after",
    ):
        assert 0.0 <= res[k] <= 1.0
    stage = fork.stage_dirs("mask")[-1]
    assert len((stage / "metrics.jsonl").read_text().splitlines()) == 3
    assert torch.equal(load_weights(stage / "model.safetensors").prototype_mask, want)


def test_masking_accuracy_matches_a_recount(tiny_run, decide):
    """accuracy_masked is the accuracy of the masked model before any fine-tune."""
    from protocli.evaluate import evaluate_model

    rejected = [0, 2, 5]
    decide.reject(tiny_run, rejected)
    run = Run.open(tiny_run)
    model = run.load_model()
    model.prototype_mask[rejected] = 0
    want = evaluate_model(run, model, run.cub(), torch.device("cpu"), apr=False)["accuracy"]
    res = mask_run(tiny_run, last_epochs=0)
    assert res["masked_prototypes"] == rejected
    assert torch.equal(Run.open(tiny_run).load_model().prototype_mask, model.prototype_mask)
    assert res["accuracy_masked"] == pytest.approx(want) == pytest.approx(res["accuracy_after"])


def test_without_decisions_is_bad_input_and_no_fork(tiny_run, tmp_path):
    with pytest.raises(BadInput, match="decisions"):
        mask_run(tiny_run, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()

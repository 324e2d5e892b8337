"""`protocli prune`: the original ProtoPNet's rule (k = 6 nearest training patches, one per image, any
class; prune when fewer than 3 are of the prototype's class) against a brute-force computation; pruned
prototypes are masked in a "prune" stage (or a fork), bad options exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from protocli.cli import app
from protocli.errors import BadInput
from protocli.model import ModelConfig, build_model
from protocli.prune import prune_candidates, prune_run
from protocli.run import Run


def _brute_prune(model, z, y, k, threshold):
    """Per prototype: distance of every image = its closest cell; the k nearest images; own-class count."""
    P = model.num_prototypes
    flags, counts = [], []
    for j in range(P):
        p = model.prototypes[j].detach()
        per_image = [float(((z[b] - p[:, None, None]) ** 2).sum(0).min()) for b in range(len(z))]
        nearest = sorted(range(len(z)), key=lambda b: per_image[b])[:k]
        own = sum(int(y[b]) == int(model.prototype_class[j]) for b in nearest)
        counts.append(own)
        flags.append(own < threshold)
    return flags, counts


@pytest.mark.parametrize("k,threshold", [(6, 3), (3, 1), (4, 4)])
def test_prune_rule_brute_force(k, threshold):
    torch.manual_seed(7)
    model = build_model(ModelConfig(backbone="tiny", num_classes=3, prototypes_per_class=3, proto_dim=4, img_size=32))
    z, y = torch.rand(13, 4, 2, 3), torch.tensor([0, 1, 2] * 4 + [1])
    with torch.no_grad():  # put a few prototypes exactly on patches so that own-class counts vary
        model.prototypes[0] = z[0, :, 1, 2]
        model.prototypes[4] = z[2, :, 0, 0]
    flags, own, _ = prune_candidates(model, z, y, torch.device("cpu"), k, threshold)
    want_flags, want_counts = _brute_prune(model, z, y, k, threshold)
    assert own.tolist() == want_counts and flags.tolist() == want_flags
    assert 0 < sum(want_flags) < model.num_prototypes or (k, threshold) != (6, 3)


def test_prune_masks_the_pruned_prototypes_in_a_fork(tiny_run, tmp_path):
    before = Run.open(tiny_run).load_model()
    res = prune_run(tiny_run, k=4, threshold=4, last_epochs=2, out=tmp_path / "pruned")
    fork = Run.open(tmp_path / "pruned")
    model = fork.load_model()
    assert fork.stage_log()[-1]["kind"] == "prune" and fork.stage_log()[-1]["k"] == 4
    masked = torch.nonzero(model.prototype_mask == 0).flatten().tolist()
    assert masked == res["pruned_prototypes"] and res["pruned"] == len(masked) > 0
    assert model.num_prototypes == before.num_prototypes  # masked, not deleted
    assert torch.equal(model.prototypes, before.prototypes)
    assert Run.open(tiny_run).load_model().prototype_mask.min() == 1  # the source run is unchanged
    assert [c < 4 for c in res["own_class_counts"]] == [j in masked for j in range(model.num_prototypes)]


def test_prune_cli_defaults_and_bad_options(tiny_run):
    res = CliRunner().invoke(app, ["prune", str(tiny_run), "--json", "-q", "--last-epochs", "0"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["k"], out["threshold"]) == (6, 3) and out["last_epochs"] == 0
    for args in (["--k", "0"], ["--threshold", "7"], ["--last-epochs", "-1"]):
        res = CliRunner().invoke(app, ["prune", str(tiny_run), *args])
        assert res.exit_code == 2, (args, res.output)
    with pytest.raises(BadInput):
        prune_run(tiny_run, threshold=-1)

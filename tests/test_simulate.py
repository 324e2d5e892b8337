"""The simulated user: rejects exactly the non-object prototypes of the latest push, by criterion,
records the pushed vectors as antitypes, counts clicks without carried-over decisions, and exits 2
without masks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from protocli import antitypes as atmod
from protocli.cache import grid_masks, masks
from protocli.cli import app
from protocli.errors import BadInput
from protocli.evaluate import evaluate_run
from protocli.files import read_json
from protocli.metrics import object_stats
from protocli.model import pushed_prototypes as pushed_vectors
from protocli.run import Run
from protocli.simulate import simulate_run


def _stats(run_dir):
    run = Run.open(run_dir)
    push = run.latest_push()
    doc = read_json(push / "prototypes.json")
    m = masks(run.cub(), "train", size=doc["img_size"], crop=run.crop, cache_dir=run.cache_dir)
    g = grid_masks(run.cub(), "train", grid=doc["grid"], crop=run.crop, cache_dir=run.cache_dir)
    return run, push, doc, object_stats(doc, m, g)


@pytest.mark.parametrize("criterion", ["box", "cell"])
def test_rejects_exactly_the_non_object_prototypes(tiny_run, criterion):
    res = simulate_run(tiny_run, criterion=criterion)
    run, push, doc, st = _stats(tiny_run)
    P = len(doc["prototypes"])
    ants = atmod.load(run.antitypes_path)
    assert ants.push == push.name
    assert len(ants.decided()) == P and {d["by"] for d in ants.decisions} == {"simulated"}
    want = [int(j) for j in torch.nonzero(st[criterion]).flatten()]
    assert ants.rejected() == want == res["rejected_prototypes"]
    assert res["rejected"] == len(want) and res["accepted"] == P - len(want)
    assert res["clicks"] == len(want) and res["decisions"] == P and res["carried_over"] == 0
    assert res[f"non_object_{criterion}"] == len(want)
    ev = evaluate_run(tiny_run, criterion=criterion, apr=False)
    assert ev["non_object_prototypes"] == want  # the same flags as `protocli evaluate`
    # antitype vectors are the pushed vectors, bit for bit
    vec = pushed_vectors(push).numpy()
    assert len(ants.antitypes) == len(want)
    for e in ants.antitypes:
        assert np.array_equal(np.asarray(e["vector"], dtype=np.float32), vec[e["prototype"]])
        assert e["push"] == push.name and e["box"] == doc["prototypes"][e["prototype"]]["box"]


def test_a_second_call_makes_no_new_decisions(tiny_run):
    first = simulate_run(tiny_run, criterion="cell")
    again = simulate_run(tiny_run, criterion="cell")
    assert again["clicks"] == 0 and again["decisions"] == 0
    assert again["rejected"] == first["rejected"] and again["antitypes"] == first["antitypes"]


def test_decisions_carry_over_to_an_unchanged_push(tiny_run):
    from protocli.push import push_run

    first = simulate_run(tiny_run, criterion="cell")
    push_run(tiny_run, torch.device("cpu"))  # same prototypes, same patches: a new push id
    res = simulate_run(tiny_run, criterion="cell")
    run = Run.open(tiny_run)
    assert res["push"] == run.latest_push().name != first["push"]
    assert res["carried_over"] == first["prototypes"] and res["carried_rejects"] == first["rejected"]
    assert res["clicks"] == 0 and res["decisions"] == 0
    assert res["rejected"] == first["rejected"]
    assert res["antitypes"] == first["antitypes"]  # identical vectors are not added twice


def test_criterion_is_checked(tiny_run):
    with pytest.raises(BadInput):
        simulate_run(tiny_run, criterion="pixel")


def test_without_masks_exit_2_with_one_line(tiny_run, tmp_path):
    run = Run.open(tiny_run)
    data = tmp_path / "nomasks"
    shutil.copytree(run.data_root, data)
    shutil.rmtree(data / "segmentations")
    man = json.loads((tiny_run / "manifest.json").read_text())
    man["data"]["root"] = str(data)
    (tiny_run / "manifest.json").write_text(json.dumps(man))
    res = CliRunner().invoke(app, ["simulate", str(tiny_run), "--quiet"])
    assert res.exit_code == 2
    msg = res.output.strip()
    assert len(msg.splitlines()) == 1 and "mask" in msg
    assert not run.antitypes_path.exists()


def test_cli_json(tiny_run):
    res = CliRunner().invoke(app, ["simulate", str(tiny_run), "--criterion", "cell", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["criterion"] == "cell" and out["rejected"] + out["accepted"] == out["prototypes"]

"""report: a tiny run -> every figure as a PNG and a report.md linking them; rounds and masks optional."""

import json
import shutil

import torch
from typer.testing import CliRunner

from protocli.cli import app
from protocli.files import atomic_write_json, read_json
from protocli.report import report_run

FIGURES = {"weights", "nonobject_gallery", "rounds", "latent_pca", "overlap_hist"}
PNG = b"\x89PNG\r\n\x1a\n"
CPU = torch.device("cpu")


def fake_rounds(run):
    rows = [{"round": r, "non_object": None if r == 0 else 3 - r, "clicks": 0 if r == 0 else 3 - r,
             "accuracy_before_ft": None if r == 0 else 0.4, "accuracy_after_ft": 0.5, "non_object_after": 2 - r,
             "overlap_ge_75": 1 + r} for r in range(3)]
    atomic_write_json(run / "rounds.json", {"version": 1, "status": "done", "rounds": rows})


def test_report_writes_every_figure_and_links_them(tiny_run):
    from protocli.push import push_run

    push_run(tiny_run, device=CPU)  # a second push: trajectories and before/after panels
    fake_rounds(tiny_run)
    res = report_run(tiny_run, device=CPU)
    out = tiny_run / "report"
    assert res["out"] == str(out) and len(res["pushes"]) == 2 and res["rounds"] == 3
    # The gallery needs a non-object prototype on the first push; everything else is always drawn.
    assert set(res["figures"]) | set(res["skipped"]) == FIGURES
    assert set(res["skipped"]) <= {"nonobject_gallery"}
    md = (out / "report.md").read_text()
    for name, path in res["figures"].items():
        assert path == str(out / f"{name}.png")
        assert (out / f"{name}.png").read_bytes().startswith(PNG)
        assert f"]({name}.png)" in md
    assert "## Revision rounds" in md and "| round |" in md
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_report_without_rounds_or_masks(tiny_run, tiny_data, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_data, bare, ignore=shutil.ignore_patterns("segmentations"))
    manifest = read_json(tiny_run / "manifest.json")
    manifest["data"]["root"] = str(bare)  # same index files, so the fingerprint still matches
    atomic_write_json(tiny_run / "manifest.json", manifest)
    res = report_run(tiny_run, out=tmp_path / "rep", device=CPU)
    assert set(res["figures"]) == {"weights"}
    assert set(res["skipped"]) == FIGURES - {"weights"}
    assert "masks" in res["skipped"]["latent_pca"] and "rounds.json" in res["skipped"]["rounds"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "latent_pca.png skipped" in md and res["non_object"] is None


def test_report_cli_json(tiny_run, tmp_path):
    res = CliRunner().invoke(app, ["report", str(tiny_run), "--dir", str(tmp_path / "r"), "--json", "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["report"] == str(tmp_path / "r" / "report.md") and "weights" in data["figures"]


def test_report_on_missing_run_is_bad_input(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "-q"])
    assert res.exit_code == 2 and "nope" in res.output


def test_report_criterion_and_device(tiny_run, tmp_path):
    # Move prototype 0's box into a corner of its image (its cell stays put), so that the box and the
    # cell criterion disagree on it whatever the tiny run learned.
    doc_path = tiny_run / "stages" / "002-push" / "prototypes.json"
    doc = read_json(doc_path)
    doc["prototypes"][0]["box"] = [0, 0, 1, 1]
    atomic_write_json(doc_path, doc)
    out = {}
    for criterion in ("box", "cell"):
        res = CliRunner().invoke(app, ["report", str(tiny_run), "--dir", str(tmp_path / criterion), "--criterion",
                                       criterion, "--device", "cpu", "--json", "-q"])
        assert res.exit_code == 0, res.output
        out[criterion] = json.loads(res.stdout)
        assert out[criterion]["criterion"] == criterion
        assert f"by the {criterion} criterion" in (tmp_path / criterion / "report.md").read_text()
    assert out["cell"]["non_object"] == out["cell"]["non_object_cell"]
    assert out["box"]["non_object"] > 0 and out["box"]["non_object"] != out["cell"]["non_object"]

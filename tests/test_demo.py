"""demo: with tiny constants, the whole job end to end -> three conditions, results.json, report; rerun reuses."""

import json

import torch
from typer.testing import CliRunner

from protocli import demo
from protocli.cli import app

TINY_DATA = {"classes": 4, "train_per_class": 6, "test_per_class": 3, "size": 32, "confound": 0.9}
TINY_TRAIN = {"backbone": "tiny", "img_size": 32, "prototypes_per_class": 2, "proto_dim": 16, "warm_epochs": 1,
              "joint_epochs": 1, "last_epochs": 2, "batch_size": 8, "workers": 0}


def tiny(monkeypatch):
    monkeypatch.setattr(demo, "DATA", TINY_DATA)
    monkeypatch.setattr(demo, "TRAIN", TINY_TRAIN)
    monkeypatch.setattr(demo, "ROUNDS", 2)
    monkeypatch.setattr(demo, "ROUND_EPOCHS", 2)
    monkeypatch.setattr(demo, "MASK_LAST_EPOCHS", 2)
    monkeypatch.setattr(demo, "PRETRAIN_DATA", {"train_per_class": 4, "test_per_class": 2, "confound": 0.25})
    monkeypatch.setattr(demo, "PRETRAIN", {"epochs": 1, "batch_size": 8, "workers": 0})


def test_demo_end_to_end_then_reuses_its_work(monkeypatch, tmp_path):
    tiny(monkeypatch)
    out = tmp_path / "demo"
    res = demo.demo_run(out, device=torch.device("cpu"))
    rows = {r["condition"]: r for r in res["conditions"]}
    assert list(rows) == ["baseline", "masking", "revision"]
    for r in rows.values():
        assert set(demo.COLUMNS) <= set(r) and 0 <= r["accuracy"] <= 1 and 0 <= r["train_accuracy"] <= 1
    assert rows["baseline"]["clicks"] == 0 and rows["masking"]["non_object"] == 0  # masked ones do not count
    assert rows["masking"]["active_prototypes"] == 8 - rows["masking"]["clicks"]
    assert rows["revision"]["clicks"] == sum(r["clicks"] for r in res["rounds"])
    assert (out / "data" / "synth.json").exists()
    assert json.loads((out / "results.json").read_text())["conditions"] == res["conditions"]
    assert (out / "runs" / "revision" / "report" / "report.md").exists() and res["figures"]
    assert res["review"] == f"protocli review {out / 'runs' / 'revision'}"
    assert (out / "encoder.safetensors").exists() and res["config"]["encoder"]  # the paper's regime

    again = demo.demo_run(out, device=torch.device("cpu"))  # everything is there: nothing is retrained
    assert again["conditions"] == res["conditions"] and again["data"]["reused"]
    assert again["seconds"]["baseline"] < 1


def test_demo_refuses_a_foreign_folder(monkeypatch, tmp_path):
    tiny(monkeypatch)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("not a dataset")
    res = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path), "-q"])
    assert res.exit_code == 2 and "synth.json" in res.output

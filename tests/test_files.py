"""Atomic writes leave the old file or the new one, never half; reads name the file at fault."""

import json
import os

import pytest

from protocli import files
from protocli.errors import BadInput


def test_atomic_write_replaces(tmp_path):
    p = tmp_path / "a.json"
    files.atomic_write_json(p, {"x": 1})
    files.atomic_write_json(p, {"x": 2})
    assert json.loads(p.read_text()) == {"x": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]  # no temp files left behind


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "a.json"
    files.atomic_write_json(p, {"old": True})

    def boom(fd):  # the process "dies" after writing part of the data, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_json(p, {"new": True, "pad": "x" * 100000})
    assert json.loads(p.read_text()) == {"old": True}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(BadInput, match="missing.json: .*not found"):
        files.read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,')
    with pytest.raises(BadInput, match=r"bad.json: not valid JSON \(line 1"):
        files.read_json(bad)


def test_jsonl_tolerates_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    files.append_jsonl(p, {"epoch": 0})
    files.append_jsonl(p, {"epoch": 1})
    with open(p, "a") as fh:
        fh.write('{"epoch": 2, "lo')  # killed mid-append
    assert [r["epoch"] for r in files.read_jsonl(p)] == [0, 1]

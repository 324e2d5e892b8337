"""antitypes.json: decisions, the antitype set Q, validation, atomic saves, carry-over."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protocli import antitypes as at
from protocli.errors import BadInput

V = np.arange(8, dtype=np.float32) / 7


def reject(a, j, push="002-push", vec=V, **kw):
    return a.decide(j, "reject", "user", push, vector=vec, cls=0, image="x.png", box=[1, 2, 3, 4], **kw)


def test_decide_replace_undo_follow_q():
    a = at.Antitypes()
    assert reject(a, 3) is None
    assert a.decision(3, "002-push") == "reject" and a.push == "002-push"
    assert a.rejected() == [3] and a.vectors().shape == (1, 8)
    prev = a.decide(3, "accept", "user", "002-push")
    assert prev["verdict"] == "reject"
    assert len(a.decisions) == 1 and a.accepted() == [3] and a.vectors().shape == (0, 8 * 0)
    reject(a, 3)
    assert a.undo(3, "002-push")["verdict"] == "reject"
    assert a.decision(3) is None and a.antitypes == [] and a.undo(3) is None


def test_earlier_pushes_stay_in_q_and_are_closed():
    a = at.Antitypes()
    reject(a, 1)
    reject(a, 1, push="004-push", vec=V + 1)
    assert a.push == "004-push" and len(a.antitypes) == 2
    a.decide(1, "accept", "user", "004-push")
    assert [e["push"] for e in a.antitypes] == ["002-push"]  # Q only grows across rounds
    with pytest.raises(ValueError, match="closed"):
        reject(a, 1)
    with pytest.raises(ValueError):
        a.undo(1, "002-push")
    with pytest.raises(ValueError):
        a.decide(2, "maybe", "user", "004-push")
    with pytest.raises(ValueError, match="vector"):
        a.decide(2, "reject", "user", "004-push")


def test_save_load_round_trip_exact(tmp_path):
    path = tmp_path / "antitypes.json"
    a = at.Antitypes()
    vec = np.random.default_rng(1).random(8, dtype=np.float32)
    reject(a, 5, vec=vec)
    a.decide(6, "accept", "simulated", "002-push")
    at.save(a, path)
    b = at.load(path, num_prototypes=10, dim=8, known_pushes=["002-push"])
    assert b.to_dict() == json.loads(json.dumps(a.to_dict()))
    assert np.array_equal(b.vectors()[0], vec)  # float32 bits survive the text file
    assert b.decision(6) == "accept" and b.get(6)["by"] == "simulated"
    assert [p.name for p in tmp_path.iterdir()] == ["antitypes.json"]  # no temp file left
    assert at.load(tmp_path / "missing.json").to_dict() == at.Antitypes().to_dict()


def _write(tmp_path, data):
    path = tmp_path / "antitypes.json"
    path.write_text(json.dumps(data))
    return path


GOOD = {"version": 1, "push": "002-push",
        "decisions": [{"prototype": 1, "verdict": "reject", "by": "user", "at": "2026-01-01T00:00:00Z",
                       "push": "002-push"}],
        "antitypes": [{"prototype": 1, "class": 0, "push": "002-push", "image": "a.png", "box": [0, 0, 4, 4],
                       "vector": [0.5] * 8}]}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(version=2), "version is 2"),
    (lambda d: d["decisions"][0].update(verdict="maybe"), "decisions[0].verdict"),
    (lambda d: d["decisions"][0].update(by="robot"), "decisions[0].by"),
    (lambda d: d["decisions"][0].update(prototype=10), "decisions[0].prototype is 10, the model has 10"),
    (lambda d: d["decisions"][0].update(push="009-push"), "decisions[0].push"),
    (lambda d: d["decisions"].append(dict(d["decisions"][0])), "decisions[1] repeats prototype 1"),
    (lambda d: d["antitypes"][0].update(vector=[0.5] * 4), "antitypes[0].vector has 4 values, expected 8"),
    (lambda d: d["antitypes"][0].update(vector=[0.5] * 7 + ["x"]), "antitypes[0].vector must be"),
    (lambda d: d["antitypes"][0].update(box=[1, 2]), "antitypes[0].box"),
    (lambda d: d.update(push="007-push"), "push is '007-push'"),
])
def test_validation_names_file_and_field(tmp_path, edit, message):
    data = json.loads(json.dumps(GOOD))
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(BadInput) as err:
        at.load(path, num_prototypes=10, dim=8, known_pushes=["001-push", "002-push"])
    assert str(path) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_unparsable_file_is_never_handed_out(tmp_path):
    path = tmp_path / "antitypes.json"
    path.write_text('{"version": 1, "decisions": [')
    with pytest.raises(BadInput, match="not valid JSON"):
        at.load(path)
    assert path.read_text() == '{"version": 1, "decisions": ['


def _meta(push, images):
    return {"push": push, "prototypes": [{"prototype": j, "class": 0, "image": im, "cell": [0, j], "box": [0, 0, 2, 2]}
                                         for j, im in enumerate(images)]}


def test_carry_over_same_patch_keeps_decision():
    a = at.Antitypes()
    reject(a, 0)
    a.decide(1, "accept", "simulated", "002-push")
    reject(a, 2)
    old = _meta("002-push", ["a", "b", "c", "d"])
    new = _meta("005-push", ["a", "b", "moved", "d"])
    vecs = np.stack([V, V, V, V])
    assert at.carry_over(a, old, new, new_vectors=vecs) == 2
    assert a.push == "005-push"
    assert a.decided("005-push") == {0: "reject", 1: "accept"}
    assert a.get(1, "005-push")["by"] == "simulated"
    assert a.decision(2, "005-push") is None  # moved: waits for a look
    assert len(a.antitypes) == 2  # identical vector of #0 not repeated in Q
    # Once on the new push, carry-over does nothing: an undone carried decision stays undone.
    a.undo(0, "005-push")
    assert at.carry_over(a, old, new, new_vectors=vecs) == 0 and a.decision(0) is None


def test_carry_over_new_vector_joins_q():
    a = at.Antitypes()
    reject(a, 0)
    old, new = _meta("002-push", ["a"]), _meta("003-push", ["a"])
    assert at.carry_over(a, old, new, new_vectors=np.stack([V + 0.5])) == 1
    assert [e["push"] for e in a.antitypes] == ["002-push", "003-push"]
    assert at.carry_over(at.Antitypes(), old, new) == 0


def test_carry_onto_edge_cases(tmp_path):
    import shutil

    from _reviewutil import make_push

    from protocli.runfiles import read_push_doc

    stages = tmp_path / "run" / "stages"
    make_push(tmp_path / "run", "002-push", P=4, D=8, pictures=False)
    new_dir = make_push(tmp_path / "run", "005-push", P=4, D=8, moved=(2,), pictures=False)
    new = read_push_doc(new_dir)
    vecs = np.stack([V + 1, V + 2, V + 3, V + 4])
    # No push yet: nothing to carry, the new push becomes current.
    a = at.Antitypes()
    assert at.carry_onto(a, stages, new, vecs) == {} and a.push == "005-push"
    # Same patch carries (the new push's vector joins Q); a moved prototype waits for a look.
    a = at.Antitypes()
    reject(a, 0)
    a.decide(1, "accept", "simulated", "002-push")
    reject(a, 2)
    assert at.carry_onto(a, stages, new, vecs) == {0: "reject", 1: "accept"}
    assert a.push == "005-push" and a.get(1, "005-push")["by"] == "simulated"
    assert np.array_equal(np.float32(a.latest_vector(0)), vecs[0])
    # Already on this push (or a newer one): nothing changes, an undone carried decision stays undone.
    a.undo(0, "005-push")
    assert at.carry_onto(a, stages, new, vecs) == {} and a.decision(0) is None
    assert at.carry_onto(a, stages, read_push_doc(stages / "002-push"), vecs) == {} and a.push == "005-push"
    # The old push's folder is gone: nothing carried, the old decisions stay on their push.
    a = at.Antitypes()
    reject(a, 0)
    shutil.rmtree(stages / "002-push")
    assert at.carry_onto(a, stages, new, vecs) == {} and a.push == "005-push"
    assert a.decided("002-push") == {0: "reject"} and a.decided("005-push") == {}

"""Run directory: stages commit atomically, failures leave the run as it was, forks copy, weights load safely."""

import json

import pytest
import torch

from protocli.errors import BadInput
from protocli.model import ModelConfig, build_model
from protocli.run import Run, load_weights, save_weights


def tiny_cfg():
    return ModelConfig(backbone="tiny", num_classes=3, prototypes_per_class=2, proto_dim=8, img_size=32)


def make_run(tmp_path):
    cfg = tiny_cfg()
    return Run.create(tmp_path / "run", data_root=tmp_path, crop=True, fingerprint="f", model_cfg=cfg.to_dict(),
                      train_cfg={}, seed=0, device="cpu"), build_model(cfg)


def test_stage_commits_weights_and_log(tmp_path):
    run, model = make_run(tmp_path)
    with run.stage("train") as st:
        st.save_model(model)
        st.info["loss"] = 1.5
    assert (run.path / "stages" / "001-train" / "model.safetensors").exists()
    again = Run.open(run.path)
    assert again.stage_log()[0]["id"] == "001-train" and again.stage_log()[0]["loss"] == 1.5
    loaded = again.load_model()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_failed_stage_leaves_run_unchanged(tmp_path):
    run, model = make_run(tmp_path)
    with run.stage("train") as st:
        st.save_model(model)
    before = (run.path / "model.safetensors").read_bytes()
    manifest = (run.path / "manifest.json").read_text()
    with pytest.raises(RuntimeError), run.stage("push") as st:
        with torch.no_grad():
            model.prototypes.add_(1.0)
        st.save_model(model)
        raise RuntimeError("killed half way")
    assert (run.path / "model.safetensors").read_bytes() == before
    assert (run.path / "manifest.json").read_text() == manifest
    assert [p.name for p in (run.path / "stages").iterdir()] == ["001-train"]
    assert run.latest_push() is None


def test_fork_copies_and_records_origin(tmp_path):
    run, model = make_run(tmp_path)
    with run.stage("train") as st:
        st.save_model(model)
    fork = run.fork(tmp_path / "fork")
    assert fork.stage_log()[0]["id"] == "001-train"
    assert fork.manifest["forked_from"][0]["run"] == str(run.path.resolve())
    with pytest.raises(BadInput, match="not empty"):
        run.fork(tmp_path / "fork")


def test_create_refuses_existing_run(tmp_path):
    run, _ = make_run(tmp_path)
    with pytest.raises(BadInput, match="already exists"):
        make_run(tmp_path)


def test_open_errors(tmp_path):
    with pytest.raises(BadInput, match="run folder not found"):
        Run.open(tmp_path / "nope")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "manifest.json").write_text("{oops")
    with pytest.raises(BadInput, match="manifest.json: not valid JSON"):
        Run.open(tmp_path / "r")
    (tmp_path / "r" / "manifest.json").write_text(json.dumps({"version": 7}))
    with pytest.raises(BadInput, match="not a protocli run manifest"):
        Run.open(tmp_path / "r")


def test_weights_mismatch_and_corruption(tmp_path):
    model = build_model(tiny_cfg())
    p = tmp_path / "m.safetensors"
    save_weights(model, p)
    # A config that does not match the tensors: a different number of classes.
    from safetensors.torch import load_file, save_file

    state = load_file(str(p))
    cfg = tiny_cfg()
    cfg.num_classes = 4
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={"config": json.dumps(cfg.to_dict())})
    with pytest.raises(BadInput, match="bad.safetensors: weights do not fit the tiny model of its config: "
                       "wrongly shaped key"):
        load_weights(tmp_path / "bad.safetensors")
    # A backbone with other layers (e.g. a run from an older protocli): one line naming the first key.
    drop = [k for k in state if k.startswith("features.block4.")]
    save_file({k: v for k, v in state.items() if k not in drop}, str(tmp_path / "old.safetensors"),
              metadata={"config": json.dumps(tiny_cfg().to_dict())})
    with pytest.raises(BadInput, match=rf"missing key 'features.block4.0.weight' \({len(drop)} missing\)$"):
        load_weights(tmp_path / "old.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(BadInput, match="junk.safetensors: not a readable safetensors file"):
        load_weights(tmp_path / "junk.safetensors")
    save_file(state, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(BadInput, match="no model config"):
        load_weights(tmp_path / "nometa.safetensors")

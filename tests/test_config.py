"""Every revise option reaches `rounds`; `--config FILE.toml` holds them (file < command line); the
authors' setting (docs/revise-authors.toml) is one command; a bad file exits 2 naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocli.cli import app
from protocli.revise import ReviseConfig

AUTHORS_TOML = Path(__file__).resolve().parents[1] / "docs" / "revise-authors.toml"
# The authors' code, from its defaults (not from the TOML file): Refine = max over all pairs of the
# log-similarity of the plain L2 distance, weight 50; Con weight 1; L1 1e-4; no cluster/separation;
# Adam 1e-3 for the prototypes and 1e-4 for the last layer, 30 epochs per round, no extra
# last-layer phase per round; 5 rounds; the cell criterion; 300 last-layer epochs at the end; every
# prototype at the same rate (lr_kept = lr_prototypes); the original push (no antitype avoidance,
# duplicates allowed, boxes from the map before projection).
AUTHORS = ReviseConfig(epochs=30, lam_refine=50.0, lam_con=1.0, lam_l1=1e-4, lam_clst=0.0, lam_sep=0.0,
                       refine_distance="l2", refine_reduce="max", lr_prototypes=1e-3, lr_kept=1e-3,
                       lr_last=1e-4, last_epochs=0, batch_size=80, push_avoid=False, push_distinct=False,
                       box_map="before")


@pytest.fixture
def captured(monkeypatch):
    """Replace the stages by recorders: the CLI's job here is only to build their arguments."""
    calls = {}

    def fake_rounds(run, **kw):
        calls["rounds"] = kw
        return {"rounds": []}

    def fake_revise(run, cfg, **kw):
        calls["revise"] = cfg
        return {}

    monkeypatch.setattr("protocli.rounds.rounds_run", fake_rounds)
    monkeypatch.setattr("protocli.revise.revise_run", fake_revise)
    return calls


def _ok(args):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def test_the_authors_setting_is_one_command(captured, tmp_path):
    _ok(["rounds", str(tmp_path), "--config", str(AUTHORS_TOML), "-q"])
    kw = captured["rounds"]
    assert kw["cfg"] == AUTHORS and kw["epochs"] == 30
    assert (kw["n_rounds"], kw["criterion"], kw["final_mask"], kw["final_last_epochs"]) == (5, "cell", True, 300)


def test_every_revise_option_reaches_rounds(captured, tmp_path):
    _ok(["rounds", str(tmp_path), "-q", "--epochs", "30", "--lam-refine", "50", "--lam-con", "1", "--lam-l1", "1e-4",
         "--lam-clst", "0", "--lam-sep", "0", "--refine-distance", "l2", "--refine-reduce", "max",
         "--lr-prototypes", "1e-3", "--lr-kept", "1e-3", "--lr-last", "1e-4", "--last-epochs", "0",
         "--batch-size", "80", "--no-push-avoid", "--no-distinct", "--box-map", "before", "--criterion", "cell", "--final-mask", "--final-last-epochs", "300"])
    kw = captured["rounds"]
    assert kw["cfg"] == AUTHORS and kw["final_last_epochs"] == 300
    _ok(["rounds", str(tmp_path), "-q", "--lam-clst", "0.8", "--lam-sep", "0.08", "--lr-kept", "1e-3",
         "--batch-size", "7"])
    cfg = captured["rounds"]["cfg"]
    assert (cfg.lam_clst, cfg.lam_sep, cfg.lr_kept, cfg.batch_size) == (0.8, 0.08, 1e-3, 7)
    assert cfg.refine_distance == ReviseConfig().refine_distance  # untouched options keep the defaults


def test_command_line_overrides_the_file_for_revise_and_rounds(captured, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('lam-refine = 10\nrefine_distance = "l2"\nepochs = 3\n[rounds]\nrounds = 2\n')
    _ok(["revise", str(tmp_path), "--config", str(f), "--epochs", "4", "-q"])
    cfg = captured["revise"]
    assert (cfg.lam_refine, cfg.refine_distance, cfg.epochs) == (10.0, "l2", 4)  # [rounds] ignored by revise
    assert cfg.lr_prototypes == ReviseConfig().lr_prototypes
    _ok(["rounds", str(tmp_path), "--config", str(f), "--rounds", "3", "--refine-distance", "squared", "-q"])
    kw = captured["rounds"]
    assert (kw["n_rounds"], kw["cfg"].refine_distance, kw["cfg"].lam_refine, kw["epochs"]) == (3, "squared", 10.0, 3)


@pytest.mark.parametrize("text,fault", [
    ("lam_refine = \n", "not valid TOML"),
    ("lam_refnie = 5\n", "unknown key 'lam_refnie'"),
    ("[rounds]\nround = 5\n", "unknown key rounds.round"),
    ('epochs = "ten"\n', "expected int"),
    ("lam_con = true\n", "expected a number"),
    ('refine_distance = "l1"\n', "refine-distance l1"),
    ('[rounds]\ncriterion = "pixel"\n', "criterion"),
])
def test_a_bad_config_file_exits_2_naming_it(tmp_path, text, fault):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    for cmd in ("rounds", "revise"):
        res = CliRunner().invoke(app, [cmd, str(tmp_path), "--config", str(f)])
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and str(f) in out and fault in out, (cmd, res.output)
    res = CliRunner().invoke(app, ["rounds", str(tmp_path), "--config", str(tmp_path / "none.toml")])
    assert res.exit_code == 2 and "none.toml" in res.output and "not found" in res.output

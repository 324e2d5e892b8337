"""Training recipes: auto picks tiny for the tiny backbone, options given win, the CLI passes them on."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from protocli.errors import BadInput
from protocli.recipes import PAPER, TINY, VARYING, TrainConfig, default_help, make_config, resolve


def test_paper_recipe_is_the_dataclass_defaults():
    cfg = make_config("paper")
    assert {k: v for k, v in asdict(cfg).items() if k != "recipe"} == PAPER
    assert asdict(TrainConfig()) == asdict(cfg)
    assert (cfg.backbone, cfg.img_size, cfg.batch_size, cfg.clst, cfg.sep) == ("resnet34", 224, 80, 0.8, 0.08)


def test_auto_follows_the_backbone():
    assert resolve("auto", "tiny") == "tiny"
    assert resolve("auto", "resnet34") == resolve("auto", "resnet18@layer3") == "paper"
    assert make_config(backbone="tiny").recipe == "tiny"
    assert make_config(backbone="resnet18").recipe == "paper"
    assert make_config().recipe == "paper"


def test_given_options_win_and_none_means_unset():
    cfg = make_config("auto", backbone="tiny", img_size=None, clst=0.5, seed=3)
    assert (cfg.img_size, cfg.clst, cfg.sep, cfg.seed) == (TINY["img_size"], 0.5, TINY["sep"], 3)
    # a named recipe also applies to another backbone
    cfg = make_config("tiny", backbone="resnet18")
    assert (cfg.backbone, cfg.img_size, cfg.recipe) == ("resnet18", 96, "tiny")


def test_unknown_recipe_is_bad_input():
    with pytest.raises(BadInput, match="--recipe 'fast'"):
        make_config("fast")


def test_help_names_both_values_of_each_varying_field():
    assert "img_size" in VARYING and "backbone" not in VARYING and "seed" not in VARYING
    assert default_help("lr_prototypes") == "[paper: 0.003, tiny: 0.01]"


def test_cli_train_help_shows_recipe_defaults():
    from typer.testing import CliRunner

    from protocli.cli import app

    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "--recipe" in res.output and "[paper: 224, tiny: 96]" in res.output


def test_cli_train_builds_the_recipe_config(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import protocli.train
    from protocli.cli import app

    seen = {}

    def fake_train_run(data, run, cfg, device, resume=False, dist=None):
        seen["cfg"] = cfg
        return {"run": str(run)}

    monkeypatch.setattr(protocli.train, "train_run", fake_train_run)
    res = CliRunner().invoke(app, ["train", str(tmp_path), str(tmp_path / "r"), "--backbone", "tiny",
                                   "--joint-epochs", "3", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert (cfg.recipe, cfg.joint_epochs, cfg.img_size, cfg.clst) == ("tiny", 3, 96, 0.0)
    res = CliRunner().invoke(app, ["train", str(tmp_path), str(tmp_path / "r"), "--recipe", "paper",
                                   "--backbone", "tiny", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (seen["cfg"].recipe, seen["cfg"].img_size, seen["cfg"].clst) == ("paper", 224, 0.8)

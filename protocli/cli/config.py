"""`--config FILE.toml` for `revise` and `rounds`: a TOML file -> revise settings (and rounds settings).

The file's top-level keys are the fields of `ReviseConfig` (`protocli/revise.py`), spelled as the
command-line options with `_` or `-` (`lam_refine = 50` or `lam-refine = 50`). An optional `[rounds]`
table holds the settings of `rounds` only (`rounds`, `criterion`, `final_mask`, `final_last_epochs`);
`revise` ignores it. Precedence: the built-in defaults, then the file, then options given on the
command line. A missing file, bad TOML, an unknown key or a value of the wrong type is BadInput
naming the file. Torch-free: ReviseConfig's fields are read only when a command runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from protocli.errors import BadInput

ROUNDS_KEYS = {"rounds": int, "criterion": str, "final_mask": bool, "final_last_epochs": int}


def _check_type(key: str, value, want: type, path: Path):
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, want) and not (want is not bool and isinstance(value, bool)):
        return value
    raise BadInput(f"{key} = {value!r}: expected {'a number' if want is float else want.__name__}", path)


def _field_types() -> dict[str, type]:
    from protocli.revise_config import ReviseConfig

    out = {}
    for f in dataclasses.fields(ReviseConfig):
        t = str(f.type)
        out[f.name] = float if "float" in t else int if "int" in t else bool if "bool" in t else str
    return out


def read_config(path: Path) -> tuple[dict, dict]:
    """(revise settings, rounds settings) from a TOML file, keys checked and values typed."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise BadInput("--config needs Python 3.11 or later (tomllib)", path) from None
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput("config file not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read the config file ({e})", path) from None
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"not valid TOML ({e})", path) from None
    types = _field_types()
    revise, rounds = {}, {}
    for key, value in data.items():
        k = key.replace("-", "_")
        if k == "rounds" and isinstance(value, dict):
            for rk, rv in value.items():
                rkk = rk.replace("-", "_")
                if rkk not in ROUNDS_KEYS:
                    raise BadInput(f"unknown key rounds.{rk} (known: {', '.join(ROUNDS_KEYS)})", path)
                rounds[rkk] = _check_type(f"rounds.{rk}", rv, ROUNDS_KEYS[rkk], path)
        elif k in types:
            revise[k] = _check_type(key, value, types[k], path)
        else:
            raise BadInput(f"unknown key {key!r} (known: {', '.join(types)} and a rounds table)", path)
    if rounds.get("criterion", "box") not in ("box", "cell"):
        raise BadInput(f"rounds.criterion = {rounds['criterion']!r}: expected box or cell", path)
    from protocli.revise_config import ReviseConfig

    try:
        ReviseConfig(**revise).check()  # the file's values on their own, so the fault names the file
    except BadInput as e:
        raise BadInput(str(e).replace("--", "", 1), path) from None
    return revise, rounds


def read_optional(path: Path | None) -> tuple[dict, dict]:
    return read_config(path) if path is not None else ({}, {})


def given_on_command_line(ctx: typer.Context, names) -> set[str]:
    """The parameters among `names` that the user set (command line or environment), not defaulted."""
    # By name: typer may bring its own copy of click, whose ParameterSource is another class.
    return {n for n in names if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}


def merged(ctx: typer.Context, from_file: dict, options: dict, keys: dict | None = None) -> dict:
    """Option values, with the file's value wherever the user did not give the option explicitly.

    `options`: {parameter name: parsed value}; `keys`: parameter name -> file key where they differ."""
    keys = keys or {}
    explicit = given_on_command_line(ctx, options)
    return {name: value if name in explicit or keys.get(name, name) not in from_file else from_file[keys.get(name, name)]
            for name, value in options.items()}


def revise_config(ctx: typer.Context, from_file: dict, options: dict):
    """ReviseConfig from the defaults, the file's settings, then the options given on the command line."""
    from protocli.revise_config import ReviseConfig

    return ReviseConfig(**(from_file | merged(ctx, from_file, options)))


CONFIG_OPT = typer.Option(
    None, "--config", help="TOML file with revise settings (keys as these options, e.g. lam_refine = 50; "
    "a [rounds] table for rounds). Options given on the command line win. See docs/fidelity.md."
)

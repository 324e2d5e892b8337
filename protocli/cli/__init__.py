"""The `protocli` command line: thin Typer commands over the stage functions.

Each command parses its options, picks device and seed at the edge, calls one stage function
that returns a plain dict, prints a summary table on stderr and, with `--json`, the dict on
stdout. Exit codes: 0 success, 2 bad input (one line naming the file, field or value), 1 other
failures, 130 interrupted. Heavy imports (torch, torchvision, textual) happen inside commands so
that `protocli --help` and `protocli data check` start fast.

Modules: common (options, `execute`), baseline (data, train, push, evaluate), revision (simulate,
review, mask, revise, rounds), results (status, report, explain, demo).
"""

from __future__ import annotations

import typer

from protocli.cli import baseline, results, revision

app = typer.Typer(
    help="Train prototypical-part networks (ProtoPNet), review their prototypes in the terminal, "
    "and revise them so the model decides by the object (Gerstenberger et al.).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion
    pretty_exceptions_enable=False,
    # Plain click help: rich-formatted help imports markdown/pygments and costs ~0.25 s per call,
    # which adds up when rounds are scripted in shell loops.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("protocli")
        except PackageNotFoundError:  # run from a checkout that is not installed
            from protocli import __version__ as v
        typer.echo(f"protocli {v}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_version,
                                      is_eager=True),
) -> None:
    """Options of `protocli` itself (the help text shown is the app's, above)."""


app.add_typer(baseline.data_app, name="data")
for group in (baseline, revision, results):
    app.add_typer(group.app)  # unnamed: the group's commands become top-level commands


def main() -> None:
    app()

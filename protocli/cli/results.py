"""`protocli status`, `report`, `explain`, `demo`: where a run stands, figures, one image explained, the
whole job on synthetic data."""

from __future__ import annotations

from pathlib import Path

import typer

from protocli.cli.common import DEVICE_OPT, JSON_OPT, QUIET_OPT, SEED_OPT, Criterion, execute, kv, renamed

app = typer.Typer(rich_markup_mode=None)


@app.command()
def status(
    run: Path = typer.Argument(..., help="Run folder."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Where a run stands: its stages, pushes, decisions on the latest push and latest accuracies.

    Reads only (no lock): safe to run while another command changes the run."""

    def go():
        from protocli.status import run_status

        return run_status(run)

    execute(go, as_json, quiet, _show_status)


def _show_status(result: dict) -> None:
    from protocli.console import fmt, print_kv, print_table

    rows = [{"stage": s["id"], "kind": s["kind"], "at": s["at"],
             "details": ", ".join(f"{k} {fmt(v)}" for k, v in s["details"].items())} for s in result["stages"]]
    print_table(f"stages of {result['run']}", rows)
    print_table("pushes", result["pushes"], ["push", "prototypes", "unique", "rejected", "accepted"])
    summary = {"latest push": result["latest_push"], "push is current": result["push_is_current"],
               **{k: v for k, v in result["decisions"].items() if k != "push"}}
    metrics = result["metrics"] or {}
    summary.update({f"{k} ({metrics['stage']})": v for k, v in metrics.items() if k != "stage"})
    summary["rounds recorded"] = result["rounds"]
    print_kv("status", summary)


@app.command()
def report(
    run: Path = typer.Argument(..., help="Run folder."),
    out_dir: Path | None = typer.Option(None, "--dir", help="Folder for the figures and report.md "
                                        "(default: RUN/report)."),
    old_out: Path | None = typer.Option(None, "--out", hidden=True, help="Old spelling of --dir."),
    criterion: Criterion = typer.Option(Criterion.box, help="Which prototypes the figures and non_object count "
                                        "as non-object: box (the box misses the object) or cell (the latent "
                                        "cell holds no object)."),
    device: str = DEVICE_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Write PNG figures after the paper's and a short report.md."""

    out = renamed(out_dir, old_out, "--dir", "--out", quiet)

    def go():
        from protocli.report import report_run
        from protocli.runtime import pick_device

        return report_run(run, out=out, criterion=criterion.value, device=pick_device(device))

    execute(go, as_json, quiet, kv("report"))


@app.command()
def explain(
    run: Path = typer.Argument(..., help="Run folder."),
    image: Path = typer.Argument(..., help="Image file to explain (used as is: no bounding-box crop)."),
    top: int = typer.Option(5, "--top", help="How many prototypes to show."),
    png: Path | None = typer.Option(None, "--png", help="PNG to write (default: RUN/explain/<image stem>.png)."),
    old_out: Path | None = typer.Option(None, "--out", hidden=True, help="Old spelling of --png."),
    device: str = DEVICE_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """This looks like that: the prototypes that drove the prediction for one image."""

    out = renamed(png, old_out, "--png", "--out", quiet)

    def go():
        from protocli.explain import explain_image
        from protocli.runtime import pick_device

        return explain_image(run, image, top=top, out=out, device=pick_device(device))

    execute(go, as_json, quiet, None)


@app.command()
def demo(
    out_dir: Path | None = typer.Option(None, "--dir", help="Folder for the data and the runs (default: ./demo)."),
    old_out: Path | None = typer.Option(None, "--out", hidden=True, help="Old spelling of --dir."),
    device: str = DEVICE_OPT,
    seed: int = SEED_OPT,
    pretrained: bool = typer.Option(True, "--pretrained/--scratch", help="Fine-tune from an encoder pretrained "
                                    "on uniform backgrounds (the paper's regime), or train from scratch."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """The whole job on built-in synthetic data: a pretrained encoder, baseline, masking and 5 revision
    rounds, compared."""

    out = renamed(out_dir, old_out, "--dir", "--out", quiet) or Path("demo")

    def go():
        from protocli.demo import demo_run
        from protocli.runtime import pick_device

        return demo_run(out, device=pick_device(device), seed=seed, pretrained=pretrained)

    execute(go, as_json, quiet, None)

"""The import graph, read with ast (module-level and function-level imports): stages do not serve as
each other's libraries. A stage module is one named after a command; shared helpers live in modules
named for what they are (metrics, pictures, activation_maps, phases, ...) and import no stage."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "protocli"
STAGES = {"train", "push", "evaluate", "simulate", "mask", "revise", "rounds", "report", "explain", "demo",
          "prune", "pretrain", "status"}
# Orchestrators: a stage that runs other stages as steps of its own job. Every edge with its reason.
ALLOWED = {
    ("train", "push"): "train ends with a push (projection) before the last layer",
    ("revise", "push"): "revise re-pushes the revised prototypes, like train",
    ("prune", "mask"): "pruning is masking the pruned prototypes plus the same last-layer fine-tune",
    ("report", "evaluate"): "report computes the evaluation table it shows",
    ("rounds", "push"): "rounds (Alg. 1) pushes when the prototypes moved",
    ("rounds", "simulate"): "rounds consults the simulated user each round",
    ("rounds", "mask"): "rounds masks the rejected prototypes each round",
    ("rounds", "revise"): "rounds revises each round",
    **{("demo", s): "demo runs the whole job, every stage in turn" for s in STAGES - {"demo"}},
}


def _imported(path: Path) -> set[str]:
    """protocli.<top> module names imported anywhere in the file (any depth, any form)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "protocli":
                out |= {a.name for a in node.names}
            elif node.module.startswith("protocli."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("protocli.")}
    return out


def _modules() -> dict[str, set[str]]:
    return {p.stem: _imported(p) for p in PKG.glob("*.py") if p.stem not in ("__init__", "__main__")}


def test_the_reader_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import protocli.train\ndef f():\n    from protocli.push import x\n    from protocli import mask\n")
    assert _imported(f) == {"train", "push", "mask"}


def test_no_stage_imports_another_stage_except_orchestrators():
    mods = _modules()
    assert STAGES <= set(mods), STAGES - set(mods)
    bad = sorted((m, t) for m in STAGES for t in mods[m] & STAGES if t != m and (m, t) not in ALLOWED)
    assert not bad, f"stage -> stage imports without a documented reason: {bad}"


def test_allowed_edges_are_still_used():
    mods = _modules()
    unused = sorted((m, t) for m, t in ALLOWED if m != "demo" and t not in mods[m])
    assert not unused, f"drop these from ALLOWED: {unused}"


def test_helper_modules_import_no_stage():
    mods = _modules()
    helpers = {m: imps for m, imps in mods.items() if m not in STAGES}
    for sub in ("data", "review", "cli"):
        if sub != "cli":  # the CLI is the edge that calls the stages
            for p in (PKG / sub).glob("*.py"):
                helpers[f"{sub}/{p.stem}"] = _imported(p)
    bad = {m: sorted(imps & STAGES) for m, imps in helpers.items() if imps & STAGES}
    assert not bad, f"helper modules importing stage modules: {bad}"

"""Only protocli/review/ may import Textual: the rest of the package (and the review package's own
entry point and state) must load without it, so the CLI starts fast and the core is testable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "protocli"


def _modules() -> list[str]:
    """Every module of the package outside review/ (globbed now, so new modules are covered)."""
    names = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if "review" in rel.parts or rel.name == "__main__":
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        names.append(".".join(parts))
    # The review package's entry point and its plain state must be cheap and Textual-free too.
    return names + ["protocli.review", "protocli.review.state", "protocli.review.pictures"]


def test_nothing_outside_review_imports_textual():
    modules = _modules()
    assert "protocli.antitypes" in modules and "protocli.cli" in modules
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'textual_image'))\n"
            "print(' '.join(bad))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"Textual imported outside protocli/review: {out.stdout.strip()[:300]}"


def test_no_textual_import_statement_outside_review():
    """Also catches imports hidden inside functions, which the import test above cannot see."""
    import ast

    for path in PKG.rglob("*.py"):
        if "review" in path.relative_to(PKG).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("textual", "textual_image"), f"{path}: imports {name}"


def test_only_the_cli_chooses_the_review_tui():
    """The core never calls the UI: no module outside protocli/cli/ and protocli/review/ imports
    protocli.review (anywhere, functions included); `rounds` gets a "consult the user" callable."""
    import ast

    for path in PKG.rglob("*.py"):
        top = path.relative_to(PKG).parts[0]
        if top in ("cli", "review"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            assert not any(n == "protocli.review" or n.startswith("protocli.review.") for n in names), \
                f"{path.relative_to(ROOT)} imports the review TUI"

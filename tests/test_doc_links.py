"""Every reference in the repository's docs and code resolves inside the repository: a clone has no
shared/ folder beside it, so nothing may point there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("data/*.md"), *ROOT.glob("bench/*.md"),
         *ROOT.glob("protocli/**/*.py"), *ROOT.glob("bench/*.py")]


def test_no_reference_points_outside_the_repository():
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        # spelled in pieces so that this file does not match its own search
        for bad in ("DESIGN" + ".md", "metrics" + ".md", ".." + "/shared", "shared" + "/notes", "shared" + "/reference"):
            assert bad not in text, f"{path.relative_to(ROOT)} cites {bad}"


def test_markdown_links_resolve():
    for path in [p for p in FILES if p.suffix == ".md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to missing {target}"


def test_docs_paths_named_in_text_exist():
    """`docs/x.md` and `bench/x.py` named in prose or comments exist."""
    for path in FILES:
        for name in set(re.findall(r"(?<![\w/.])((?:docs|bench|data)/[A-Za-z0-9_.-]+\.(?:md|py|toml|sh))\b",
                                   path.read_text(encoding="utf-8"))):
            # the module map in docs/ARCHITECTURE.md names files relative to protocli/
            assert (ROOT / name).exists() or (ROOT / "protocli" / name).exists(), \
                f"{path.relative_to(ROOT)} names missing {name}"

"""`python -m protocli.review RUN [--graphics G] [--push ID]` -> the review app without the Typer CLI.

Prints the summary as JSON on stdout after quitting; bad input is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from protocli.errors import BadInput
from protocli.review import GRAPHICS, review


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocli.review")
    parser.add_argument("run")
    parser.add_argument("--graphics", default="auto", choices=list(GRAPHICS))
    parser.add_argument("--push", default=None)
    parser.add_argument("--order", default="id", choices=["id", "suspicion"])
    args = parser.parse_args(argv)
    try:
        summary = review(args.run, graphics=args.graphics, push=args.push, order=args.order)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

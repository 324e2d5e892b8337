"""`python -m protocli` -> the Typer CLI."""

from protocli.cli import main

main()

"""Pieces every CLI shares."""

from __future__ import annotations

from typing import NoReturn

import typer

from seminft_bench.envinfo import environment_report


def env() -> None:
    """Print package versions, the accelerator and where weights are looked up."""
    report = environment_report()
    width = max(map(len, report))
    for key, value in report.items():
        typer.echo(f"{key:<{width}}  {value}")


def new_app(help_text: str) -> typer.Typer:
    """A Typer app that always wants a sub-command and carries ``env``."""
    app = typer.Typer(help=help_text, no_args_is_help=True, add_completion=False)
    # A callback makes Typer treat even a single command as a sub-command.
    app.callback()(lambda: None)
    app.command("env")(env)
    return app


def fail(error: Exception) -> NoReturn:
    """Report a user-facing error in one line and exit with status 2 (no traceback)."""
    typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)

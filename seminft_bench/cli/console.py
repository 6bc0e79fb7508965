"""The console commands: each keeps the quantisation libraries out of its process (`quantlibs.keep_out`)
before it imports anything, then runs its Typer app."""

from seminft_bench.quantlibs import keep_out


def data() -> None:
    keep_out()
    from seminft_bench.cli.data import app

    app()


def train() -> None:
    keep_out()
    from seminft_bench.cli.train import app

    app()


def bench() -> None:
    keep_out()
    from seminft_bench.cli.bench import app

    app()

"""``seminft-bench``: run methods on evaluation sets and score them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from seminft_bench.cli.common import new_app

app = new_app("Benchmark preset-transfer methods: run, score, report.")


@app.command("judge")
def judge_command(
    judge_name: str = typer.Option(
        ..., "--judge", help="gpt-4o, gemini-2.5-flash, qwen3-vl-32b, qwen3-vl-8b, or a judge from --config."
    ),
    references: Path = typer.Option(..., help="Folder of reference images."),
    predictions: Path = typer.Option(..., help="Folder of outputs to score; matched to references by file stem."),
    out: Path = typer.Option(..., help="Results, JSON lines; rerunning skips pairs already scored there."),
    reward: bool = typer.Option(False, "--reward", help="Score by Eq. 4 from the score token's log-probabilities."),
    cache: Optional[Path] = typer.Option(None, help="Reply cache folder [default: $XDG_CACHE_HOME/seminft-bench/vlm]."),
    concurrency: int = typer.Option(16, min=1, help="Requests in flight at most."),
    base_url: Optional[str] = typer.Option(None, help="Endpoint to ask instead (Qwen: an OpenAI-compatible server)."),
    config: Optional[Path] = typer.Option(None, help="TOML/JSON file overriding judges' models, endpoints, prices."),
    both_orders: bool = typer.Option(
        False, "--both-orders", help="Also ask with the images swapped; report both scores and their mean."
    ),
    max_side: int = typer.Option(1024, min=16, help="Images are resized to this long side before sending."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for one reply."),
    max_attempts: int = typer.Option(
        6, min=1, help="Tries per request on rate limits, server errors, timeouts and unreadable replies."
    ),
    backoff: float = typer.Option(1.0, min=0.0, help="Seconds before the first retry; doubled for each next one."),
) -> None:
    """Score every prediction against its reference with a VLM judge (paper Fig. 8 prompt)."""
    from seminft_bench.vlm import Judge, JudgeUnavailable, ResponseCache, RetryPolicy, Transport, load_config
    from seminft_bench.vlm.batch import judge_folders
    from seminft_bench.vlm.cache import default_cache_dir

    try:
        scorer = Judge.from_name(
            judge_name,
            config=load_config(config),
            base_url=base_url,
            timeout=timeout,
            reward=reward,
            both_orders=both_orders,
            max_side=max_side,
            cache=ResponseCache(cache or default_cache_dir()),
            transport=Transport(concurrency, RetryPolicy(max_attempts=max_attempts, base_delay=backoff)),
        )
        summary = judge_folders(scorer, references, predictions, out)
    except (JudgeUnavailable, ValueError, FileNotFoundError) as error:
        raise typer.BadParameter(str(error)) from error
    typer.echo(summary.run_ledger.report())
    typer.echo(f"costs of all runs: {summary.costs_path}")
    if summary.unmatched:
        shown = ", ".join(summary.unmatched[:10])
        typer.echo(f"{len(summary.unmatched)} image(s) without a partner, skipped: {shown}")
    typer.echo(
        f"{summary.pairs} pairs: {summary.scored} scored now, {summary.done_before} scored before, "
        f"{summary.failed} failed -> {out}"
    )
    if summary.failed:
        typer.echo("failed pairs carry their error in the results; rerun the same command to retry them", err=True)
        raise typer.Exit(1)

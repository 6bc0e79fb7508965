"""``seminft-bench``: run methods on evaluation sets and score them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from seminft_bench.bench.metrics import DINO_MODEL, DINO_THRESHOLD, METRIC_NAMES
from seminft_bench.bench.runner import DEFAULT_METRICS
from seminft_bench.cli.common import fail, new_app

app = new_app("Benchmark preset-transfer methods: run, score, report.")

DEFAULT_METHODS = "identity,reference,reinhard,mkl,idt,histogram"


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


@app.command("run")
def run_command(
    dataset: str = typer.Option("demo", help="demo, pst50-paired:DIR, pst50-unpaired:DIR, a dataset folder or a cached Hub repo."),
    method: str = typer.Option(DEFAULT_METHODS, "--method", help="Comma-separated methods; predictions:DIR for an external method's outputs."),
    judges: str = typer.Option("gpt-4o,gemini-2.5-flash,qwen3-vl-32b", help="Comma-separated judges ('' for none)."),
    reward: str = typer.Option("qwen3-vl-8b", help="Reward model for the logit score ('' for none)."),
    metrics: str = typer.Option(",".join(DEFAULT_METRICS), help=f"Comma-separated image metrics, of: {', '.join(METRIC_NAMES)}."),
    out: Path = typer.Option(Path("bench_out"), help="Run folder of one dataset; rerunning into it resumes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Empty the run folder first (it holds another dataset's run)."),
    cache: Optional[Path] = typer.Option(None, help="API reply cache [default: $XDG_CACHE_HOME/seminft-bench/vlm]."),
    split: str = typer.Option("test", help="Split of a built dataset."),
    variant: Optional[str] = typer.Option(None, help="bw: greyscale sources (colourisation, paper §4.3)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unusable samples (recorded) instead of failing."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N samples."),
    concurrency: int = typer.Option(16, min=1, help="API requests in flight per judge or API method."),
    config: Optional[Path] = typer.Option(None, help="TOML/JSON file overriding judges' models, endpoints, prices."),
    device: Optional[str] = typer.Option(None, help="Torch device for local models [default: cuda if present]."),
    executor: str = typer.Option("local", help="local, or ray to generate and score on a Ray cluster (this process writes)."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address, e.g. auto (default: start a local Ray)."),
    dino_threshold: float = typer.Option(DINO_THRESHOLD, help="DINO similarity above which an output keeps the source's content."),
    dino_model: str = typer.Option(DINO_MODEL, help="DINO model (Hugging Face id in the local cache, or a folder)."),
    ours_base: Optional[str] = typer.Option(None, help="ours: FLUX.1-dev folder or cached hub id; tiny:SEED for the tiny random model."),
    ours_lora: list[Path] = typer.Option([], help="ours: a LoRA (cold-start, then RL); repeat for several."),
    ours_steps: Optional[int] = typer.Option(None, min=1, help="ours: denoising steps [default: 28]."),
    ours_seed: Optional[int] = typer.Option(None, help="ours: the seed of every sample's noise [default: 0]."),
    ours_config: Optional[Path] = typer.Option(None, help="ours: a YAML file of these options (flags win)."),
    ours_variant: list[str] = typer.Option([], help="NAME=FILE.yaml: the options of method ours:NAME (an ablation row); repeat for several."),
) -> None:
    """Run methods on a set, score every output, and write results.jsonl plus the reports.

    Exits 1 when cells failed (their errors are in results.jsonl and the report; rerun to retry
    them) and 130 on Ctrl-C (rerun the same command to resume).
    """
    from seminft_bench.bench.runner import RunOptions, run_benchmark
    from seminft_bench.fileio import FolderLocked, close_writes
    from seminft_bench.imaging import ImageReadError

    options = RunOptions(
        dataset=dataset, methods=_names(method), judges=_names(judges), reward=reward or None,
        metrics=_names(metrics), split=split, variant=variant, skip_bad=skip_bad, limit=limit,
        concurrency=concurrency, cache=str(cache) if cache else None, judge_config=str(config) if config else None,
        device=device, dino_threshold=dino_threshold, dino_model=dino_model, overwrite=overwrite,
        executor=executor, ray_address=ray_address,
        method_options={
            "ours": _ours_options(ours_config, base=ours_base, lora=ours_lora, steps=ours_steps, seed=ours_seed),
            **_ours_variants(ours_variant),
        },
    )
    try:
        summary = run_benchmark(out, options, log=lambda line: typer.echo(line, err=True))
    except (ValueError, FileNotFoundError, ImageReadError, FolderLocked, ConnectionError) as error:  # ConnectionError: no Ray there
        fail(error)
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: everything finished so far is kept in {out}; rerun the same command to resume", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        close_writes()  # a worker's write in flight completes; none starts after
        os._exit(130)  # calls still in flight hold threads that would keep the process alive: leave now
    typer.echo(
        f"{summary.samples} samples, {summary.cells} (sample, method) records, {summary.failed} failed cells "
        f"in {summary.seconds:.1f} s"
    )
    typer.echo(f"report: {out / 'report.html'}")
    if summary.failed:
        typer.echo(
            f"{summary.failed} cells failed: their errors are in {out / 'results.jsonl'} (\"errors\") and the report; "
            "rerun the same command to retry them",
            err=True,
        )
        raise typer.Exit(1)


def _ours_variants(variants: list[str]) -> dict[str, dict]:
    options = {}
    for variant in variants:
        name, separator, file = variant.partition("=")
        if not separator or not name or not file:
            fail(ValueError(f"--ours-variant takes NAME=FILE.yaml, got {variant!r}"))
        options[f"ours:{name}"] = _ours_options(Path(file))
    return options


def _ours_options(config: Path | None, **flags) -> dict:
    """The options of ``ours`` from ``config`` and the flags (which win); a bad LoRA path stops the command here,
    before any work, rather than leaving the method's cells uncomputed at the end of a run."""
    from seminft_bench.bench.methods.ours import read_options

    try:
        options = dict(read_options(config)) if config else {}
    except (OSError, ValueError) as error:
        fail(error)
    options.update({key: value for key, value in flags.items() if value not in (None, [])})
    if "lora" in options:
        from seminft_bench.model.lora import LoraFileError, lora_file

        options["lora"] = [str(path) for path in options["lora"]]
        try:
            for path in options["lora"]:
                lora_file(path)
        except LoraFileError as error:
            fail(error)
    return options


@app.command("report")
def report_command(run_dir: Path = typer.Argument(..., help="A folder written by `seminft-bench run`.")) -> None:
    """Rebuild summary.csv, report.md, report.tex and report.html from results.jsonl."""
    from seminft_bench.bench.report import write_reports

    try:
        files = write_reports(run_dir)
    except (ValueError, FileNotFoundError) as error:
        fail(error)
    for kind, path in files.items():
        typer.echo(f"{kind}: {path}")


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


@app.command("instructions")
def instructions_command(
    dataset: str = typer.Option(..., help="demo, pst50-paired:DIR, pst50-unpaired:DIR, a dataset folder or a cached Hub repo."),
    out: Path = typer.Option(..., help="Instructions, JSON lines (name, instruction, ...); rerunning writes only what is missing."),
    judge_name: str = typer.Option("qwen3-vl-32b", "--judge", help="The VLM that writes them (App. C: Qwen3-VL-32B), or one from --config."),
    split: str = typer.Option("test", help="Split of a built dataset."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N samples."),
    cache: Optional[Path] = typer.Option(None, help="Reply cache folder [default: $XDG_CACHE_HOME/seminft-bench/vlm]."),
    concurrency: int = typer.Option(16, min=1, help="Requests in flight at most."),
    base_url: Optional[str] = typer.Option(None, help="Endpoint to ask instead (Qwen: an OpenAI-compatible server)."),
    config: Optional[Path] = typer.Option(None, help="TOML/JSON file overriding judges' models, endpoints, prices."),
    max_attempts: int = typer.Option(6, min=1, help="Tries per request on rate limits, server errors, timeouts, empty replies."),
) -> None:
    """Write the retouching instruction of every sample (source + reference -> text), JarvisArt's first step (App. C).

    Feed them to an instruction-following retoucher and bring its outputs back with --method predictions:DIR.
    """
    from seminft_bench.bench.datasets import BenchSetError, load_bench_set
    from seminft_bench.bench.instructions import write_instructions
    from seminft_bench.vlm import JudgeUnavailable, ResponseCache, RetryPolicy, Transport, load_config
    from seminft_bench.vlm.cache import default_cache_dir
    from seminft_bench.vlm.writer import INSTRUCTION_PROMPT, Writer

    try:
        writer = Writer.from_name(
            judge_name, config=load_config(config), base_url=base_url, prompt=INSTRUCTION_PROMPT,
            cache=ResponseCache(cache or default_cache_dir()),
            transport=Transport(concurrency, RetryPolicy(max_attempts=max_attempts)),
        )
        summary = write_instructions(load_bench_set(dataset, split=split, limit=limit), writer, out, concurrency=concurrency)
    except (JudgeUnavailable, BenchSetError, ValueError, FileNotFoundError) as error:
        fail(error)
    typer.echo(writer.ledger.report())
    typer.echo(f"{summary.samples} samples: {summary.written} written now, {summary.done_before} before, {summary.failed} failed -> {out}")
    if summary.failed:
        typer.echo("failed samples carry their error in the file; rerun the same command to retry them", err=True)
        raise typer.Exit(1)


@app.command("restore")
def restore_command(
    source: list[Path] = typer.Option(..., "--source", help="An old photo (faded or black and white); repeat for several."),
    out: Path = typer.Option(..., help="Folder of NAME/prompt.txt, reference.png, result.png and contact_sheet.png; reruns resume."),
    vlm: str = typer.Option("qwen3-vl-32b", help="The VLM that writes each photo's text-to-image prompt (any judge name)."),
    prompt: Optional[str] = typer.Option(None, help="One prompt for every photo instead of asking the VLM."),
    t2i: str = typer.Option("black-forest-labs/FLUX.1-dev", help="Text-to-image model: a local diffusers folder, a cached hub id, or tiny:SEED."),
    t2i_steps: int = typer.Option(28, min=1, help="Text-to-image denoising steps."),
    t2i_guidance: float = typer.Option(3.5, help="Text-to-image guidance scale."),
    t2i_area: Optional[int] = typer.Option(None, min=256, help="Pixels of each reference [default: 1024², tiny: 64²]."),
    references: int = typer.Option(1, min=1, help="Candidate references per photo; the reward model keeps the best (> 1)."),
    reward: str = typer.Option("qwen3-vl-8b", help="The reward model that chooses among candidates."),
    method: str = typer.Option("ours", "--method", help="The preset-transfer method (any registered one)."),
    ours_base: Optional[str] = typer.Option(None, help="ours: FLUX.1-dev folder or cached hub id; tiny:SEED for the tiny random model."),
    ours_lora: list[Path] = typer.Option([], help="ours: a LoRA (cold-start, then RL); repeat for several."),
    ours_steps: Optional[int] = typer.Option(None, min=1, help="ours: denoising steps [default: 28]."),
    ours_config: Optional[Path] = typer.Option(None, help="ours: a YAML file of these options (flags win)."),
    seed: int = typer.Option(0, help="Seed of the references' noise (candidate K uses seed + K)."),
    base_url: Optional[str] = typer.Option(None, help="Endpoint to ask the VLM instead (an OpenAI-compatible server)."),
    config: Optional[Path] = typer.Option(None, help="TOML/JSON file overriding judges' models, endpoints, prices."),
    cache: Optional[Path] = typer.Option(None, help="VLM reply cache [default: $XDG_CACHE_HOME/seminft-bench/vlm]."),
    device: Optional[str] = typer.Option(None, help="Torch device for local models [default: cuda if present]."),
    max_attempts: int = typer.Option(6, min=1, help="Tries per VLM request on rate limits, server errors, timeouts, empty replies."),
) -> None:
    """Restore old photos (paper §4.3): VLM prompt -> text-to-image reference at the photo's aspect -> preset transfer."""
    from seminft_bench.bench.methods import MethodContext, MethodUnavailable, get_method
    from seminft_bench.bench.restore import TINY_PREFIX, RestoreSettings, load_text_to_image, restore_photos
    from seminft_bench.errors import MissingWeightsError
    from seminft_bench.vlm import CostLedger, Judge, JudgeUnavailable, ResponseCache, RetryPolicy, Transport, load_config
    from seminft_bench.vlm.batch import add_costs
    from seminft_bench.vlm.cache import default_cache_dir
    from seminft_bench.vlm.writer import RESTORATION_PROMPT, Writer

    judges = load_config(config)
    replies, ledger = ResponseCache(cache or default_cache_dir()), CostLedger(judges.prices)
    transport = Transport(16, RetryPolicy(max_attempts=max_attempts))
    area = t2i_area or (64 * 64 if t2i.startswith(TINY_PREFIX) else 1024 * 1024)
    ours = _ours_options(ours_config, base=ours_base, lora=ours_lora, steps=ours_steps)
    try:  # every model first: a missing one stops the run before any work
        writer = None if prompt else Writer.from_name(
            vlm, config=judges, base_url=base_url, prompt=RESTORATION_PROMPT, cache=replies, ledger=ledger, transport=transport
        )
        chooser = None if references == 1 else Judge.from_name(
            reward, config=judges, reward=True, cache=replies, ledger=ledger, transport=transport
        )
        painter = load_text_to_image(t2i, device=device)
        transfer = get_method(method, MethodContext(cache=replies, device=device, options={"ours": ours}))
        summary = restore_photos(
            source, out, method=transfer, text_to_image=painter, writer=writer, prompt=prompt, reward=chooser,
            settings=RestoreSettings(steps=t2i_steps, guidance_scale=t2i_guidance, area=area, references=references, seed=seed),
            smoke=t2i.startswith(TINY_PREFIX) or (method == "ours" and str(ours.get("base", "")).startswith(TINY_PREFIX)),
            log=lambda line: typer.echo(line, err=True),
        )
    except (JudgeUnavailable, MissingWeightsError, MethodUnavailable, ValueError) as error:
        fail(error)
    for name, error in summary.failed.items():
        typer.echo(f"failed {name}: {error}", err=True)
    if ledger.entries:
        typer.echo(ledger.report())
        typer.echo(f"costs of all runs: {add_costs(out / 'vlm', ledger)}")
    typer.echo(f"{len(summary.restored)} restored, {len(summary.skipped)} unreadable (skipped), {len(summary.failed)} failed")
    if summary.contact_sheet:
        typer.echo(f"contact sheet: {summary.contact_sheet}")
    if summary.failed:
        raise typer.Exit(1)


study_app = typer.Typer(help="Blind user study over a run's outputs (paper App. A).", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("make")
def study_make(
    run_dir: Path = typer.Argument(..., help="A folder written by `seminft-bench run`."),
    methods: str = typer.Option(..., "--methods", help="Comma-separated methods to compare."),
    out: Path = typer.Option(..., "--out", help="Study folder: page/ (host this) and key.json (keep this private)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Items drawn at random from the complete samples."),
    seed: int = typer.Option(0, help="Shuffles items' options; keep it private."),
    max_side: int = typer.Option(768, min=64, help="Long side of the images shown."),
) -> None:
    """Write a static questionnaire: reference, source and the methods' outputs, names hidden."""
    from seminft_bench.bench.study import StudyError, make_study

    try:
        page = make_study(run_dir, _names(methods), out, limit=limit, seed=seed, max_side=max_side)
    except (StudyError, FileNotFoundError) as error:
        fail(error)
    typer.echo(f"questionnaire: {page} (answers download as JSON; collect them in {out / 'answers'})")


@study_app.command("tally")
def study_tally(
    answers: list[Path] = typer.Argument(..., help="Answer files downloaded from the page."),
    study: Optional[Path] = typer.Option(None, help="The study folder [default: the one above the answer files]."),
) -> None:
    """Print each method's selection ratio per question with a 95% interval."""
    from seminft_bench.bench.study import StudyError, format_tally, tally

    study = study or next((p for p in answers[0].resolve().parents if (p / "key.json").exists()), None)
    if study is None:
        fail(FileNotFoundError(f"no key.json above {answers[0]}; pass --study STUDY"))
    try:
        typer.echo(format_tally(tally(study, answers)))
    except StudyError as error:
        fail(error)

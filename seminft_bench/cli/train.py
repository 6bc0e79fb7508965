"""``seminft-train``: cold-start SFT and DiffusionNFT."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from seminft_bench.cli.common import fail, new_app
from seminft_bench.fileio import FolderLocked
from seminft_bench.quantlibs import let_in

app = new_app("Train SemiNFT: cold-start LoRA SFT, then DiffusionNFT.")

RESUME_HELP = "latest (the newest valid checkpoint in OUT, if any) or a checkpoint of this run; the settings must be the run's."
FORK_HELP = "A checkpoint of any run: continue it in a new OUT under these settings (a new learning rate, say)."
FLAG_NAMES = {"steps": "--max-steps"}
"""Config fields whose flag is not ``--`` + the field's name, dashed."""


def settings(kind: type, config: Path | None, flags: dict):
    """``kind``'s config from the file (defaults without one) with the given flags on top, checked by the same rules."""
    from seminft_bench.model.config import load_config

    names = {key: FLAG_NAMES.get(key, "--" + key.replace("_", "-")) for key in flags}
    return (load_config(config, kind) if config else kind()).override("command line", names, **flags)


@app.command("sft")
def sft_command(
    dataset: Optional[str] = typer.Option(None, help="Cold-start dataset folder (seminft-data build-coldstart) or its cached Hub id."),
    out: Optional[Path] = typer.Option(None, help="Run folder: checkpoints, logs, the final pytorch_lora_weights.safetensors."),
    config: Optional[Path] = typer.Option(None, help="YAML config (configs/sft.yaml lists every key); flags override it."),
    tiny: bool = typer.Option(False, "--tiny", help="Tiny random FLUX on the CPU: the whole loop in seconds."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps (the config's `steps`)."),
    resume: Optional[str] = typer.Option(None, help=RESUME_HELP),
    fork: Optional[str] = typer.Option(None, help=FORK_HELP),
    base: Optional[str] = typer.Option(None, help="Base model: cached hub id, diffusers folder, or tiny:SEED."),
    batch_size: Optional[int] = typer.Option(None, help="Samples per step and process."),
    learning_rate: Optional[float] = typer.Option(None, help="AdamW learning rate."),
    resolution: Optional[int] = typer.Option(None, help="Train at this side's square pixel area, aspect kept."),
    lora_rank: Optional[int] = typer.Option(None, help="LoRA rank."),
    lora_alpha: Optional[int] = typer.Option(None, help="LoRA alpha (scale = alpha / rank)."),
    lora_on: Optional[str] = typer.Option(None, help="all: every token branch; main: text + noisy tokens only."),
    seed: Optional[int] = typer.Option(None, help="Seed of the LoRA init, data order, timesteps and noise."),
    mixed_precision: Optional[str] = typer.Option(None, help="no | bf16 (GPU only; the CPU runs float32)."),
    optimizer: Optional[str] = typer.Option(None, help="adamw | adamw8bit (bitsandbytes, GPU only)."),
    log_every: Optional[int] = typer.Option(None, help="Steps between logged losses."),
    validate_every: Optional[int] = typer.Option(None, help="Steps between validation grids."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints."),
    cache: Optional[Path] = typer.Option(None, help="Prompt-embedding and VAE-latent cache [default: $XDG_CACHE_HOME/seminft-bench/model]."),
) -> None:
    """Train the cold-start LoRA (paper §3.3). Several GPUs: `accelerate launch -m seminft_bench.cli.train sft ...`."""
    from seminft_bench.model.config import SFTConfig

    flags = dict(
        dataset=dataset, out=str(out) if out else None, base=base, steps=max_steps, batch_size=batch_size,
        learning_rate=learning_rate, resolution=resolution, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_on=lora_on, seed=seed, mixed_precision=mixed_precision, optimizer=optimizer, log_every=log_every,
        validate_every=validate_every, checkpoint_every=checkpoint_every,
    )
    try:
        run = settings(SFTConfig, config, flags)
        if run.quantises:
            let_in()
        from seminft_bench.model.sft import train_sft

        folder = train_sft(run, tiny=tiny, resume=resume, fork=fork, cache_dir=cache)
    except (ValueError, FileNotFoundError, NotImplementedError, FolderLocked) as error:
        fail(error)
    typer.echo(f"LoRA: {folder / 'pytorch_lora_weights.safetensors'}")


@app.command("nft")
def nft_command(
    dataset: Optional[str] = typer.Option(None, help="RL pairs (seminft-data build-rl); a cold-start set for the 'w/o realistic dataset' row."),
    coldstart_lora: Optional[str] = typer.Option(None, help="The frozen cold-start LoRA: the SFT run's folder."),
    out: Optional[Path] = typer.Option(None, help="Run folder: checkpoints, logs, the rl pytorch_lora_weights.safetensors."),
    config: Optional[Path] = typer.Option(None, help="YAML config (configs/nft.yaml lists every key); flags override it."),
    reward: Optional[str] = typer.Option(None, help="vlm (Qwen3-VL-8B, Eq. 4) | color-stats (weight-free, for debugging)."),
    offline_samples: Optional[str] = typer.Option(None, help="Offline anchors (JSONL or Parquet, see model.rewards)."),
    no_offline: bool = typer.Option(False, "--no-offline", help="Online samples only (Table 3's 'w/o offline samples')."),
    init: Optional[str] = typer.Option(None, help="coldstart | base (no cold-start LoRA: Table 3's 'w/o cold-start')."),
    tiny: bool = typer.Option(False, "--tiny", help="Tiny random FLUX on the CPU: the whole loop in seconds."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps (0: the untrained rl LoRA, 'w/o RL')."),
    groups_per_step: Optional[int] = typer.Option(None, help="Pairs (one group each) per optimizer step, over all processes."),
    resume: Optional[str] = typer.Option(None, help=RESUME_HELP),
    fork: Optional[str] = typer.Option(None, help=FORK_HELP),
    base: Optional[str] = typer.Option(None, help="Base model: cached hub id, diffusers folder, or tiny:SEED."),
    reward_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server (vLLM, SGLang) serving the reward VLM."),
    resolution: Optional[int] = typer.Option(None, help="Work at this side's square pixel area, aspect kept."),
    seed: Optional[int] = typer.Option(None, help="Seed of the LoRA init, pairs, rollouts and noise."),
    cache: Optional[Path] = typer.Option(None, help="Prompt-embedding and VAE-latent cache [default: $XDG_CACHE_HOME/seminft-bench/model]."),
) -> None:
    """Train the RL LoRA with DiffusionNFT (paper §3.4). Several GPUs: `accelerate launch -m seminft_bench.cli.train nft ...`."""
    from seminft_bench.model.config import NFTConfig
    from seminft_bench.model.nft import train_nft

    flags = dict(
        dataset=dataset, coldstart_lora=coldstart_lora, out=str(out) if out else None, reward=reward,
        offline_samples=offline_samples, init=init, steps=max_steps, groups_per_step=groups_per_step, base=base,
        reward_base_url=reward_base_url,
        resolution=resolution, seed=seed,
    )
    try:
        run = settings(NFTConfig, config, flags)
        if no_offline:
            run = replace(run, offline_samples=None)
        folder = train_nft(run, tiny=tiny, resume=resume, fork=fork, cache_dir=cache)
    except (ValueError, FileNotFoundError, NotImplementedError, FolderLocked) as error:
        fail(error)
    typer.echo(f"LoRA: {folder / 'pytorch_lora_weights.safetensors'}")


@app.command("ablations")
def ablations_command(
    config: Path = typer.Option(..., help="YAML config (configs/ablations.yaml lists every key)."),
    out: Optional[Path] = typer.Option(None, help="Folder of the runs and the benchmark (the config's `out`)."),
    tiny: bool = typer.Option(False, "--tiny", help="Tiny random FLUX on the CPU: every row end to end in minutes."),
    cache: Optional[Path] = typer.Option(None, help="Prompt-embedding and VAE-latent cache [default: $XDG_CACHE_HOME/seminft-bench/model]."),
) -> None:
    """Table 3: train the cold-start LoRA once and an NFT run per ablation row, then benchmark the rows as
    ours:ROW in one `seminft-bench run` (OUT/bench/report.html). Rerunning resumes."""
    from seminft_bench.bench.ablations import run_ablations
    from seminft_bench.model.config import AblationsConfig, SFTConfig, load_config

    try:
        ablations = load_config(config, AblationsConfig).override(out=str(out) if out else None)
        if ablations.sft and load_config(ablations.sft, SFTConfig).quantises:
            let_in()
        summary = run_ablations(ablations, tiny=tiny, cache_dir=cache, log=lambda line: typer.echo(line, err=True))
    except (ValueError, FileNotFoundError, NotImplementedError, FolderLocked) as error:
        fail(error)
    typer.echo(f"report: {summary.out / 'report.html'}")
    if summary.failed:
        typer.echo(f"{summary.failed} cells failed (see the report); rerun the same command to retry them", err=True)
        raise typer.Exit(1)


@app.command("plan")
def plan_command(
    config: Optional[Path] = typer.Option(None, help="An sft or nft YAML config (the defaults without one)."),
    kind: str = typer.Option("sft", help="sft | nft | infer"),
    gpu: str = typer.Option("h100", help="h100 | h200 | a100-80g | l40s | rtx4090"),
    processes: int = typer.Option(1, help="NFT: processes that share each step's groups."),
) -> None:
    """Memory per process, FLOPs and time of a config's steps at its real size, measured on the meta device: will it
    fit the card, and how long will it take? No weights are read."""
    from seminft_bench.model.plan import plan_config, render

    try:
        typer.echo(render(plan_config(kind, str(config) if config else None, gpu, processes)))
    except (ValueError, FileNotFoundError) as error:
        fail(error)


@app.command("offline-example")
def offline_example_command(
    pairs: str = typer.Option(..., help="RL pairs (or cold-start) folder to take sources and references from."),
    out: Path = typer.Option(..., help="Folder for offline.jsonl and its images."),
    count: int = typer.Option(4, min=1, help="Pairs to use (three scored outputs each)."),
) -> None:
    """Write an EXAMPLE offline-samples file, scored by a stated rule (not by people), to try `nft --offline-samples`."""
    from seminft_bench.model.rewards import write_example_offline_samples

    try:
        path = write_example_offline_samples(pairs, out, count)
    except (ValueError, FileNotFoundError) as error:
        fail(error)
    typer.echo(f"example offline samples (scored by rule, not by people): {path}")


if __name__ == "__main__":  # python -m, as accelerate launch -m runs it
    from seminft_bench.quantlibs import keep_out

    keep_out()
    app()

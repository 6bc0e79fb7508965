"""``seminft-train``: cold-start SFT and DiffusionNFT (the NFT command arrives with its issue)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from seminft_bench.cli.common import fail, new_app

app = new_app("Train SemiNFT: cold-start LoRA SFT, then DiffusionNFT.")


@app.command("sft")
def sft_command(
    dataset: Optional[str] = typer.Option(None, help="Cold-start dataset folder (seminft-data build-coldstart) or its cached Hub id."),
    out: Optional[Path] = typer.Option(None, help="Run folder: checkpoints, logs, the final pytorch_lora_weights.safetensors."),
    config: Optional[Path] = typer.Option(None, help="YAML config (configs/sft.yaml lists every key); flags override it."),
    tiny: bool = typer.Option(False, "--tiny", help="Tiny random FLUX on the CPU: the whole loop in seconds."),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Optimizer steps (the config's `steps`)."),
    resume: Optional[str] = typer.Option(None, help="latest (newest checkpoint in OUT, if any) or a checkpoint folder."),
    base: Optional[str] = typer.Option(None, help="Base model: cached hub id, diffusers folder, or tiny:SEED."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Samples per step and process."),
    learning_rate: Optional[float] = typer.Option(None, help="AdamW learning rate."),
    resolution: Optional[int] = typer.Option(None, min=16, help="Train at this side's square pixel area, aspect kept."),
    lora_rank: Optional[int] = typer.Option(None, min=1, help="LoRA rank."),
    lora_alpha: Optional[int] = typer.Option(None, min=1, help="LoRA alpha (scale = alpha / rank)."),
    lora_on: Optional[str] = typer.Option(None, help="all: every token branch; main: text + noisy tokens only."),
    seed: Optional[int] = typer.Option(None, help="Seed of the LoRA init, data order, timesteps and noise."),
    mixed_precision: Optional[str] = typer.Option(None, help="no | bf16 (GPU only; the CPU runs float32)."),
    optimizer: Optional[str] = typer.Option(None, help="adamw | adamw8bit (bitsandbytes, GPU only)."),
    log_every: Optional[int] = typer.Option(None, min=1, help="Steps between logged losses."),
    validate_every: Optional[int] = typer.Option(None, min=1, help="Steps between validation grids."),
    checkpoint_every: Optional[int] = typer.Option(None, min=1, help="Steps between checkpoints."),
    cache: Optional[Path] = typer.Option(None, help="Prompt-embedding and VAE-latent cache [default: $XDG_CACHE_HOME/seminft-bench/model]."),
) -> None:
    """Train the cold-start LoRA (paper §3.3). Several GPUs: `accelerate launch -m seminft_bench.cli.train sft ...`."""
    from seminft_bench.model.config import SFTConfig, load_config
    from seminft_bench.model.sft import train_sft

    flags = dict(
        dataset=dataset, out=str(out) if out else None, base=base, steps=max_steps, batch_size=batch_size,
        learning_rate=learning_rate, resolution=resolution, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_on=lora_on, seed=seed, mixed_precision=mixed_precision, optimizer=optimizer, log_every=log_every,
        validate_every=validate_every, checkpoint_every=checkpoint_every,
    )
    try:
        settings = (load_config(config) if config else SFTConfig()).override(**flags)
        folder = train_sft(settings, tiny=tiny, resume=resume, cache_dir=cache)
    except (ValueError, FileNotFoundError, NotImplementedError) as error:
        fail(error)
    typer.echo(f"LoRA: {folder / 'pytorch_lora_weights.safetensors'}")


if __name__ == "__main__":
    app()

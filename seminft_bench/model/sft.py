"""Cold-start SFT (paper §3.3): one LoRA (``coldstart``) on FLUX.1-dev, rectified flow on the quadruplets.

The whole loop is `train_sft`, top to bottom; the functions above it are its steps, and what it shares
with the NFT loop (data, latents, checkpoints, logs) is in `training`.

- Data: a cold-start dataset (`seminft-data build-coldstart`: ``DIR/data/train-*.parquet`` with
  ``id``, ``prompt`` and the ``source``/``reference``/``target`` images), or its Hub copy in the
  local cache. Batches are drawn from aspect-ratio buckets (samples whose source and reference
  latents share a shape), so a batch stacks without padding.
- Data order and noise are pure functions of (seed, step, rank): a resumed run draws exactly
  the batches, timesteps and noise an uninterrupted one would.
- Loss (diffusers' ``train_dreambooth_lora_flux.py``): ``x_t = (1 − σ)·x_0 + σ·ε``, target
  velocity ``ε − x_0``, mean squared error over the noisy branch's tokens only. σ is
  logit-normal (SD3), then shifted for the image's token count as FLUX's scheduler shifts its
  inference sigmas (``use_dynamic_shifting``), so training sees the noise levels sampling visits.
  The transformer gets σ itself as the timestep (FluxPipeline passes t/1000 = σ).
- ``lora_on: main``: the condition branches run without the LoRA (and without gradients: they
  attend only themselves), the text and noisy tokens with it. The LoRA's record says so, and the
  pipeline then builds its condition cache without it.
- Several GPUs or nodes: ``accelerate launch -m seminft_bench.cli.train sft ...`` (DDP through
  `accelerate.Accelerator`); on CPU, ``torchrun`` runs the same code with gloo.
- The LoRA is saved in diffusers' format with the record of its settings (`lora.save_lora`), so
  `FluxPipeline.load_lora_weights` loads it at its scale and `SemiNFTPipeline.load_lora_weights` also
  restores how it runs.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from seminft_bench.model.caches import LatentCache, vae_identity
from seminft_bench.model.components import TINY_PREFIX, FluxComponents
from seminft_bench.model.conditioning import image_ids, pack_latents
from seminft_bench.model.config import SFTConfig, save_config
from seminft_bench.model.lora import add_lora, read_lora, save_lora
from seminft_bench.model import training
from seminft_bench.model.pipeline import SemiNFTPipeline, default_cache_dir
from seminft_bench.model.training import Sample, load_latents

ADAPTER = "coldstart"
ROLES = ("source", "reference", "target")
VALIDATION_SAMPLES = 4


# --------------------------------------------------------------------------- data


def epoch_batches(sizes: list[tuple], batch_size: int, seed: int, epoch: int, world: int) -> list[list[int]]:
    """This epoch's batches (sample indices) for all ranks, rank r taking every world-th from r.

    Each aspect-ratio bucket is shuffled and cut into batches of ``batch_size`` (the last one of a
    bucket may be smaller), the batches are shuffled, and the count is cut to a multiple of
    ``world`` so every rank runs as many steps.
    """
    rng = np.random.default_rng([seed, epoch])
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for index, size in enumerate(sizes):
        buckets[size].append(index)
    batches = []
    for key in sorted(buckets):
        members = [buckets[key][i] for i in rng.permutation(len(buckets[key]))]
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches[: len(batches) // world * world]


def load_batch(
    samples: list[Sample], indices: list[int], pipe: SemiNFTPipeline, cache: LatentCache, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Cached latents of one bucket's samples, stacked, and their prompt embeddings."""
    device = pipe.device
    batch = {
        role: torch.cat([load_latents(samples[i], role, pipe, cache) for i in indices]).to(device, torch.float32)
        for role in ROLES
    }
    embeddings = [pipe.embeddings(samples[i].prompt) for i in indices]
    batch["prompt_embeds"] = torch.cat([e.prompt_embeds for e in embeddings]).to(device, dtype)
    batch["pooled_prompt_embeds"] = torch.cat([e.pooled_prompt_embeds for e in embeddings]).to(device, dtype)
    batch["text_ids"] = embeddings[0].text_ids.to(device)
    return batch


# --------------------------------------------------------------------------- model


def check_gpu_options(config: SFTConfig, device: torch.device) -> None:
    """8-bit AdamW and an NF4 base need bitsandbytes on a CUDA GPU: say so before loading anything."""
    wanted = [f"optimizer: {config.optimizer}"] if config.optimizer == "adamw8bit" else []
    wanted += [f"quantize_base: {config.quantize_base}"] if config.quantize_base == "nf4" else []
    if wanted and device.type != "cuda":
        raise ValueError(f"{', '.join(wanted)} runs on CUDA GPUs only (bitsandbytes); this run is on {device.type}")


def add_coldstart_lora(flux: torch.nn.Module, config: SFTConfig) -> None:
    """Freeze ``flux`` and give it the trainable ``coldstart`` LoRA the config describes."""
    add_lora(
        flux, ADAPTER, rank=config.lora_rank, alpha=config.lora_alpha, target_modules=config.lora_target_modules,
        seed=config.seed,
    )


# --------------------------------------------------------------------------- flow matching


def sample_sigmas(batch: int, image_tokens: int, config: SFTConfig, scheduler, generator: torch.Generator) -> torch.Tensor:
    """Noise levels σ ∈ (0, 1): logit-normal, then shifted for ``image_tokens`` as FLUX's scheduler shifts at inference.

    FLUX.1-dev's scheduler has ``use_dynamic_shifting``: σ ↦ e^μ / (e^μ + (1/σ − 1)) with μ linear in
    the token count (`calculate_shift`), which `FluxPipeline` applies to its sampling sigmas; a
    scheduler without it uses its static ``shift``.
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sigmas = torch.sigmoid(torch.normal(config.weighting.mean, config.weighting.std, (batch,), generator=generator))
    sigmas = sigmas.clamp(1e-5, 1 - 1e-5)
    cfg = scheduler.config
    if cfg.get("use_dynamic_shifting"):
        mu = calculate_shift(
            image_tokens, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15),
        )
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    shift = cfg.get("shift", 1.0)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_matching_loss(
    model: torch.nn.Module,
    semi: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    config: SFTConfig,
    scheduler,
    generator: torch.Generator,
    weight_dtype: torch.dtype,
) -> torch.Tensor:
    """Rectified-flow loss on the noisy branch: ‖v_θ(x_σ, σ) − (ε − x_0)‖², x_σ = (1 − σ)·x_0 + σ·ε.

    ``model`` is the (possibly DDP-wrapped) `SemiNFTTransformer` ``semi``. With ``lora_on: main``
    the condition branches run once without the LoRA and without gradients (their keys and values
    depend on nothing else, see `transformer`), and the noisy and text tokens attend them with it.
    """
    target = batch["target"]
    bsz, _, height, width = target.shape
    (_, _, ref_h, ref_w) = batch["reference"].shape
    device = target.device
    noise = torch.randn(target.shape, generator=generator).to(device)
    sigmas = sample_sigmas(bsz, (height // 2) * (width // 2), config, scheduler, generator).to(device)
    sigma = sigmas.view(-1, 1, 1, 1)
    noisy = (1 - sigma) * target + sigma * noise
    velocity = noise - target

    guidance = torch.full((bsz,), config.guidance_scale, device=device) if semi.flux.config.guidance_embeds else None
    text = dict(
        encoder_hidden_states=batch["prompt_embeds"],
        pooled_projections=batch["pooled_prompt_embeds"],
        txt_ids=batch["text_ids"],
    )
    conditions = dict(
        reference=pack_latents(batch["reference"]).to(weight_dtype),
        reference_ids=image_ids(1, ref_h, ref_w, device=device),
        source=pack_latents(batch["source"]).to(weight_dtype),
        source_ids=image_ids(2, height, width, device=device),
    )
    cache = None
    if config.lora_on == "main":
        bf16 = weight_dtype == torch.bfloat16
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            semi.flux.disable_adapters()
            cache = semi.build_condition_cache(
                **conditions, pooled_projections=text["pooled_projections"], guidance=guidance,
                condition_timestep=config.condition_timestep,
            )
            semi.flux.enable_adapters()
        conditions = dict.fromkeys(conditions)
    prediction = model(
        pack_latents(noisy).to(weight_dtype), image_ids(0, height, width, device=device), **conditions, **text,
        timestep=sigmas, guidance=guidance, condition_timestep=config.condition_timestep, cache=cache,
    )
    return torch.nn.functional.mse_loss(prediction.float(), pack_latents(velocity).float())


# --------------------------------------------------------------------------- the loop


def train_sft(
    config: SFTConfig, *, tiny: bool = False, resume: str | None = None, fork: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Train the cold-start LoRA as ``config`` says; returns ``config.out``, which then holds
    ``pytorch_lora_weights.safetensors``.

    ``tiny`` trains the tiny random model (CPU, seconds). ``resume`` is ``"latest"`` (the newest
    valid checkpoint in ``out/checkpoints``; a fresh start when there is none) or a checkpoint of
    this run; ``fork`` continues another run's checkpoint under ``config`` in a new ``out``.
    ``cache_dir`` holds the prompt embeddings and VAE latents (default: the pipeline's cache,
    ``$XDG_CACHE_HOME/seminft-bench/model``), shared by every run on this machine.
    """
    config.check_runnable()
    with training.RunFolder(Path(config.out), "seminft-train sft") as run:
        return _train(config, run, tiny, resume, fork, cache_dir)


def _train(config: SFTConfig, run: training.RunFolder, tiny: bool, resume, fork, cache_dir) -> Path:
    """`train_sft` in the run folder it owns."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from seminft_bench.model.components import load_components

    out = run.out
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = training.base_model(config, tiny)
    on_gpu = torch.cuda.is_available() and not base.startswith(TINY_PREFIX)
    accelerator = Accelerator(mixed_precision=config.mixed_precision if on_gpu else "no", cpu=not on_gpu)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    check_gpu_options(config, device)
    root = training.resolve_dataset(config.dataset)
    samples = training.read_samples(root, "train", config.prompt, ROLES)  # bad data fails here, before the model loads
    identity = training.run_identity(config, base, world, {"dataset": training.data_fingerprint(samples)})
    checkpoint = run.claim(accelerator, "sft", identity, resume, fork)

    # Model: frozen FLUX + the cold-start LoRA, wrapped for the three branches, at the run's settings.
    weight_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    components: FluxComponents = load_components(base, device=device, dtype=weight_dtype, quantize=config.quantize_base)
    flux = components.transformer
    add_coldstart_lora(flux, config)
    if config.gradient_checkpointing:
        flux.enable_gradient_checkpointing()
    if checkpoint is not None:
        read_lora(checkpoint, flux, ADAPTER)  # a LoRA of another model or rank fails here, before any encoding
    prompts = training.prompt_encoder(base, cache_dir, device, weight_dtype)
    pipe = SemiNFTPipeline(
        components, prompts, prompt=training.the_prompt(samples), device=device,
        pixel_area=training.working_resolution(config, base) ** 2, condition_timestep=config.condition_timestep,
    )
    pipe.set_adapters([ADAPTER])
    pipe.lora_on[ADAPTER] = config.lora_on

    # Data: prompt embeddings and VAE latents (main process first: the others then read its cache).
    with accelerator.main_process_first():
        for prompt in sorted({sample.prompt for sample in samples}):
            pipe.embeddings(prompt)
        cache = LatentCache(cache_dir / "latents", vae_identity(components.vae))
        encoded = training.cache_latents(root, "train", samples, pipe, cache, ROLES)
    accelerator.print(f"{len(samples)} samples; {encoded} images encoded, the others read from {cache.folder}")
    sizes = [(pipe.work_size(sample.source_size), pipe.work_size(sample.reference_size)) for sample in samples]
    batches_per_epoch = len(epoch_batches(sizes, config.batch_size, config.seed, 0, world)) // world
    if batches_per_epoch == 0:
        raise training.DatasetError(f"{root}: {len(samples)} samples make fewer batches than the {world} processes")

    # Optimisation: AdamW on the LoRA, DDP through accelerate, resumable state.
    params = [p for p in flux.parameters() if p.requires_grad]
    optimizer = training.adamw(params, config.learning_rate, config.optimizer)
    model, optimizer = accelerator.prepare(pipe.transformer, optimizer)
    progress = training.Progress()
    accelerator.register_for_checkpointing(progress)
    training.register_lora_hooks(accelerator, pipe, {"": ADAPTER}, config.lora_on, "sft", progress)
    if checkpoint is not None:
        training.load_checkpoint(accelerator, checkpoint, optimizer, config.learning_rate)
        accelerator.print(f"resumed from {checkpoint} at step {progress.step}")
    elif resume:
        accelerator.print(f"no checkpoint in {out / training.CHECKPOINTS} yet: starting from step 0")

    log = training.ScalarLog(out / "logs", config, progress.step if checkpoint else None) if accelerator.is_main_process else None
    pairs = training.validation_pairs(root, VALIDATION_SAMPLES, ROLES) if accelerator.is_main_process else []
    validation_steps = training.TINY_VALIDATION_STEPS if base.startswith(TINY_PREFIX) else training.VALIDATION_STEPS
    if accelerator.is_main_process:
        save_config(config, out / "config.yaml")
    bar = tqdm(total=config.steps, initial=progress.step, disable=not accelerator.is_local_main_process, desc="sft")
    model.train()
    losses: list[float] = []
    started, started_step = time.perf_counter(), progress.step
    plan_epoch, plan = -1, []
    while progress.step < config.steps:
        step = progress.step
        epoch, position = divmod(step, batches_per_epoch)
        if epoch != plan_epoch:
            plan_epoch, plan = epoch, epoch_batches(sizes, config.batch_size, config.seed, epoch, world)
        indices = plan[position * world + rank]
        batch = load_batch(samples, indices, pipe, cache, weight_dtype)
        loss = flow_matching_loss(
            model, pipe.transformer, batch, config, components.scheduler,
            training.step_generator(config.seed, step, rank), weight_dtype,
        )
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1

        losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
        rate = (progress.step - started_step) / (time.perf_counter() - started)
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", steps_per_s=f"{rate:.2f}")
        if log and (progress.step % config.log_every == 0 or progress.step == config.steps):
            lr = optimizer.param_groups[0]["lr"]
            log.scalars(progress.step, {"loss": float(np.mean(losses)), "lr": lr, "grad_norm": float(grad_norm),
                                        "steps_per_s": rate})
            losses.clear()
        if log and pairs and (progress.step % config.validate_every == 0 or progress.step == config.steps):
            log.grid(progress.step, training.validation_grid(pipe, pairs, validation_steps, config.seed, accelerator.autocast))
        if progress.step % config.checkpoint_every == 0 or progress.step == config.steps:  # after what it covers
            training.save_checkpoint(accelerator, out, progress.step, config, run.digest)
    bar.close()

    accelerator.wait_for_everyone()
    training.check_ranks_agree(accelerator, flux, ADAPTER)
    if accelerator.is_main_process:
        save_lora(flux, out, ADAPTER, pipe.record(config.lora_on, "sft", progress.step))
        log.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out

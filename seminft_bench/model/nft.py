"""DiffusionNFT (paper §3.1, Eq. 1–3; Zheng et al. 2025) for SemiNFT's RL stage, the loop top to bottom.

Negative-aware fine-tuning trains on the forward (noising) process: for a rollout x_0 with a
normalised reward r ∈ [0, 1], noise it to x_t = (1 − t)·x_0 + t·ε, and pull the implicit positive
policy v⁺ = (1 − β)·v_old + β·v_θ towards the target velocity v = ε − x_0 with weight r and the
implicit negative policy v⁻ = (1 + β)·v_old − β·v_θ with weight 1 − r. A well-rewarded sample moves
v_θ towards v, a poorly rewarded one away from it, without likelihoods or a reverse-process SDE.

The policies are LoRA adapters on one FLUX: ``rl`` is trained, ``old`` (its slow copy) makes the
rollouts and the loss's v_old, both over the frozen ``coldstart``. `policy` switches between them.
One iteration (`train_nft`):

1. rollout: ``groups_per_step`` (source, reference) pairs, ``group_online`` samples each from ``old``;
   each group is scored by the reward in a worker thread while the next is rolled out;
2. normalise: each group with ``group_offline`` anchors and their human scores (Eq. 5–6);
3. loss: Eq. 1 over every member at every rollout noise level, gradients accumulated group by group;
4. one optimizer step on the mean (gradients averaged over the processes once);
5. soft update: old ← d·old + (1 − d)·rl, d ramping from 0 with the optimizer steps (`old_decay`).

Defaults follow DiffusionNFT's reference code (``scripts/train_nft_sd3.py``, ``config/nft.py``) where
the paper is silent; ``configs/nft.yaml`` gives each default's source.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from seminft_bench.fileio import file_sha256
from seminft_bench.imaging import read_image
from seminft_bench.model.caches import LatentCache, vae_identity
from seminft_bench.model.components import TINY_PREFIX
from seminft_bench.model.config import NFTConfig, save_config
from seminft_bench.model.lora import (
    adapter_parameters,
    add_lora,
    check_compatible,
    lora_fingerprint,
    read_record,
    save_lora,
    set_trainable,
)
from seminft_bench.model.pipeline import SemiNFTPipeline, default_cache_dir
from seminft_bench.model.rewards import (
    ColorStatsReward,
    OfflineSample,
    Reward,
    Triple,
    VLMReward,
    draw_offline,
    group_normalize,
    load_offline_samples,
)
from seminft_bench.model import training

COLDSTART_ADAPTER, RL_ADAPTER, OLD_ADAPTER = "coldstart", "rl", "old"
PAIR_ROLES = ("source", "reference")
VALIDATION_PAIRS = 4
ADAPTIVE_MIN = 1e-5
"""The floor of the adaptive weight (DiffusionNFT's reference code clips at 1e-5)."""


# --------------------------------------------------------------------------- Eq. 1–3


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    v_target: torch.Tensor,
    reward: torch.Tensor,
    beta: float,
    *,
    sigma: torch.Tensor | None = None,
    adaptive_weighting: bool = False,
    scale: float = 1.0,
    v_ref: torch.Tensor | None = None,
    kl_weight: float = 0.0,
) -> torch.Tensor:
    """Eq. 1–3: mean over the batch of r·‖v⁺ − v‖² + (1 − r)·‖v⁻ − v‖², each squared norm the mean over
    the non-batch elements.

    ``v_old`` is treated as a constant (detached). ``reward`` is ``[B]`` in [0, 1] (`group_normalize`).
    The keywords give DiffusionNFT's reference code, which the training loop uses by default:

    - ``adaptive_weighting``: the errors are taken in x_0 space, x̂_0 − x_0 = σ·(v_target − v) for the
      noise level ``sigma`` ``[B]``, each divided by its own (detached) mean absolute value, so every
      sample weighs alike whatever its noise level. The reference always applies it.
    - ``scale`` multiplies the policy term: the reference's is adv_clip_max / β = 5 / β.
    - ``kl_weight`` > 0: adds kl_weight·‖v_θ − v_ref‖², pulling towards ``v_ref`` (the frozen reference
      policy's velocity, detached); the reference's weight is 1e-4, towards its base model.
    """
    if not 0 < beta:
        raise ValueError(f"beta must be positive, got {beta}")
    reward = reward.to(v_theta.dtype).reshape(-1)
    if reward.shape[0] != v_theta.shape[0]:
        raise ValueError(f"{reward.shape[0]} rewards for a batch of {v_theta.shape[0]}")
    v_old = v_old.detach()
    positive = (1 - beta) * v_old + beta * v_theta
    negative = (1 + beta) * v_old - beta * v_theta
    if adaptive_weighting:
        if sigma is None:
            raise ValueError("adaptive_weighting needs the noise levels sigma")
        level = sigma.to(v_theta.dtype).reshape(-1, *[1] * (v_theta.ndim - 1))
        positive_error, negative_error = level * (positive - v_target), level * (negative - v_target)
        positive_loss = _per_sample_mean(positive_error**2) / _adaptive_weight(positive_error)
        negative_loss = _per_sample_mean(negative_error**2) / _adaptive_weight(negative_error)
    else:
        positive_loss = _per_sample_mean((positive - v_target) ** 2)
        negative_loss = _per_sample_mean((negative - v_target) ** 2)
    loss = scale * (reward * positive_loss + (1 - reward) * negative_loss).mean()
    if kl_weight:
        if v_ref is None:
            raise ValueError("kl_weight needs v_ref, the reference policy's velocity")
        loss = loss + kl_weight * _per_sample_mean((v_theta - v_ref.detach()) ** 2).mean()
    return loss


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def _adaptive_weight(error: torch.Tensor) -> torch.Tensor:
    return _per_sample_mean(error.detach().abs().double()).clamp(min=ADAPTIVE_MIN).to(error.dtype)


def old_decay(steps: int, rate: float = 0.001, ceiling: float = 0.5) -> float:
    """d of the soft update after ``steps`` optimizer steps: min(rate·steps, ceiling), from 0 (old = rl) to ½
    (the reference's ``return_decay`` of its global step, ``decay_type`` 1)."""
    return min(rate * steps, ceiling)


@torch.no_grad()
def soft_update(old: Iterable[torch.Tensor], new: Iterable[torch.Tensor], decay: float) -> None:
    """old ← decay·old + (1 − decay)·new, tensor by tensor, in place."""
    for target, source in zip(old, new, strict=True):
        target.mul_(decay).add_(source.detach().to(target.dtype), alpha=1 - decay)


# --------------------------------------------------------------------------- policies


def policy(pipe: SemiNFTPipeline, config: NFTConfig, name: str) -> AbstractContextManager[None]:
    """Run as the policy ``name``: ``rl`` (trained), ``old`` (rollouts, v_old), or ``reference`` (the KL term's:
    the frozen cold-start policy, the bare base with ``init: base``). Trainability stays as set: only ``rl``."""
    coldstart = [COLDSTART_ADAPTER] if config.init == "coldstart" else []
    return pipe.adapters(coldstart + ([] if name == "reference" else [name]))


# --------------------------------------------------------------------------- one iteration's steps


@dataclass
class Group:
    """A pair's online samples (clean latents ``[group_online]``) from the old policy, what they were made for,
    and their rewards being computed."""

    pair: training.Sample
    x0: torch.Tensor
    source: torch.Tensor
    reference: torch.Tensor
    scores: Future


@dataclass
class Batch:
    """Group members trained together: clean latents x_0 ``[n]``, the conditions they were made for (``[1]``,
    shared by all, or ``[n]``), their normalised rewards ``[n]`` and their prompt."""

    x0: torch.Tensor
    source: torch.Tensor
    reference: torch.Tensor
    reward: torch.Tensor
    prompt: str

    def chunks(self, size: int | None) -> list[Batch]:
        """At most ``size`` members each (None: one chunk), for the memory the loss may use."""
        if size is None or size >= len(self.reward):
            return [self]
        shared = self.source.shape[0] == 1
        return [
            Batch(self.x0[i : i + size], *(c if shared else c[i : i + size] for c in (self.source, self.reference)),
                  self.reward[i : i + size], self.prompt)  # fmt: skip
            for i in range(0, len(self.reward), size)
        ]


def rollout(
    pipe: SemiNFTPipeline, config: NFTConfig, pairs: list[training.Sample], cache: LatentCache, images: PairImages,
    reward: Reward, scorer: ThreadPoolExecutor, generator: torch.Generator,
) -> list[Group]:
    """Step 1: each pair's ``group_online`` samples from the old policy, in one batch after ``rollout_steps`` Euler
    steps from fresh noise; each group goes to the reward worker as soon as it is made."""
    groups = []
    with policy(pipe, config, OLD_ADAPTER):
        for pair in pairs:
            source, reference = (training.load_latents(pair, role, pipe, cache) for role in PAIR_ROLES)
            x0 = pipe.denoise_latents(
                source, reference, config.rollout_steps, config.guidance_scale, generator,
                num_samples=config.group_online, prompt=pair.prompt,
            )
            triples = group_triples(pair.id, images.pair(pair.id), pipe.decode(x0))
            groups.append(Group(pair, x0, source, reference, scorer.submit(reward.score, triples)))
    return groups


def normalise(
    groups: list[Group], offline: list[OfflineSample], offline_latents: dict[str, tuple], group_offline: int,
    rng: np.random.Generator,
) -> tuple[list[Batch], dict[str, list[float]], int]:
    """Step 2: each group's training batches, the online samples whose rewards came back and ``group_offline``
    drawn anchors, normalised together (Eq. 5–6). Also the raw and normalised rewards, online and offline
    apart (for the logs), and how many rewards failed. ``offline_latents`` maps an anchor's id to its latents."""
    batches, failed = [], 0
    rewards: dict[str, list[float]] = {f"reward/{kind}_{what}": [] for kind in ("online", "offline")
                                       for what in ("raw", "normalized")}  # fmt: skip
    for group in groups:
        scores = group.scores.result()
        kept = [i for i, score in enumerate(scores) if score is not None]  # a failed reward leaves its group
        failed += len(scores) - len(kept)
        anchors = draw_offline(offline, group_offline, rng)
        if len(kept) + len(anchors) < 2:
            continue  # nothing to compare in this group
        online, anchored = [scores[i] for i in kept], [anchor.score for anchor in anchors]
        r_online, r_offline = group_normalize(online, anchored)
        for kind, values, normalized in (("online", online, r_online), ("offline", anchored, r_offline)):
            rewards[f"reward/{kind}_raw"] += values
            rewards[f"reward/{kind}_normalized"] += list(normalized)
        prompt = group.pair.prompt
        if kept:
            batches.append(Batch(group.x0[kept], group.source, group.reference,
                                 torch.as_tensor(r_online, dtype=torch.float32), prompt))  # fmt: skip
        batches += offline_batches([offline_latents[anchor.id] for anchor in anchors], r_offline, prompt)
    return batches, rewards, failed


def accumulate_gradients(
    pipe: SemiNFTPipeline, config: NFTConfig, batches: list[Batch], generator: torch.Generator, accelerator
) -> float:
    """Step 3: the gradients of the step's loss, the mean of Eq. 1 over every member and every rollout noise
    level, accumulated batch by batch (``micro_batch`` members at most) and level by level, so memory holds
    one forward at a time. Returns the loss."""
    members = sum(len(batch.reward) for batch in batches)
    chunks = [chunk for batch in batches for chunk in batch.chunks(config.micro_batch)]
    return sum(backward_at_every_level(pipe, config, chunk, len(chunk.reward) / members, generator, accelerator)
               for chunk in chunks)  # fmt: skip


def backward_at_every_level(
    pipe: SemiNFTPipeline, config: NFTConfig, batch: Batch, weight: float, generator: torch.Generator, accelerator
) -> float:
    """Eq. 1 for a batch of members at every rollout noise level, times ``weight`` (the batch's share of the
    step's members), back-propagated level by level. Returns the batch's weighted loss."""
    x0 = batch.x0.to(pipe.device, torch.float32).clone()  # a rollout's latents are inference tensors: copy
    count, _, height, width = x0.shape
    sigmas = pipe.sigmas(config.rollout_steps, (height // 2) * (width // 2))  # the rollout's own noise levels
    source, reference = (c.to(pipe.device, torch.float32).clone() for c in (batch.source, batch.reference))
    caches = {}
    with torch.no_grad(), accelerator.autocast():  # the frozen policies' conditions: once per batch
        for name in (OLD_ADAPTER, "reference") if config.kl_weight else (OLD_ADAPTER,):
            with policy(pipe, config, name):
                caches[name] = pipe.condition_cache(source, reference, config.guidance_scale, batch.prompt)
    total = 0.0
    for sigma in sigmas:
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        x_t = (1 - sigma) * x0 + sigma * noise
        velocities = {}
        with torch.no_grad(), accelerator.autocast():
            for name, cache in caches.items():
                with policy(pipe, config, name):
                    velocities[name] = pipe.velocity(
                        x_t, sigma, cache=cache, guidance_scale=config.guidance_scale, prompt=batch.prompt
                    ).float()
        with policy(pipe, config, RL_ADAPTER), accelerator.autocast():
            # the trained policy's conditions carry gradients: built again for each backward
            cache = pipe.condition_cache(source, reference, config.guidance_scale, batch.prompt)
            v_theta = pipe.velocity(x_t, sigma, cache=cache, guidance_scale=config.guidance_scale, prompt=batch.prompt)
        loss = nft_loss(
            v_theta.float(), velocities[OLD_ADAPTER], noise - x0, batch.reward.to(pipe.device), config.beta,
            sigma=sigma.expand(count), adaptive_weighting=config.adaptive_weighting,
            scale=config.loss_scale / config.beta, v_ref=velocities.get("reference"), kl_weight=config.kl_weight,
        ) * (weight / len(sigmas))
        accelerator.backward(loss)
        total += loss.item()
    return total


def optimizer_step(accelerator, optimizer, params: list[torch.nn.Parameter], max_grad_norm: float) -> float:
    """Step 4: one all-reduce of every gradient (zeros where a process had nothing to learn from), clipping, AdamW.
    Returns the gradient norm before clipping.

    This is the gradient accumulation: the groups' backward passes run without any collective, and the
    processes meet once here. accelerate's ``accumulate`` would sync inside the last micro-step's backward
    passes, which must then be as many on every process; failed rewards and anchors of other shapes make
    them differ, and the processes would wait on each other for ever."""
    for parameter in params:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    if accelerator.num_processes > 1:
        for parameter in params:
            parameter.grad = accelerator.reduce(parameter.grad, reduction="mean")
    grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


# --------------------------------------------------------------------------- the loop


def train_nft(
    config: NFTConfig, *, tiny: bool = False, resume: str | None = None, fork: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Train the ``rl`` LoRA as ``config`` says; returns ``config.out``, which then holds its
    ``pytorch_lora_weights.safetensors``. Failed rewards drop out of their group and are counted.
    ``resume`` and ``fork`` as in `sft.train_sft`."""
    config.check_runnable()
    with training.RunFolder(Path(config.out), "seminft-train nft") as run:
        return _train(config, run, tiny, resume, fork, cache_dir)


def _train(config: NFTConfig, run: training.RunFolder, tiny: bool, resume, fork, cache_dir) -> Path:
    """`train_nft` in the run folder it owns."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from seminft_bench.model.components import load_components

    out = run.out
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = training.base_model(config, tiny)
    is_tiny = base.startswith(TINY_PREFIX)
    on_gpu = torch.cuda.is_available() and not is_tiny
    accelerator = Accelerator(mixed_precision=config.mixed_precision if on_gpu else "no", cpu=not on_gpu)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if config.groups_per_step % world:
        raise ValueError(f"groups_per_step {config.groups_per_step} does not divide among {world} processes")
    root = training.resolve_dataset(config.dataset)
    pairs = training.read_samples(root, "train", config.prompt, PAIR_ROLES)
    offline = load_offline_samples(config.offline_samples) if config.offline_samples else []
    coldstart = check_coldstart(config)
    identity = training.run_identity(config, base, world, {
        "dataset": training.data_fingerprint(pairs),
        "coldstart_lora": lora_fingerprint(coldstart) if coldstart else None,
        "offline_samples": file_sha256(Path(config.offline_samples)) if config.offline_samples else None,
        "reward_config": file_sha256(Path(config.reward_config)) if config.reward_config else None,
    })  # fmt: skip
    checkpoint = run.claim(accelerator, "nft", identity, resume, fork)
    reward = make_reward(config)  # a missing reward model fails here, before the transformer loads

    # The policies: frozen FLUX + frozen cold-start LoRA + rl (trained) and old, at the cold-start's settings.
    weight_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    components = load_components(base, device=device, dtype=weight_dtype)
    pipe = SemiNFTPipeline(
        components, training.prompt_encoder(base, cache_dir, device, weight_dtype), prompt=training.the_prompt(pairs),
        device=device, pixel_area=training.working_resolution(config, base) ** 2,
        condition_timestep=config.condition_timestep,
    )
    flux = components.transformer
    flux.requires_grad_(False)
    if coldstart:
        load_coldstart(pipe, config)
    for adapter in (RL_ADAPTER, OLD_ADAPTER):  # the same seed: old starts equal to rl
        add_lora(flux, adapter, rank=config.lora_rank, alpha=config.lora_alpha,
                 target_modules=config.lora_target_modules, seed=config.seed)  # fmt: skip
        pipe.lora_on[adapter] = config.lora_on
    pipe.set_adapters([*([COLDSTART_ADAPTER] if config.init == "coldstart" else []), RL_ADAPTER])
    set_trainable(flux, RL_ADAPTER)  # for good: `policy` switches adapters without touching this
    if config.gradient_checkpointing:
        flux.enable_gradient_checkpointing()

    with accelerator.main_process_first():
        cache = LatentCache(cache_dir / "latents", vae_identity(components.vae))
        encoded = training.cache_latents(root, "train", pairs, pipe, cache, PAIR_ROLES)
        offline_latents = {sample.id: encode_offline(pipe, sample) for sample in offline}
    accelerator.print(f"{len(pairs)} pairs ({encoded} images encoded), {len(offline)} offline samples")
    images = PairImages(root)

    params = adapter_parameters(flux, RL_ADAPTER)
    optimizer = accelerator.prepare(training.adamw(params, config.learning_rate))
    progress = training.Progress()
    accelerator.register_for_checkpointing(progress)
    adapters = {"": RL_ADAPTER, OLD_ADAPTER: OLD_ADAPTER}  # checkpoint subfolder: adapter
    training.register_lora_hooks(accelerator, pipe, adapters, config.lora_on, "nft", progress)
    if checkpoint is not None:
        training.load_checkpoint(accelerator, checkpoint, optimizer, config.learning_rate)
        accelerator.print(f"resumed from {checkpoint} at step {progress.step}")

    resumed_at = progress.step if checkpoint else None
    log = training.ScalarLog(out / "logs", config, resumed_at) if accelerator.is_main_process else None
    validation = training.validation_pairs(root, VALIDATION_PAIRS, PAIR_ROLES) if accelerator.is_main_process else []
    if accelerator.is_main_process:
        save_config(config, out / "config.yaml")
    rl_params, old_params = adapter_parameters(flux, RL_ADAPTER), adapter_parameters(flux, OLD_ADAPTER)
    scorer = ThreadPoolExecutor(1, thread_name_prefix="reward")
    bar = tqdm(total=config.steps, initial=progress.step, disable=not accelerator.is_local_main_process, desc="nft")
    failed_total = 0

    def validate(step: int) -> dict[str, float]:
        """The rl policy's validation grid (saved and logged) and its mean reward on the validation pairs."""
        with policy(pipe, config, RL_ADAPTER), accelerator.autocast():
            steps = training.TINY_VALIDATION_STEPS if is_tiny else training.VALIDATION_STEPS
            log.grid(step, training.validation_grid(pipe, validation, steps, config.seed, accelerator.autocast))
            return {"reward/validation": validation_reward(pipe, config, reward, validation)}

    if log and validation and progress.step == 0:  # where the curve starts
        log.scalars(0, validate(0))
    while progress.step < config.steps:
        step = progress.step
        generator = training.step_generator(config.seed, step, rank)
        drawn = [pairs[i] for i in pair_indices(len(pairs), config.groups_per_step, config.seed, step, rank, world)]
        groups = rollout(pipe, config, drawn, cache, images, reward, scorer, generator)
        batches, rewards, failed = normalise(
            groups, offline, offline_latents, config.group_offline, np.random.default_rng([config.seed, step, rank])
        )
        loss = accumulate_gradients(pipe, config, batches, generator, accelerator)
        grad_norm = optimizer_step(accelerator, optimizer, params, config.max_grad_norm)
        progress.step += 1
        decay = old_decay(progress.step, config.decay_rate, config.decay_max)
        soft_update(old_params, rl_params, decay)
        failed_total += failed

        stats = gather_stats(accelerator, {**rewards, "loss": [loss] if batches else []}, failed)
        bar.update(1)
        bar.set_postfix(reward=f"{stats['reward/online_raw']:.3f}", loss=f"{stats['loss']:.4f}")
        last = progress.step == config.steps
        values = {**stats, "grad_norm": grad_norm, "old_decay": decay}
        if log and validation and (progress.step % config.validate_every == 0 or last):
            values.update(validate(progress.step))
        if log and (progress.step % config.log_every == 0 or last or "reward/validation" in values):
            log.scalars(progress.step, values)
        if progress.step % config.checkpoint_every == 0 or last:
            training.save_checkpoint(accelerator, out, progress.step, config, run.digest)
    bar.close()
    scorer.shutdown()
    reward.close()
    if failed_total:
        accelerator.print(f"{failed_total} rewards failed and were left out of their groups; see {out / 'logs'}")

    accelerator.wait_for_everyone()
    training.check_ranks_agree(accelerator, flux, RL_ADAPTER)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_lora(flux, out, RL_ADAPTER, pipe.record(config.lora_on, "nft", progress.step))
        if log:
            log.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


# --------------------------------------------------------------------------- set-up and helpers


def check_coldstart(config: NFTConfig) -> str | None:
    """The cold-start LoRA's path (None with ``init: base``), checked to be a readable LoRA before any work."""
    if config.init != "coldstart":
        return None
    read_record(config.coldstart_lora)
    return config.coldstart_lora


def load_coldstart(pipe: SemiNFTPipeline, config: NFTConfig) -> None:
    """The frozen cold-start LoRA, refused when this run's settings differ from those it was trained under."""
    record = read_record(config.coldstart_lora)
    if record is not None:
        here = pipe.record(config.lora_on, "nft", 0)
        check_compatible([(f"the cold-start LoRA {config.coldstart_lora}", record), ("this NFT run's config", here)])
    pipe.load_lora_weights(config.coldstart_lora, adapter_name=COLDSTART_ADAPTER)


def group_triples(pair_id: str, pictures: dict[str, Image.Image], samples: list[Image.Image]) -> list[Triple]:
    return [Triple(f"{pair_id}/{i}", pictures["source"], pictures["reference"], image) for i, image in enumerate(samples)]


def offline_batches(latents: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], rewards, prompt: str) -> list[Batch]:
    """The drawn anchors ((x_0, source, reference) latents each, with their normalised rewards) stacked into
    batches of equal shapes."""
    by_shape: dict[tuple, list[int]] = {}
    for i, parts in enumerate(latents):
        by_shape.setdefault(tuple(tuple(part.shape) for part in parts), []).append(i)
    return [
        Batch(*(torch.cat([latents[i][part] for i in members]) for part in range(3)),
              torch.as_tensor([rewards[i] for i in members], dtype=torch.float32), prompt)  # fmt: skip
        for members in by_shape.values()
    ]


def validation_reward(pipe: SemiNFTPipeline, config: NFTConfig, reward: Reward, pairs: list[dict]) -> float:
    """The mean reward of the active policy's samples (``group_online`` per pair, ``rollout_steps``, fixed
    noise) on the validation pairs: the curve to watch, since the rollouts' rewards move with the pairs drawn.
    NaN when every reward failed."""
    scores = []
    for i, pair in enumerate(pairs):
        source, reference = read_image(pair["source"]), read_image(pair["reference"])
        x0 = pipe.denoise_latents(
            pipe.encode_image(source), pipe.encode_image(reference), config.rollout_steps, config.guidance_scale,
            torch.Generator().manual_seed(config.seed + i), num_samples=config.group_online,
            prompt=pair.get("prompt") if pipe.prompt_text is None else None,
        )
        triples = group_triples(pair["id"], {"source": source, "reference": reference}, pipe.decode(x0))
        scores += [score for score in reward.score(triples) if score is not None]
    return float(np.mean(scores)) if scores else float("nan")


def make_reward(config: NFTConfig) -> Reward:
    """The reward ``config.reward`` names; a VLM without weights, GPU or server fails here, saying which."""
    if config.reward == "color-stats":
        return ColorStatsReward()
    from seminft_bench.vlm import load_config

    judges = load_config(config.reward_config) if config.reward_config else None
    return VLMReward.from_name(config.reward_judge, config=judges, base_url=config.reward_base_url)


def pair_indices(count: int, groups_per_step: int, seed: int, step: int, rank: int, world: int) -> list[int]:
    """This rank's share of the step's pairs: a fixed function of (seed, step), different pairs on every rank."""
    rng = np.random.default_rng([seed, step])
    drawn = rng.choice(count, size=groups_per_step, replace=count < groups_per_step)
    share = groups_per_step // world
    return [int(i) for i in drawn[rank * share : (rank + 1) * share]]


class PairImages:
    """The pairs' source and reference images by id, read from the Parquet shards one row group at a time."""

    def __init__(self, root: Path):
        self.where: dict[str, tuple[Path, int, int]] = {}
        for shard in training.split_shards(root, "train"):
            file = pq.ParquetFile(shard)
            for group in range(file.num_row_groups):
                for row, sample_id in enumerate(file.read_row_group(group, columns=["id"]).column("id").to_pylist()):
                    self.where[str(sample_id)] = (shard, group, row)
        self._group: tuple[tuple[Path, int], list[dict]] | None = None

    def pair(self, sample_id: str) -> dict[str, Image.Image]:
        shard, group, row = self.where[sample_id]
        if self._group is None or self._group[0] != (shard, group):
            rows = pq.ParquetFile(shard).read_row_group(group, columns=list(PAIR_ROLES)).to_pylist()
            self._group = ((shard, group), rows)
        record = self._group[1][row]
        return {role: read_image(record[role]["bytes"], name=f"{sample_id}/{role}") for role in PAIR_ROLES}


def encode_offline(pipe: SemiNFTPipeline, sample: OfflineSample) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_0, source, reference) latents of an anchor, each image at the working size the pipeline gives it."""
    source = read_image(sample.source)
    image = read_image(sample.image)
    if image.size != source.size:
        image = image.resize(source.size, Image.Resampling.LANCZOS)
    return pipe.encode_image(image).float(), pipe.encode_image(source).float(), pipe.encode_image(sample.reference).float()


def gather_stats(accelerator, values: dict[str, list[float]], failed: int) -> dict[str, float]:
    """Means over every process's values (NaN where none), and the failed rewards' total."""
    sums = [v for name in values for v in (float(np.sum(values[name])), float(len(values[name])))]
    totals = accelerator.reduce(torch.tensor([*sums, float(failed)], device=accelerator.device), reduction="sum").tolist()
    stats = {
        name: totals[2 * i] / totals[2 * i + 1] if totals[2 * i + 1] else float("nan") for i, name in enumerate(values)
    }
    return {**stats, "reward/failed": totals[-1]}

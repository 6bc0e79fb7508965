"""DiffusionNFT (paper §3.1, Eq. 1–3; Zheng et al. 2025) for SemiNFT's RL stage.

Negative-aware fine-tuning trains on the forward (noising) process: for a rollout x_0 with a
normalised reward r ∈ [0, 1], noise it to x_t = (1 − t)·x_0 + t·ε, and pull the implicit positive
policy v⁺ = (1 − β)·v_old + β·v_θ towards the target velocity v = ε − x_0 with weight r and the
implicit negative policy v⁻ = (1 + β)·v_old − β·v_θ with weight 1 − r. A well-rewarded sample moves
v_θ towards v, a poorly rewarded one away from it, without likelihoods or a reverse-process SDE.

The old policy v_old is a second LoRA (``old``), soft-updated towards the trained one (``rl``)
after each epoch: old ← d·old + (1 − d)·rl, d ramping from 0 (`old_decay`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from seminft_bench.imaging import read_image
from seminft_bench.model import sft
from seminft_bench.model.caches import LatentCache, vae_identity
from seminft_bench.model.components import TINY_PREFIX
from seminft_bench.model.conditioning import image_ids, pack_latents
from seminft_bench.model.config import NFTConfig, save_config
from seminft_bench.model.lora import adapter_parameters, add_lora, save_lora, set_trainable
from seminft_bench.model.pipeline import SemiNFTPipeline, _to_pil, default_cache_dir
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
from seminft_bench.pipelines.quadruplets import TASK_PROMPT

ADAPTIVE_MIN = 1e-5
"""The floor of the adaptive weight (DiffusionNFT's reference code clips at 1e-5)."""


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    v_target: torch.Tensor,
    reward: torch.Tensor,
    beta: float,
    *,
    sigma: torch.Tensor | None = None,
    adaptive_weighting: bool = False,
    v_ref: torch.Tensor | None = None,
    kl_weight: float = 0.0,
) -> torch.Tensor:
    """Eq. 1–3: mean over the batch of r·‖v⁺ − v‖² + (1 − r)·‖v⁻ − v‖², each squared norm the mean over
    the non-batch elements.

    ``v_old`` is treated as a constant (detached). ``reward`` is ``[B]`` in [0, 1] (`group_normalize`).

    Options of DiffusionNFT's reference code, off by default:

    - ``adaptive_weighting``: the errors are taken in x_0 space, x̂_0 − x_0 = σ·(v_target − v) for the
      noise level ``sigma`` ``[B]``, each divided by its own (detached) mean absolute value, so every
      sample weighs alike whatever its noise level.
    - ``kl_weight`` > 0: adds kl_weight·‖v_θ − v_ref‖², pulling towards ``v_ref`` (the frozen cold-start
      policy's velocity, detached).
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
        scale = sigma.to(v_theta.dtype).reshape(-1, *[1] * (v_theta.ndim - 1))
        positive_error, negative_error = scale * (positive - v_target), scale * (negative - v_target)
        positive_loss = _per_sample_mean(positive_error**2) / _adaptive_weight(positive_error)
        negative_loss = _per_sample_mean(negative_error**2) / _adaptive_weight(negative_error)
    else:
        positive_loss = _per_sample_mean((positive - v_target) ** 2)
        negative_loss = _per_sample_mean((negative - v_target) ** 2)
    loss = (reward * positive_loss + (1 - reward) * negative_loss).mean()
    if kl_weight:
        if v_ref is None:
            raise ValueError("kl_weight needs v_ref, the reference policy's velocity")
        loss = loss + kl_weight * _per_sample_mean((v_theta - v_ref.detach()) ** 2).mean()
    return loss


def _adaptive_weight(error: torch.Tensor) -> torch.Tensor:
    return _per_sample_mean(error.detach().abs().double()).clamp(min=ADAPTIVE_MIN).to(error.dtype)


def old_decay(epoch: int, rate: float = 0.001, ceiling: float = 0.5) -> float:
    """d of the soft update after ``epoch`` epochs: min(rate·epoch, ceiling), from 0 (old = rl) to ½ by default."""
    return min(rate * epoch, ceiling)


@torch.no_grad()
def soft_update(old: Iterable[torch.Tensor], new: Iterable[torch.Tensor], decay: float) -> None:
    """old ← decay·old + (1 − decay)·new, tensor by tensor, in place."""
    for target, source in zip(old, new, strict=True):
        target.mul_(decay).add_(source.detach().to(target.dtype), alpha=1 - decay)


# --------------------------------------------------------------------------- the loop


RL_ADAPTER, OLD_ADAPTER = "rl", "old"
PAIR_ROLES = ("source", "reference")
VALIDATION_PAIRS = 4


@dataclass
class Batch:
    """Group members trained together: clean latents x_0 ``[n]``, the conditions they were made for (``[1]``,
    shared by all, or ``[n]``) and their normalised rewards ``[n]``."""

    x0: torch.Tensor
    source: torch.Tensor
    reference: torch.Tensor
    reward: torch.Tensor

    def chunks(self, size: int | None) -> list[Batch]:
        """At most ``size`` members each (None: one chunk), for the memory the loss may use."""
        if size is None or size >= len(self.reward):
            return [self]
        shared = self.source.shape[0] == 1
        return [
            Batch(self.x0[i : i + size], *(c if shared else c[i : i + size] for c in (self.source, self.reference)),
                  self.reward[i : i + size])  # fmt: skip
            for i in range(0, len(self.reward), size)
        ]


def policy_adapters(config: NFTConfig, policy: str) -> list[str]:
    """The adapters of a policy: the frozen cold-start LoRA (unless ``init: base``) and ``rl`` or ``old``."""
    return ([sft.ADAPTER] if config.init == "coldstart" else []) + [policy]


def use_policy(pipe: SemiNFTPipeline, config: NFTConfig, policy: str) -> None:
    """Activate ``policy`` (``rl`` or ``old``) and keep ``rl`` the only trainable adapter (peft re-marks on switches)."""
    adapters = policy_adapters(config, policy)
    if pipe.active_adapters != (adapters, None):
        pipe.set_adapters(adapters)
        set_trainable(pipe.components.transformer, RL_ADAPTER)


def condition_cache(pipe: SemiNFTPipeline, batch: dict, guidance: torch.Tensor | None):
    """The active policy's condition keys and values for a batch's (source, reference) latents."""
    conditions = pipe._condition_tokens(batch["source"], batch["reference"])
    cache = pipe.condition_cache(conditions, pipe._text_inputs(batch["source"].shape[0]), guidance)
    if "main" in pipe.lora_on.values():  # the condition pass switched adapters, and peft re-marked them trainable
        set_trainable(pipe.components.transformer, RL_ADAPTER)
    return cache


def velocity(
    pipe: SemiNFTPipeline, model: torch.nn.Module, cache, x_t: torch.Tensor, sigma: torch.Tensor,
    guidance: torch.Tensor | None,
) -> torch.Tensor:
    """The active policy's velocity on the noised latents, the conditions read from ``cache``."""
    _, _, height, width = x_t.shape
    text = pipe._text_inputs(x_t.shape[0])
    return model(
        pack_latents(x_t).to(text["encoder_hidden_states"].dtype), image_ids(0, height, width, device=x_t.device),
        None, None, None, None, **text, timestep=sigma, guidance=guidance,
        condition_timestep=pipe.condition_timestep, cache=cache,
    )


def rollout(
    pipe: SemiNFTPipeline, config: NFTConfig, source: torch.Tensor, reference: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """A group's online samples from the old policy: ``group_online`` clean latents, in one batch, after
    ``rollout_steps`` Euler steps from fresh noise."""
    use_policy(pipe, config, OLD_ADAPTER)
    return pipe.denoise_latents(
        source, reference, config.rollout_steps, config.guidance_scale, generator, num_samples=config.group_online
    )


def training_sigmas(pipe: SemiNFTPipeline, config: NFTConfig, image_tokens: int) -> torch.Tensor:
    """The rollout's own noise levels (FLUX's shifted schedule at ``rollout_steps``): the loss visits each once."""
    return pipe._scheduler(config.rollout_steps, image_tokens).sigmas[:-1].float()


def train_nft(
    config: NFTConfig, *, tiny: bool = False, resume: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Train the ``rl`` LoRA as ``config`` says; returns ``config.out``, which then holds its
    ``pytorch_lora_weights.safetensors``.

    Each iteration: draw ``pairs_per_step`` (source, reference) pairs per process; for each, roll out
    ``group_online`` samples in one batch with the old policy (``coldstart`` + ``old``) and score them
    in a worker thread while the next pair's group is rolled out; add ``group_offline`` anchors with
    their human scores; normalise each group (Eq. 5–6); take one AdamW step on the mean of Eq. 1
    over every member at every rollout noise level; soft-update ``old``. Failed rewards drop out of
    their group and are counted.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from seminft_bench.model.components import load_components

    if not config.dataset or not config.out:
        raise ValueError("config needs both dataset and out")
    if config.init == "coldstart" and not config.coldstart_lora:
        raise ValueError("config needs coldstart_lora (the SFT run's folder), or init: base to train without it")
    if config.condition_timestep is None:
        raise ValueError("NFT runs on the condition cache: condition_timestep must be a number (0 as in SFT), not null")
    if config.group_online < 2 and config.steps:
        raise ValueError("group_online must be at least 2: a group of one has nothing to compare")
    out = Path(config.out)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = sft.base_model(config, tiny)
    is_tiny = base.startswith(TINY_PREFIX)
    resolution = min(config.resolution, sft.TINY_RESOLUTION) if is_tiny else config.resolution
    on_gpu = torch.cuda.is_available() and not is_tiny
    accelerator = Accelerator(mixed_precision=config.mixed_precision if on_gpu else "no", cpu=not on_gpu)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    root = sft.resolve_dataset(config.dataset)
    pairs = sft.read_samples(root, "train", config.prompt or TASK_PROMPT, roles=PAIR_ROLES)
    offline = load_offline_samples(config.offline_samples) if config.offline_samples else []
    reward = make_reward(config)  # a missing reward model fails here, before the transformer loads

    weight_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    components = load_components(base, device=device, dtype=weight_dtype)
    prompt = config.prompt or TASK_PROMPT
    with accelerator.main_process_first():
        embeddings = sft.prompt_table([sft.Sample("", prompt, (1, 1), (1, 1))], base, cache_dir, device, weight_dtype)[prompt]
    pipe = SemiNFTPipeline(
        components, embeddings, device=device, pixel_area=resolution**2, condition_timestep=config.condition_timestep,
        prompt_text=prompt,
    )
    flux = components.transformer
    flux.requires_grad_(False)
    if config.init == "coldstart":
        pipe.load_lora_weights(config.coldstart_lora, adapter_name=sft.ADAPTER)
    for adapter in (RL_ADAPTER, OLD_ADAPTER):  # the same seed: old starts equal to rl
        add_lora(flux, adapter, rank=config.lora_rank, alpha=config.lora_alpha,
                 target_modules=config.lora_target_modules, seed=config.seed)  # fmt: skip
        pipe.lora_on[adapter] = config.lora_on
    use_policy(pipe, config, RL_ADAPTER)
    if config.gradient_checkpointing:
        flux.enable_gradient_checkpointing()
    checkpoint = sft.checkpoint_dir(out, resume) if resume else None

    with accelerator.main_process_first():
        sizes = sft.working_sizes(pairs, pipe)
        cache = LatentCache(cache_dir / "latents", vae_identity(components.vae))
        encoded = sft.cache_latents(root, "train", pairs, sizes, pipe, cache, roles=PAIR_ROLES)
        offline_latents = {sample.id: encode_offline(pipe, sample) for sample in offline}
    accelerator.print(f"{len(pairs)} pairs ({encoded} images encoded), {len(offline)} offline samples")
    images = PairImages(root)

    params = [p for p in flux.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate, betas=sft.ADAM_BETAS, weight_decay=sft.ADAM_WEIGHT_DECAY, eps=sft.ADAM_EPS
    )
    model, optimizer = accelerator.prepare(pipe.transformer, optimizer)
    progress = sft.Progress()
    accelerator.register_for_checkpointing(progress)
    sft.register_lora_hooks(accelerator, flux, {"": RL_ADAPTER, OLD_ADAPTER: OLD_ADAPTER}, config.lora_on)
    if checkpoint is not None:
        accelerator.load_state(checkpoint)
        accelerator.print(f"resumed from {checkpoint} at step {progress.step}")

    log = sft.ScalarLog(out / "logs", config) if accelerator.is_main_process else None
    validation = sft.validation_pairs(root, VALIDATION_PAIRS, PAIR_ROLES) if accelerator.is_main_process else []
    validation_steps = sft.TINY_VALIDATION_STEPS if is_tiny else sft.VALIDATION_STEPS
    if accelerator.is_main_process:
        save_config(config, out / "config.yaml")
    rl_params, old_params = adapter_parameters(flux, RL_ADAPTER), adapter_parameters(flux, OLD_ADAPTER)
    scorer = ThreadPoolExecutor(1, thread_name_prefix="reward")
    bar = tqdm(total=config.steps, initial=progress.step, disable=not accelerator.is_local_main_process, desc="nft")
    failed_total = 0

    def validate(step: int) -> dict[str, float]:
        """The rl policy's validation grid (saved and logged) and its mean reward on the validation pairs."""
        use_policy(pipe, config, RL_ADAPTER)
        grid = sft.validation_grid(pipe, validation, validation_steps, config.seed, accelerator.autocast)
        grid.save(out / "logs" / f"validation-{step:08d}.png")
        log.image(step, "validation", grid)
        with accelerator.autocast():
            return {"reward/validation": validation_reward(pipe, config, reward, validation)}

    if log and validation and progress.step == 0:  # where the curve starts
        log.scalars(0, validate(0))
    while progress.step < config.steps:
        step = progress.step
        generator = sft.step_generator(config.seed, step, rank)
        rng = np.random.default_rng([config.seed, step, rank])
        # Rollouts with the old policy, a group per pair; each group is scored in the worker while the next is made.
        rollouts = []
        for index in pair_indices(len(pairs), config.pairs_per_step, config.seed, step, rank, world):
            pair = pairs[index]
            source, reference = cache.get(pair.id, "source"), cache.get(pair.id, "reference")
            x0 = rollout(pipe, config, source, reference, generator)
            triples = group_triples(pair.id, images.pair(pair.id), decode(pipe, x0))
            rollouts.append(Rollout(x0, source, reference, scorer.submit(reward.score, triples)))
        batches, rewards, failed = group_batches(rollouts, offline, offline_latents, config.group_offline, rng)
        loss = accumulate_loss(pipe, model, config, batches, generator, accelerator)
        average_gradients(accelerator, params)  # ranks may have run different numbers of members
        grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        soft_update(old_params, rl_params, old_decay(step, config.decay_rate, config.decay_max))
        progress.step += 1
        failed_total += failed

        stats = gather_stats(accelerator, {**rewards, "loss": [loss] if batches else []}, failed)
        bar.update(1)
        bar.set_postfix(reward=f"{stats['reward/online_raw']:.3f}", loss=f"{stats['loss']:.4f}")
        last = progress.step == config.steps
        values = {**stats, "grad_norm": float(grad_norm), "old_decay": old_decay(step, config.decay_rate, config.decay_max)}
        if log and validation and (progress.step % config.validate_every == 0 or last):
            values.update(validate(progress.step))
        if log and (progress.step % config.log_every == 0 or last or "reward/validation" in values):
            log.scalars(progress.step, values)
        if progress.step % config.checkpoint_every == 0 or last:
            sft.save_checkpoint(accelerator, out, progress.step, config)
    bar.close()
    scorer.shutdown()
    reward.close()
    if failed_total:
        accelerator.print(f"{failed_total} rewards failed and were left out of their groups; see {out / 'logs'}")

    accelerator.wait_for_everyone()
    sft.check_ranks_agree(accelerator, flux, RL_ADAPTER)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_lora(flux, out, RL_ADAPTER, lora_on=config.lora_on)
        if log:
            log.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


@dataclass
class Rollout:
    """A pair's group of online samples (clean latents ``[group_online]``), its conditions, and the rewards
    being computed for it."""

    x0: torch.Tensor
    source: torch.Tensor
    reference: torch.Tensor
    scores: Future


def group_triples(pair_id: str, pictures: dict[str, Image.Image], samples: list[Image.Image]) -> list[Triple]:
    return [Triple(f"{pair_id}/{i}", pictures["source"], pictures["reference"], image) for i, image in enumerate(samples)]


def group_batches(
    rollouts: list[Rollout], offline: list[OfflineSample], offline_latents: dict[str, tuple], group_offline: int,
    rng: np.random.Generator,
) -> tuple[list[Batch], dict[str, list[float]], int]:
    """Each group's training batches: the online samples whose rewards came back and ``group_offline`` drawn
    anchors, normalised together (Eq. 5–6). Also the raw and normalised rewards, online and offline apart
    (for the logs), and how many rewards failed. ``offline_latents`` maps an anchor's id to its latents."""
    batches, failed = [], 0
    rewards: dict[str, list[float]] = {f"reward/{kind}_{what}": [] for kind in ("online", "offline")
                                       for what in ("raw", "normalized")}  # fmt: skip
    for group in rollouts:
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
        if kept:
            batches.append(Batch(group.x0[kept], group.source, group.reference, torch.as_tensor(r_online, dtype=torch.float32)))
        batches += offline_batches([offline_latents[anchor.id] for anchor in anchors], r_offline)
    return batches, rewards, failed


def accumulate_loss(
    pipe: SemiNFTPipeline, model: torch.nn.Module, config: NFTConfig, batches: list[Batch], generator: torch.Generator,
    accelerator,
) -> float:
    """The step's loss, the mean of Eq. 1 over every member, back-propagated batch by batch (``micro_batch``
    members at most); gradients accumulate without syncing ranks (`average_gradients` does that once)."""
    members = sum(len(batch.reward) for batch in batches)
    loss = 0.0
    with accelerator.no_sync(model):
        for batch in (chunk for batch in batches for chunk in batch.chunks(config.micro_batch)):
            loss += batch_loss(pipe, model, config, batch, len(batch.reward) / members, generator, accelerator)
    return loss


def batch_loss(
    pipe: SemiNFTPipeline, model: torch.nn.Module, config: NFTConfig, batch: Batch, weight: float,
    generator: torch.Generator, accelerator,
) -> float:
    """Eq. 1 for a batch of members at every rollout noise level, times ``weight`` (the batch's share of the
    step's members, so the step's loss is their mean), back-propagated now: gradients accumulate."""
    x0 = batch.x0.to(pipe.device, torch.float32).clone()  # a rollout's latents are inference tensors: copy
    count, _, height, width = x0.shape
    sigmas = training_sigmas(pipe, config, (height // 2) * (width // 2))
    conditions = {role: getattr(batch, role).to(pipe.device, torch.float32).clone() for role in PAIR_ROLES}
    condition_guidance = pipe._guidance(config.guidance_scale, conditions["source"].shape[0])
    guidance = pipe._guidance(config.guidance_scale, count)
    reward = batch.reward.to(pipe.device)
    with torch.no_grad(), accelerator.autocast():  # the frozen policies' conditions: once per batch
        use_policy(pipe, config, OLD_ADAPTER)
        old_cache = condition_cache(pipe, conditions, condition_guidance)
        if config.kl_weight:
            with reference_policy(pipe, config):
                reference_cache = condition_cache(pipe, conditions, condition_guidance)
    total = 0.0
    for sigma in sigmas:
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        x_t = (1 - sigma) * x0 + sigma * noise
        t = sigma.expand(count).to(x0.device)
        with torch.no_grad(), accelerator.autocast():
            use_policy(pipe, config, OLD_ADAPTER)
            v_old = velocity(pipe, pipe.transformer, old_cache, x_t, t, guidance)
            v_ref = None
            if config.kl_weight:
                with reference_policy(pipe, config):
                    v_ref = velocity(pipe, pipe.transformer, reference_cache, x_t, t, guidance)
        use_policy(pipe, config, RL_ADAPTER)
        with accelerator.autocast():  # the trained policy's conditions carry gradients: built for each backward
            v_theta = velocity(pipe, model, condition_cache(pipe, conditions, condition_guidance), x_t, t, guidance)
        loss = nft_loss(
            v_theta.float(), v_old.float(), pack_latents(noise - x0), reward, config.beta, sigma=t,
            adaptive_weighting=config.adaptive_weighting, v_ref=None if v_ref is None else v_ref.float(),
            kl_weight=config.kl_weight,
        ) * (weight / len(sigmas))
        accelerator.backward(loss)
        total += loss.item()
    return total


def offline_batches(latents: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], rewards) -> list[Batch]:
    """The drawn anchors ((x_0, source, reference) latents each, with their normalised rewards) stacked into
    batches of equal shapes."""
    by_shape: dict[tuple, list[int]] = {}
    for i, parts in enumerate(latents):
        by_shape.setdefault(tuple(tuple(part.shape) for part in parts), []).append(i)
    return [
        Batch(*(torch.cat([latents[i][part] for i in members]) for part in range(3)),
              torch.as_tensor([rewards[i] for i in members], dtype=torch.float32))  # fmt: skip
        for members in by_shape.values()
    ]


@contextmanager
def reference_policy(pipe: SemiNFTPipeline, config: NFTConfig) -> Iterator[None]:
    """The KL term's reference: the frozen cold-start policy (the base model with ``init: base``)."""
    flux = pipe.components.transformer
    if config.init == "coldstart":
        pipe.set_adapters([sft.ADAPTER])
        yield
        return
    flux.disable_adapters()
    try:
        yield
    finally:
        flux.enable_adapters()


def validation_reward(pipe: SemiNFTPipeline, config: NFTConfig, reward: Reward, pairs: list[dict]) -> float:
    """The mean reward of the active policy's samples (``group_online`` per pair, ``rollout_steps``, fixed
    noise) on the validation pairs: the curve to watch, since the rollouts' rewards move with the pairs drawn.
    NaN when every reward failed."""
    scores = []
    for i, pair in enumerate(pairs):
        source, reference = read_image(pair["source"]), read_image(pair["reference"])
        x0 = pipe.denoise_latents(
            pipe._encode(source), pipe._encode(reference), config.rollout_steps, config.guidance_scale,
            torch.Generator().manual_seed(config.seed + i), num_samples=config.group_online,
        )
        triples = group_triples(pair["id"], {"source": source, "reference": reference}, decode(pipe, x0))
        scores += [score for score in reward.score(triples) if score is not None]
    return float(np.mean(scores)) if scores else float("nan")


def make_reward(config: NFTConfig) -> Reward:
    """The reward ``config.reward`` names; a VLM without weights, GPU or server fails here, saying which."""
    if config.reward == "color-stats":
        return ColorStatsReward()
    from seminft_bench.vlm import load_config

    judges = load_config(config.reward_config) if config.reward_config else None
    return VLMReward.from_name(config.reward_judge, config=judges, base_url=config.reward_base_url)


def pair_indices(count: int, per_step: int, seed: int, step: int, rank: int, world: int) -> list[int]:
    """This rank's pairs at ``step``: a fixed function of (seed, step), different pairs on every rank."""
    rng = np.random.default_rng([seed, step])
    drawn = rng.choice(count, size=per_step * world, replace=count < per_step * world)
    return [int(i) for i in drawn[rank * per_step : (rank + 1) * per_step]]


class PairImages:
    """The pairs' source and reference images by id, read from the Parquet shards one row group at a time."""

    def __init__(self, root: Path):
        self.where: dict[str, tuple[Path, int, int]] = {}
        for shard in sft.split_shards(root, "train"):
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
    return pipe._encode(image).float(), pipe._encode(source).float(), pipe._encode(read_image(sample.reference)).float()


def decode(pipe: SemiNFTPipeline, latents: torch.Tensor) -> list[Image.Image]:
    with torch.inference_mode():
        return [_to_pil(image) for image in pipe.components.decode(latents)]


def gather_stats(accelerator, values: dict[str, list[float]], failed: int) -> dict[str, float]:
    """Means over every process's values (NaN where none), and the failed rewards' total."""
    sums = [v for name in values for v in (float(np.sum(values[name])), float(len(values[name])))]
    totals = accelerator.reduce(torch.tensor([*sums, float(failed)], device=accelerator.device), reduction="sum").tolist()
    stats = {
        name: totals[2 * i] / totals[2 * i + 1] if totals[2 * i + 1] else float("nan") for i, name in enumerate(values)
    }
    return {**stats, "reward/failed": totals[-1]}


def average_gradients(accelerator, params: list[torch.Tensor]) -> None:
    """One all-reduce of every gradient per step (zeros where a rank had nothing to learn from), so ranks
    whose groups lost different numbers of failed rewards still meet at the same collective calls."""
    for parameter in params:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    if accelerator.num_processes > 1:
        for parameter in params:
            parameter.grad = accelerator.reduce(parameter.grad, reduction="mean")

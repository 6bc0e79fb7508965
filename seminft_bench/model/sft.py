"""Cold-start SFT (paper §3.3): one LoRA (``coldstart``) on FLUX.1-dev, rectified flow on the quadruplets.

The whole loop is `train_sft`, top to bottom; the functions above it are its steps.

- Data: a cold-start dataset (`seminft-data build-coldstart`: ``DIR/data/train-*.parquet`` with
  ``id``, ``prompt`` and the ``source``/``reference``/``target`` images), or its Hub copy in the
  local cache. Columns, ids and image sizes are checked from the Parquet cells and image headers
  before anything is loaded or encoded.
- Latents: every image is resized to the working size at the config's pixel area (the
  inference pipeline's rule: `SemiNFTPipeline.work_size`), VAE-encoded once and cached on disk by
  (sample id, role) under the VAE's identity (`caches.LatentCache`), so later runs skip the VAE.
  Batches are drawn from aspect-ratio buckets (samples whose source and reference latents share
  a shape), so a batch stacks without padding.
- Data order and noise are pure functions of (seed, step, rank): a resumed run draws exactly
  the batches, timesteps and noise an uninterrupted one would, so checkpoints hold only the LoRA,
  the optimizer and the step.
- Loss (diffusers' ``train_dreambooth_lora_flux.py``): ``x_t = (1 − σ)·x_0 + σ·ε``, target
  velocity ``ε − x_0``, mean squared error over the noisy branch's tokens only. σ is
  logit-normal (SD3), then shifted for the image's token count as FLUX's scheduler shifts its
  inference sigmas (``use_dynamic_shifting``), so training sees the noise levels sampling visits.
  The transformer gets σ itself as the timestep (FluxPipeline passes t/1000 = σ).
- ``lora_on: main``: the condition branches run without the LoRA (and without gradients: they
  attend only themselves), the text and noisy tokens with it. Such a LoRA must be used the same
  way at inference: build the condition cache with the adapters disabled.
- Several GPUs or nodes: ``accelerate launch -m seminft_bench.cli.train sft ...`` (DDP through
  `accelerate.Accelerator`); on CPU, ``torchrun`` runs the same code with gloo.
- The LoRA is saved with diffusers' `save_lora_weights`, so both `FluxPipeline.load_lora_weights`
  and `SemiNFTPipeline.load_lora_weights` load it.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from seminft_bench.errors import first_few
from seminft_bench.imaging import image_grid, read_image, to_array
from seminft_bench.model.caches import LatentCache, PromptEmbeddings, vae_identity
from seminft_bench.model.components import TINY_PREFIX, FluxComponents
from seminft_bench.model.conditioning import image_ids, pack_latents
from seminft_bench.model.config import SFTConfig, save_config
from seminft_bench.model.lora import LORA_FILE, add_lora, load_lora_state, lora_state, read_lora, save_lora
from seminft_bench.model.pipeline import SemiNFTPipeline, default_cache_dir

ADAPTER = "coldstart"
ROLES = ("source", "reference", "target")
CHECKPOINTS = "checkpoints"
TINY_RESOLUTION = 64
"""`--tiny` trains at most at 64² pixels (64 tokens with the tiny VAE): seconds on a CPU."""
VALIDATION_SAMPLES = 4
VALIDATION_STEPS = 28
"""The paper's evaluation step count (§4.1); the tiny model's grid is a smoke check and takes 4."""
TINY_VALIDATION_STEPS = 4
ADAM_BETAS = (0.9, 0.999)
ADAM_WEIGHT_DECAY = 1e-4
ADAM_EPS = 1e-8
"""AdamW settings of diffusers' FLUX LoRA scripts (the paper gives none)."""


class DatasetError(ValueError):
    """A training set that cannot be used as it is; the message names the folder and the samples."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Sample:
    """One quadruplet, as the loop needs it: its id, prompt and image sizes (width, height) in the file."""

    id: str
    prompt: str
    source_size: tuple[int, int]
    """Size of source and target (they share it)."""
    reference_size: tuple[int, int]


def resolve_dataset(spec: str | os.PathLike) -> Path:
    """The dataset folder: ``spec`` itself, or the snapshot of the Hub dataset ``spec`` in the local cache."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        return Path(huggingface_hub.snapshot_download(os.fspath(spec), repo_type="dataset", local_files_only=True))
    except IncompleteSnapshotError as error:  # the shards `load_dataset` fetched are enough
        return Path(error.snapshot_path)
    except (HFValidationError, LocalEntryNotFoundError):
        raise DatasetError(
            f"{spec}: no such folder, and no Hub dataset of that name in the local Hugging Face cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}); nothing is downloaded here: "
            f"fetch it first with `hf download {spec} --repo-type dataset`"
        ) from None


def split_shards(root: Path, split: str) -> list[Path]:
    return sorted((root / "data").glob(f"{split}-[0-9]*-of-[0-9]*.parquet"))


def iter_rows(shards: list[Path], columns: list[str]) -> Iterator[dict]:
    """Rows of ``columns``, one row group in memory at a time."""
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(columns=columns, batch_size=64):
            yield from batch.to_pylist()


def check_columns(root: Path, shards: list[Path], need_prompt: bool, roles: tuple[str, ...] = ROLES) -> None:
    if not shards:
        raise DatasetError(f"{root}: no training split: expected data/train-NNNNN-of-MMMMM.parquet shards")
    required = ["id", *roles, *(["prompt"] if need_prompt else [])]
    for shard in shards:
        missing = [column for column in required if column not in pq.read_schema(shard).names]
        if missing:
            raise DatasetError(
                f"{shard}: lacks the column(s) {', '.join(missing)}; this training set needs {', '.join(required)}"
            )


def header_size(cell: dict | None) -> tuple[int, int]:
    """(width, height) of an embedded image from its header, EXIF rotation applied, without decoding it."""
    if cell is None or cell.get("bytes") is None:
        raise ValueError("no image embedded")
    try:
        with Image.open(io.BytesIO(cell["bytes"])) as image:
            width, height = image.size
            rotated = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"not a readable image ({error})") from None
    return (height, width) if rotated else (width, height)


def read_samples(root: Path, split: str, prompt: str | None, roles: tuple[str, ...] = ROLES) -> list[Sample]:
    """Every sample of ``split``, checked: unique ids, a prompt, every image of ``roles``, target and source of one size."""
    shards = split_shards(root, split)
    check_columns(root, shards, need_prompt=prompt is None, roles=roles)
    columns = ["id", *roles, *(["prompt"] if prompt is None else [])]
    samples: list[Sample] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, row in enumerate(iter_rows(shards, columns)):
        label = f"row {index} (id {row['id']!r})"
        if row["id"] is None or str(row["id"]) in seen:
            problems.append(f"{label}: {'no id' if row['id'] is None else 'duplicate id'}")
            continue
        seen.add(str(row["id"]))
        sizes = {}
        for role in roles:
            try:
                sizes[role] = header_size(row[role])
            except ValueError as error:
                problems.append(f"{label}: {role}: {error}")
        text = prompt if prompt is not None else row["prompt"]
        if not text:
            problems.append(f"{label}: empty prompt")
        if len(sizes) < len(roles) or not text:
            continue
        if "target" in sizes and sizes["target"] != sizes["source"]:
            problems.append(f"{label}: target is {_wxh(sizes['target'])} but source is {_wxh(sizes['source'])}")
            continue
        samples.append(Sample(str(row["id"]), text, sizes["source"], sizes["reference"]))
    if problems:
        raise DatasetError(f"{root}: split {split!r} has {len(problems)} unusable sample(s): {first_few(problems)}")
    if not samples:
        raise DatasetError(f"{root}: split {split!r} has no samples")
    return samples


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def working_sizes(samples: list[Sample], pipe: SemiNFTPipeline) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(source, reference) working size of each sample: its aspect-ratio bucket, and the size it is encoded at."""
    return [(pipe.work_size(sample.source_size), pipe.work_size(sample.reference_size)) for sample in samples]


def cache_latents(
    root: Path, split: str, samples: list, sizes: list[tuple], pipe: SemiNFTPipeline, cache: LatentCache,
    roles: tuple[str, ...] = ROLES,
) -> int:
    """Encode every image of ``roles`` whose latents ``cache`` lacks, at its working size (the reference at its
    own, the others at the source's); returns how many were encoded."""
    todo = {
        sample.id: size for sample, size in zip(samples, sizes) if any(cache.get(sample.id, role) is None for role in roles)
    }
    encoded = 0
    for row in iter_rows(split_shards(root, split), ["id", *roles]) if todo else ():
        sample_id = str(row["id"])
        if sample_id not in todo:
            continue
        source_size, reference_size = todo[sample_id]
        for role in roles:
            if cache.get(sample_id, role) is None:
                size = reference_size if role == "reference" else source_size
                cache.put(sample_id, role, encode_image(pipe, row[role]["bytes"], size, f"{sample_id}/{role}"))
                encoded += 1
    return encoded


def encode_image(pipe: SemiNFTPipeline, data: bytes, size: tuple[int, int], label: str) -> torch.Tensor:
    """Latents ``[1, C, h, w]`` of an image resized to ``size``, exactly as the inference pipeline encodes."""
    image = read_image(data, name=label).resize(size, Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(to_array(image, np.float32)).permute(2, 0, 1)[None]
    return pipe.components.encode(pixels.to(pipe.device))


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
    samples: list[Sample], indices: list[int], cache: LatentCache, prompts: dict[str, PromptEmbeddings], device
) -> dict[str, torch.Tensor]:
    """Cached latents of one bucket's samples, stacked, and their prompt embeddings."""
    batch = {
        role: torch.cat([cache.get(samples[i].id, role) for i in indices]).to(device, torch.float32) for role in ROLES
    }
    embeddings = [prompts[samples[i].prompt] for i in indices]
    batch["prompt_embeds"] = torch.cat([e.prompt_embeds for e in embeddings]).to(device)
    batch["pooled_prompt_embeds"] = torch.cat([e.pooled_prompt_embeds for e in embeddings]).to(device)
    batch["text_ids"] = embeddings[0].text_ids.to(device)
    return batch


# --------------------------------------------------------------------------- model


def base_model(config: SFTConfig, tiny: bool) -> str:
    """The base to train on: ``config.base``, or the tiny random model (``tiny:0`` unless one is named)."""
    if tiny and not config.base.startswith(TINY_PREFIX):
        return f"{TINY_PREFIX}0"
    return config.base


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


def prompt_table(
    samples: list[Sample], base: str, cache_dir: Path, device: torch.device, dtype: torch.dtype
) -> dict[str, PromptEmbeddings]:
    """Embeddings of every distinct prompt: tiny stand-ins for a tiny base, else FLUX's, cached on disk."""
    from seminft_bench.model.caches import encode_with_flux_text_encoders, prompt_embeddings, tiny_prompt_embeddings

    prompts = sorted({sample.prompt for sample in samples})
    if base.startswith(TINY_PREFIX):
        seed = int(base.removeprefix(TINY_PREFIX))
        return {prompt: tiny_prompt_embeddings(prompt, seed).to(dtype=dtype) for prompt in prompts}
    encode = encode_with_flux_text_encoders(base, device, dtype)
    return {prompt: prompt_embeddings(prompt, base, cache_dir, encode=encode).to(dtype=dtype) for prompt in prompts}


# --------------------------------------------------------------------------- flow matching


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of one rank's timesteps and noise at one step: the same on every run and resume."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))


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


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class Progress:
    """The optimizer steps taken, saved with every checkpoint (accelerate's `register_for_checkpointing`)."""

    step: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def checkpoint_dir(out: Path, resume: str) -> Path | None:
    """The checkpoint ``resume`` names: a folder, or ``latest`` (None when the run has none yet)."""
    if resume != "latest":
        path = Path(resume)
        if not (path / LORA_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a checkpoint of seminft-train sft (no {LORA_FILE})")
        return path
    found = sorted((out / CHECKPOINTS).glob("step-[0-9]*[0-9]"))
    return found[-1] if found else None


def save_checkpoint(accelerator, out: Path, step: int, config: SFTConfig) -> Path:
    """LoRA, optimizer, step and RNG states in ``out/checkpoints/step-N``, written under a temporary name first."""
    final = out / CHECKPOINTS / f"step-{step:08d}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_config(config, partial / "config.yaml")
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def register_lora_hooks(accelerator, flux: torch.nn.Module, adapters: dict[str, str], lora_on: str = "all") -> None:
    """Make `save_state`/`load_state` store the LoRAs alone (diffusers' format), not the frozen base:
    ``adapters`` maps a subfolder of the checkpoint ("" for the checkpoint itself) to an adapter name."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for folder, adapter in adapters.items():
                save_lora(flux, Path(output_dir) / folder, adapter, lora_on=lora_on)
        weights.clear()

    def load_hook(models, input_dir):
        for folder, adapter in adapters.items():
            load_lora_state(flux, Path(input_dir) / folder, adapter)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


class ScalarLog:
    """Scalars to TensorBoard (when the package is there) and always to ``logs/metrics.jsonl``."""

    def __init__(self, folder: Path, config):
        folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(folder / "metrics.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
        else:
            self.writer = SummaryWriter(os.fspath(folder))
            self.writer.add_text("config", "```\n" + json.dumps(asdict(config), indent=2, default=str) + "\n```")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        if self.writer:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def image(self, step: int, name: str, image: Image.Image) -> None:
        if self.writer:
            self.writer.add_image(name, np.asarray(image), step, dataformats="HWC")

    def close(self) -> None:
        self.jsonl.close()
        if self.writer:
            self.writer.close()


def validation_pairs(root: Path, count: int, roles: tuple[str, ...] = ROLES) -> list[dict[str, bytes]]:
    """The first ``count`` records of the ``test`` split (the ``train`` split's when there is none), with ``roles``."""
    shards = split_shards(root, "test") or split_shards(root, "train")
    pairs = []
    for row in iter_rows(shards, ["id", *roles]):
        if all(row[role] and row[role].get("bytes") for role in roles):
            pairs.append({"id": str(row["id"]), **{role: row[role]["bytes"] for role in roles}})
        if len(pairs) == count:
            break
    return pairs


def validation_grid(pipe: SemiNFTPipeline, pairs: list[dict], steps: int, seed: int, autocast) -> Image.Image:
    """Reference, source, prediction (and target, where there is one) of each validation pair, one row each,
    from fixed noise."""
    cells, labels = [], []
    columns = 4 if all("target" in pair for pair in pairs) else 3
    for pair in pairs:
        source, reference = read_image(pair["source"]), read_image(pair["reference"])
        with autocast():
            prediction = pipe(source, reference, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
        cells += [reference, source, prediction] + ([read_image(pair["target"])] if columns == 4 else [])
        labels += [f"{pair['id'][:12]} reference", "source", "prediction"] + (["target"] if columns == 4 else [])
    return image_grid(cells, labels, ncols=columns, cell_size=(192, 192))


# --------------------------------------------------------------------------- the loop


def train_sft(
    config: SFTConfig, *, tiny: bool = False, resume: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Train the cold-start LoRA as ``config`` says; returns ``config.out``, which then holds
    ``pytorch_lora_weights.safetensors``.

    ``tiny`` trains the tiny random model (CPU, seconds). ``resume`` is ``"latest"`` (the newest
    checkpoint in ``out/checkpoints``; a fresh start when there is none) or a checkpoint folder.
    ``cache_dir`` holds the prompt embeddings and VAE latents (default: the pipeline's cache,
    ``$XDG_CACHE_HOME/seminft-bench/model``), shared by every run on this machine.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from seminft_bench.model.components import load_components

    if not config.dataset or not config.out:
        raise ValueError("config needs both dataset and out")
    if config.lora_on == "main" and config.condition_timestep is None:
        raise ValueError("lora_on: main needs a fixed condition_timestep (the conditions run once, without the LoRA)")
    out = Path(config.out)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = base_model(config, tiny)
    resolution = min(config.resolution, TINY_RESOLUTION) if base.startswith(TINY_PREFIX) else config.resolution
    on_gpu = torch.cuda.is_available() and not base.startswith(TINY_PREFIX)
    accelerator = Accelerator(mixed_precision=config.mixed_precision if on_gpu else "no", cpu=not on_gpu)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    check_gpu_options(config, device)
    root = resolve_dataset(config.dataset)
    samples = read_samples(root, "train", config.prompt)  # bad data fails here, before the model loads

    # Model: frozen FLUX + the cold-start LoRA, wrapped for the three branches.
    weight_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    components: FluxComponents = load_components(base, device=device, dtype=weight_dtype, quantize=config.quantize_base)
    flux = components.transformer
    add_coldstart_lora(flux, config)
    if config.gradient_checkpointing:
        flux.enable_gradient_checkpointing()
    checkpoint = checkpoint_dir(out, resume) if resume else None
    if checkpoint is not None:
        read_lora(checkpoint, flux, ADAPTER)  # a LoRA of another model or rank fails here, before any encoding

    # Data: prompt embeddings and VAE latents (main process first: the others then read its cache).
    with accelerator.main_process_first():
        prompts = prompt_table(samples, base, cache_dir, device, weight_dtype)
        pipe = SemiNFTPipeline(
            components, prompts[samples[0].prompt], device=device, pixel_area=resolution**2,
            condition_timestep=config.condition_timestep, prompt_text=samples[0].prompt,
        )
        sizes = working_sizes(samples, pipe)
        cache = LatentCache(cache_dir / "latents", vae_identity(components.vae))
        encoded = cache_latents(root, "train", samples, sizes, pipe, cache)
    accelerator.print(f"{len(samples)} samples; {encoded} images encoded, the others read from {cache.folder}")
    batches_per_epoch = len(epoch_batches(sizes, config.batch_size, config.seed, 0, world)) // world
    if batches_per_epoch == 0:
        raise DatasetError(f"{root}: {len(samples)} samples make fewer batches than the {world} processes")

    # Optimisation: AdamW on the LoRA, DDP through accelerate, resumable state.
    params = [p for p in flux.parameters() if p.requires_grad]
    if config.optimizer == "adamw8bit":
        import bitsandbytes

        optimizer_class = bitsandbytes.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    optimizer = optimizer_class(
        params, lr=config.learning_rate, betas=ADAM_BETAS, weight_decay=ADAM_WEIGHT_DECAY, eps=ADAM_EPS
    )
    model, optimizer = accelerator.prepare(pipe.transformer, optimizer)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    register_lora_hooks(accelerator, flux, {"": ADAPTER}, config.lora_on)
    if checkpoint is not None:
        accelerator.load_state(checkpoint)
        accelerator.print(f"resumed from {checkpoint} at step {progress.step}")
    elif resume:
        accelerator.print(f"no checkpoint in {out / CHECKPOINTS} yet: starting from step 0")

    log = ScalarLog(out / "logs", config) if accelerator.is_main_process else None
    pairs = validation_pairs(root, VALIDATION_SAMPLES) if accelerator.is_main_process else []
    validation_steps = TINY_VALIDATION_STEPS if base.startswith(TINY_PREFIX) else VALIDATION_STEPS
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
        batch = load_batch(samples, indices, cache, prompts, device)
        loss = flow_matching_loss(
            model, pipe.transformer, batch, config, components.scheduler, step_generator(config.seed, step, rank),
            weight_dtype,
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
        if progress.step % config.checkpoint_every == 0 or progress.step == config.steps:
            save_checkpoint(accelerator, out, progress.step, config)
        if log and pairs and (progress.step % config.validate_every == 0 or progress.step == config.steps):
            grid = validation_grid(pipe, pairs, validation_steps, config.seed, accelerator.autocast)
            grid.save(out / "logs" / f"validation-{progress.step:08d}.png")
            log.image(progress.step, "validation", grid)
    bar.close()

    accelerator.wait_for_everyone()
    check_ranks_agree(accelerator, flux)
    if accelerator.is_main_process:
        save_lora(flux, out, ADAPTER, lora_on=config.lora_on)
        log.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def check_ranks_agree(accelerator, flux: torch.nn.Module, adapter: str = ADAPTER) -> None:
    """Every process holds the same LoRA (DDP keeps them equal; a divergence is a bug worth stopping for)."""
    if accelerator.num_processes == 1:
        return
    fingerprint = torch.stack([t.double().sum() for t in lora_state(flux, adapter).values()]).to(accelerator.device)
    gathered = accelerator.gather(fingerprint[None]).view(accelerator.num_processes, -1)
    if not torch.equal(gathered, gathered[:1].expand_as(gathered)):
        raise RuntimeError("the processes ended with different LoRA weights")

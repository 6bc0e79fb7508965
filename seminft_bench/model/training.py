"""What the SFT and NFT loops share: their datasets, the model they train on, latents, checkpoints and logs.

- Data: a folder of Parquet shards (``DIR/data/{split}-NNNNN-of-MMMMM.parquet``) or its Hub copy in
  the local cache. Columns, ids and image sizes are checked from the Parquet cells and image headers
  before anything is loaded or encoded; each image's bytes are hashed then, which is what its cached
  latents are keyed by.
- Latents: every image is resized to its working size at the run's pixel area (the inference
  pipeline's own rule, `SemiNFTPipeline.encode_image`), VAE-encoded once and cached on disk by
  (image hash, working size, resize rule) under the VAE's identity (`caches.LatentCache`).
- Reproducibility: noise and data order are pure functions of (seed, step, rank), so a resumed run
  draws what an uninterrupted one would, and checkpoints hold only the LoRAs, the optimizer and the step.
- The LoRAs are saved in diffusers' format with the record of the settings they were trained under
  (`lora.save_lora`), so every loader runs them as trained.
- The run folder (`RunFolder`) has one writer (``DIR/.lock``) and one identity (``DIR/run.json``): the
  settings that decide the weights, hashes of the inputs and the process count. A resume under
  another identity is refused; ``--fork`` starts a new folder from another run's checkpoint instead.
  Checkpoints carry a manifest of their files' sizes and hashes, written last, so a resume skips one
  that a kill or a disk cut short. The logs are cut back to the checkpoint a run resumes from, so
  each step is logged once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from seminft_bench.errors import first_few
from seminft_bench.fileio import FolderLock, JsonLines, atomic_write_text, file_sha256, remove_partial_writes
from seminft_bench.imaging import image_grid, read_image, write_png
from seminft_bench.model.caches import LatentCache, LatentKey, PromptEncoder, image_digest
from seminft_bench.model.components import TINY_PREFIX
from seminft_bench.model.config import save_config
from seminft_bench.model.lora import LORA_FILE, load_lora_state, lora_state, save_lora
from seminft_bench.model.pipeline import RESIZE_RULE, SemiNFTPipeline

CHECKPOINTS = "checkpoints"
RUN_FILE = "run.json"
MANIFEST = "manifest.json"
IDENTITY_EXEMPT = ("out", "steps", "log_every", "validate_every", "checkpoint_every", "reward_base_url")
"""What a resume may change: where the run lies, its step budget, how often it reports, and the address of
the server that runs the reward model (the model itself is ``reward_judge``). Every other setting decides
the weights a step makes, so together they are the run's identity."""
INPUT_FIELDS = ("dataset", "coldstart_lora", "offline_samples", "reward_config")
"""Settings that name files: the identity holds a hash of what they hold, not the path, so a moved
dataset is the same run and an edited one is not."""
TINY_RESOLUTION = 64
"""`--tiny` trains at most at 64² pixels (64 tokens with the tiny VAE): seconds on a CPU."""
VALIDATION_STEPS = 28
"""The paper's evaluation step count (§4.1); the tiny model's grid is a smoke check and takes 4."""
TINY_VALIDATION_STEPS = 4
ADAM_BETAS = (0.9, 0.999)
ADAM_WEIGHT_DECAY = 1e-4
ADAM_EPS = 1e-8
"""AdamW settings of diffusers' FLUX LoRA scripts and of DiffusionNFT's reference code (the paper gives none)."""


class DatasetError(ValueError):
    """A training set that cannot be used as it is; the message names the folder and the samples."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Sample:
    """One record, as the loops need it: its id, prompt, image sizes (width, height) and image hashes."""

    id: str
    prompt: str
    source_size: tuple[int, int]
    """Size of source and target (they share it)."""
    reference_size: tuple[int, int]
    images: dict[str, str]
    """`caches.image_digest` of each role's image bytes."""


def resolve_dataset(spec: str | os.PathLike) -> Path:
    """The dataset folder: ``spec`` itself, or the snapshot of the Hub dataset ``spec`` in the local cache."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if looks_like_a_path(os.fspath(spec)):
        raise DatasetError(f"{spec}: no such dataset folder" + (" (it is a file)" if path.exists() else ""))
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


def looks_like_a_path(spec: str) -> bool:
    """Whether ``spec`` can only be a local path: a Hub id is ``name`` or ``owner/name``, without a leading
    ``/``, ``.`` or ``~``, and its owner is not a folder here."""
    parts = spec.split("/")
    return (
        spec.startswith(("/", ".", "~")) or "\\" in spec or len(parts) > 2 or spec.endswith("/")
        or (len(parts) == 2 and Path(parts[0]).is_dir())
    )


def split_shards(root: Path, split: str) -> list[Path]:
    return sorted((root / "data").glob(f"{split}-[0-9]*-of-[0-9]*.parquet"))


def iter_rows(shards: list[Path], columns: list[str]) -> Iterator[dict]:
    """Rows of ``columns``, one row group in memory at a time."""
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(columns=columns, batch_size=64):
            yield from batch.to_pylist()


def check_columns(root: Path, shards: list[Path], need_prompt: bool, roles: tuple[str, ...]) -> None:
    if not shards:
        raise DatasetError(f"{root}: no training split: expected data/train-NNNNN-of-MMMMM.parquet shards")
    required = ["id", *roles, *(["prompt"] if need_prompt else [])]
    for shard in shards:
        missing = [column for column in required if column not in pq.read_schema(shard).names]
        if missing:
            raise DatasetError(
                f"{shard}: lacks the column(s) {', '.join(missing)}; this training set needs {', '.join(required)}"
                + ("" if "prompt" not in missing else " (or set prompt in the config)")
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


def read_samples(root: Path, split: str, prompt: str | None, roles: tuple[str, ...]) -> list[Sample]:
    """Every sample of ``split``, checked: unique ids, a prompt (``prompt``, else the dataset's column), every
    image of ``roles``, a target of the source's size."""
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
        digests = {role: image_digest(row[role]["bytes"]) for role in roles}
        samples.append(Sample(str(row["id"]), text, sizes["source"], sizes["reference"], digests))
    if problems:
        raise DatasetError(f"{root}: split {split!r} has {len(problems)} unusable sample(s): {first_few(problems)}")
    if not samples:
        raise DatasetError(f"{root}: split {split!r} has no samples")
    return samples


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def the_prompt(samples: list[Sample]) -> str | None:
    """The prompt every sample shares (SemiNFT's unified task description), or None when they differ."""
    prompts = {sample.prompt for sample in samples}
    return prompts.pop() if len(prompts) == 1 else None


# --------------------------------------------------------------------------- model and latents


def base_model(config, tiny: bool) -> str:
    """The base to train on: ``config.base``, or the tiny random model (``tiny:0`` unless one is named)."""
    if tiny and not config.base.startswith(TINY_PREFIX):
        return f"{TINY_PREFIX}0"
    return config.base


def working_resolution(config, base: str) -> int:
    """The side of the run's square working area: the config's, at most `TINY_RESOLUTION` for a tiny base."""
    return min(config.resolution, TINY_RESOLUTION) if base.startswith(TINY_PREFIX) else config.resolution


def prompt_encoder(base: str, cache_dir: Path, device: torch.device, dtype: torch.dtype) -> PromptEncoder:
    """Tiny stand-in embeddings for a tiny base, else FLUX's text encoders behind the on-disk cache."""
    if base.startswith(TINY_PREFIX):
        return PromptEncoder.tiny(int(base.removeprefix(TINY_PREFIX)))
    return PromptEncoder.flux(base, cache_dir, device, dtype)


def latent_key(sample: Sample, role: str, pipe: SemiNFTPipeline) -> LatentKey:
    """The cache key of one of a sample's images: its hash, its working size (the reference's own, the
    others the source's) and the resize rule."""
    size = sample.reference_size if role == "reference" else sample.source_size
    return LatentKey(sample.images[role], pipe.work_size(size), RESIZE_RULE)


def cache_latents(
    root: Path, split: str, samples: list[Sample], pipe: SemiNFTPipeline, cache: LatentCache, roles: tuple[str, ...]
) -> int:
    """Encode every image of ``roles`` whose latents ``cache`` lacks; returns how many were encoded."""
    todo = {sample.id: sample for sample in samples if any(latent_key(sample, r, pipe) not in cache for r in roles)}
    encoded = 0
    for row in iter_rows(split_shards(root, split), ["id", *roles]) if todo else ():
        sample = todo.get(str(row["id"]))
        for role in roles if sample else ():
            key = latent_key(sample, role, pipe)
            if key not in cache:
                cache.put(key, pipe.encode_image(read_image(row[role]["bytes"], name=f"{sample.id}/{role}")))
                encoded += 1
    return encoded


def load_latents(sample: Sample, role: str, pipe: SemiNFTPipeline, cache: LatentCache) -> torch.Tensor:
    """A sample's cached latents ``[1, C, h, w]`` (`cache_latents` put them there)."""
    return cache.get(latent_key(sample, role, pipe))


# --------------------------------------------------------------------------- optimisation and checkpoints


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of one rank's noise at one step: the same on every run and resume."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))


def adamw(params: list[torch.nn.Parameter], learning_rate: float, kind: str = "adamw") -> torch.optim.Optimizer:
    """AdamW (``adamw8bit``: bitsandbytes' 8-bit one) with `ADAM_BETAS`, `ADAM_WEIGHT_DECAY` and `ADAM_EPS`."""
    if kind == "adamw8bit":
        import bitsandbytes

        optimizer_class = bitsandbytes.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(params, lr=learning_rate, betas=ADAM_BETAS, weight_decay=ADAM_WEIGHT_DECAY, eps=ADAM_EPS)


@dataclass
class Progress:
    """The optimizer steps taken, saved with every checkpoint (accelerate's `register_for_checkpointing`)."""

    step: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def save_checkpoint(accelerator, out: Path, step: int, config, run: str) -> Path:
    """LoRAs, optimizer, step and RNG states in ``out/checkpoints/step-N``: written as ``step-N.partial``, checked
    into a manifest of sizes and hashes (written last), then renamed. ``run`` is the run's identity digest."""
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
        write_manifest(partial, run)
        if final.exists():  # one this run skipped as invalid, or replays
            shutil.rmtree(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, checkpoint: Path, optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    """Restore LoRAs, optimizer, step and RNG states, at this run's learning rate (a fork may change it: the
    optimizer's saved state would bring back the old one)."""
    accelerator.load_state(checkpoint)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def write_manifest(folder: Path, run: str) -> None:
    """``folder/manifest.json``: every file's size and SHA-256 as it lies on disk, and the run's identity digest."""
    files = {
        path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST
    }
    atomic_write_text(folder / MANIFEST, json.dumps({"run": run, "files": files}, indent=1, sort_keys=True))


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint ``folder`` cannot be resumed from (a file missing, cut short or changed), or None."""
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (its save did not finish)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable {MANIFEST}"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['bytes']} when saved"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} differs from what was saved (SHA-256)"
    return None


def checkpoint_run(folder: Path) -> str:
    """The identity digest of the run that saved the (valid) checkpoint ``folder``."""
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["run"]


# --------------------------------------------------------------------------- the run folder


class RunFolderError(ValueError):
    """A run folder this run may not write as asked; the message says what to do instead."""


def run_identity(config, base: str, processes: int, inputs: dict[str, str | None]) -> dict:
    """What decides a run's weights: the config less `IDENTITY_EXEMPT` and `INPUT_FIELDS`, the base it trains,
    the process count (it sets each process's share of data and noise) and ``inputs``, the hashes of its files."""
    settings = json.loads(json.dumps(asdict(config)))  # tuples as lists, as run.json holds them
    settings = {key: value for key, value in settings.items() if key not in IDENTITY_EXEMPT + INPUT_FIELDS}
    return {"settings": {**settings, "base": base}, "inputs": inputs, "processes": processes}


def check_settings(config, base: str, folder: Path) -> None:
    """Refuse early a run folder whose recorded settings differ from ``config``'s (its inputs are checked when the
    run starts, `RunFolder.claim`): for jobs that train several runs in a row."""
    recorded = folder / RUN_FILE
    if recorded.is_file():
        before = {"settings": json.loads(recorded.read_text(encoding="utf-8"))["identity"]["settings"]}
        differences = identity_differences(before, {"settings": run_identity(config, base, 0, {})["settings"]})
        if differences:
            raise RunFolderError(f"{folder} holds a run with other settings ({'; '.join(differences)})")


def data_fingerprint(samples: list[Sample]) -> str:
    """One hash of the samples as trained: ids, prompts and image hashes."""
    return _digest([[sample.id, sample.prompt, sample.images] for sample in samples])


def identity_differences(before: dict, now: dict) -> list[str]:
    """``key: X there, Y now`` for each part of two identities that differs."""
    def flat(identity: dict) -> dict:
        return {
            **identity.get("settings", {}),
            **{f"{key} (its content)": value for key, value in identity.get("inputs", {}).items()},
            "processes": identity.get("processes"), "forked from": identity.get("forked_from"),
        }  # fmt: skip

    old, new = flat(before), flat(now)
    return [f"{key}: {old.get(key)!r} there, {new.get(key)!r} now" for key in dict.fromkeys([*old, *new])
            if old.get(key) != new.get(key)]  # fmt: skip


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class RunFolder:
    """A training run's folder: one writer (``DIR/.lock``, held while the run lives) and one identity (``DIR/run.json``).

    Only the main process (global rank 0) locks and writes. Nothing touches the folder before `claim`, which
    takes the lock (held until the ``with`` block ends) and removes what a killed writer left: checkpoints
    still named ``.partial`` and the temporary files of atomic writes.
    """

    def __init__(self, out: Path, job: str):
        self.out = Path(out)
        self.lock = FolderLock(self.out, job=job)
        self.digest = ""
        """The identity's digest, once claimed: every checkpoint's manifest carries it."""

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()

    def claim(self, accelerator, kind: str, identity: dict, resume: str | None, fork: str | None) -> Path | None:
        """Check this run may write the folder as asked, record its identity, and return the checkpoint to start
        from (None: step 0). ``resume``: ``latest`` or a checkpoint of this run; ``fork``: a checkpoint of any run,
        continued here under this run's settings."""
        found = None
        if accelerator.is_main_process:
            self.lock.acquire()
            for partial in (self.out / CHECKPOINTS).glob("*.partial"):
                shutil.rmtree(partial)
            remove_partial_writes(self.out)
            found = self._claim(kind, identity, resume, fork)
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            found = broadcast_object_list([found])[0]
        self.digest, checkpoint = found
        return Path(checkpoint) if checkpoint else None

    def _claim(self, kind: str, identity: dict, resume: str | None, fork: str | None) -> tuple[str, str | None]:
        recorded = self.out / RUN_FILE
        before = json.loads(recorded.read_text(encoding="utf-8")) if recorded.is_file() else None
        trained = any((self.out / CHECKPOINTS).glob("step-*")) or (self.out / LORA_FILE).exists()
        if fork:
            if trained:
                raise RunFolderError(f"{self.out} holds a run already: --fork starts a new run, give it a new --out")
            fork_from = Path(fork).resolve()
            self._check_valid(fork_from)
        else:  # a fork killed before its first checkpoint goes on from where it was forked
            fork_from = before["identity"].get("forked_from") if before else None
        identity = {**identity, "forked_from": str(fork_from) if fork_from else None}
        if trained and before is None:
            raise RunFolderError(
                f"{self.out} holds training output without a {RUN_FILE} (an older version's run, or another tool's): "
                "move it away, or use another --out"
            )
        if trained:  # what it holds was made under its identity: only that identity may go on with it
            differences = identity_differences(before["identity"], identity) + (
                [f"stage: {before.get('kind')!r} there, {kind!r} now"] if before.get("kind") != kind else []
            )
            if differences:
                raise RunFolderError(
                    f"{self.out} holds a run with other settings ({'; '.join(differences)}); resume it with its own "
                    f"settings, start this one in a new --out, or continue one of its checkpoints under these settings "
                    f"in a new folder: --fork {self.out / CHECKPOINTS}/step-N --out NEW"
                )
            if resume is None:
                raise RunFolderError(f"{self.out} holds a run already: continue it with --resume latest, or use another --out")
        run = _digest(identity)
        atomic_write_text(recorded, json.dumps({"kind": kind, "identity": identity}, indent=2, sort_keys=True) + "\n")
        return run, self._start(run, resume, fork_from)

    def _start(self, run: str, resume: str | None, fork_from: Path | None) -> str | None:
        """The checkpoint to load: the newest valid one here for ``latest`` (warning about each invalid one), the one
        ``resume`` names (it must be of this run), else where the run was forked from."""
        if resume not in (None, "latest"):
            path = Path(resume)
            self._check_valid(path)
            if checkpoint_run(path) != run:
                raise RunFolderError(
                    f"{path} is a checkpoint of a run with other settings: --fork {path} --out NEW continues it "
                    "under this run's settings in a new folder"
                )
            return str(path)
        if resume == "latest":
            problems = []
            for path in sorted((self.out / CHECKPOINTS).glob("step-[0-9]*[0-9]"), reverse=True):
                problem = checkpoint_problem(path)
                if problem is None:
                    return str(path)
                print(f"warning: skipping the checkpoint {path}: {problem}", file=sys.stderr, flush=True)
                problems.append(f"{path.name}: {problem}")
            if problems and not fork_from:
                raise RunFolderError(
                    f"{self.out / CHECKPOINTS} holds no valid checkpoint ({first_few(problems, 3)}); move that folder "
                    "away to start over"
                )
        return str(fork_from) if fork_from else None

    @staticmethod
    def _check_valid(path: Path) -> None:
        problem = checkpoint_problem(path) if path.is_dir() else "no such folder"
        if problem:
            raise RunFolderError(f"{path}: not a checkpoint to start from: {problem}")


def register_lora_hooks(
    accelerator, pipe: SemiNFTPipeline, adapters: dict[str, str], lora_on: str, kind: str, progress: Progress
) -> None:
    """Make `save_state`/`load_state` store the LoRAs alone (diffusers' format, with their records), not the frozen
    base: ``adapters`` maps a subfolder of the checkpoint ("" for the checkpoint itself) to an adapter name."""
    flux = pipe.components.transformer

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for folder, adapter in adapters.items():
                save_lora(flux, Path(output_dir) / folder, adapter, pipe.record(lora_on, kind, progress.step))
        weights.clear()

    def load_hook(models, input_dir):
        for folder, adapter in adapters.items():
            load_lora_state(flux, Path(input_dir) / folder, adapter)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def check_ranks_agree(accelerator, flux: torch.nn.Module, adapter: str) -> None:
    """Every process holds the same LoRA (DDP keeps them equal; a divergence is a bug worth stopping for)."""
    if accelerator.num_processes == 1:
        return
    fingerprint = torch.stack([t.double().sum() for t in lora_state(flux, adapter).values()]).to(accelerator.device)
    gathered = accelerator.gather(fingerprint[None]).view(accelerator.num_processes, -1)
    if not torch.equal(gathered, gathered[:1].expand_as(gathered)):
        raise RuntimeError("the processes ended with different LoRA weights")


# --------------------------------------------------------------------------- logs


class ScalarLog:
    """Scalars to TensorBoard (when the package is there) and always to ``logs/metrics.jsonl``; validation grids.

    A run that resumes from step N replays the steps after N, so what was logged after N is dropped first:
    from metrics.jsonl, the grids, and TensorBoard (``purge_step``). Each step is then logged once.
    """

    def __init__(self, folder: Path, config, resumed_at: int | None):
        """``resumed_at``: the step of the checkpoint the run starts from; None for a start from scratch."""
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        kept = -1 if resumed_at is None else resumed_at
        self.jsonl = JsonLines(folder / "metrics.jsonl")
        records = self.jsonl.read()
        if any(record.get("step", 0) > kept for record in records):
            self.jsonl.rewrite([record for record in records if record.get("step", 0) <= kept])
        for grid in folder.glob("validation-[0-9]*.png"):
            if int(grid.stem.removeprefix("validation-")) > kept:
                grid.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
        else:
            self.writer = SummaryWriter(os.fspath(folder), purge_step=kept + 1)
            if resumed_at is None:
                self.writer.add_text("config", "```\n" + json.dumps(asdict(config), indent=2, default=str) + "\n```")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.jsonl.append({"step": step, **values})
        if self.writer:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def grid(self, step: int, image: Image.Image) -> None:
        """The validation grid of ``step``: ``validation-N.png`` (written atomically) and TensorBoard's image."""
        write_png(image, self.folder / f"validation-{step:08d}.png")
        if self.writer:
            self.writer.add_image("validation", np.asarray(image), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def validation_pairs(root: Path, count: int, roles: tuple[str, ...]) -> list[dict]:
    """The first ``count`` records of the ``test`` split (the ``train`` split's when there is none), with ``roles``
    (and the prompt, where the set has one)."""
    shards = split_shards(root, "test") or split_shards(root, "train")
    with_prompt = bool(shards) and "prompt" in pq.read_schema(shards[0]).names
    pairs = []
    for row in iter_rows(shards, ["id", *roles, *(["prompt"] if with_prompt else [])]):
        if all(row[role] and row[role].get("bytes") for role in roles):
            pairs.append({"id": str(row["id"]), "prompt": row.get("prompt"), **{role: row[role]["bytes"] for role in roles}})
        if len(pairs) == count:
            break
    return pairs


def validation_grid(pipe: SemiNFTPipeline, pairs: list[dict], steps: int, seed: int, autocast) -> Image.Image:
    """Reference, source, prediction (and target, where there is one) of each validation pair, one row each,
    from fixed noise, with the run's prompt (each pair's own when the run has none)."""
    cells, labels = [], []
    columns = 4 if all("target" in pair for pair in pairs) else 3
    for pair in pairs:
        source, reference = read_image(pair["source"]), read_image(pair["reference"])
        prompt = pair.get("prompt") if pipe.prompt_text is None else None
        with autocast():
            prediction = pipe(source, reference, prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
        cells += [reference, source, prediction] + ([read_image(pair["target"])] if columns == 4 else [])
        labels += [f"{pair['id'][:12]} reference", "source", "prediction"] + (["target"] if columns == 4 else [])
    return image_grid(cells, labels, ncols=columns, cell_size=(192, 192))

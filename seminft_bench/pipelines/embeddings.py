"""CLIP image embeddings, cached on disk in clip-retrieval's layout so a pool is embedded once.

Layout (the one clip-retrieval writes, so its outputs can be read and ours reused)::

    out_dir/img_emb/img_emb_{N}.npy            float32 [rows, D], L2-normalised
    out_dir/metadata/metadata_{N}.parquet      column ``image_path``; row i names vector i

A shard's metadata file is written after its vectors, so it is the mark that the shard is
whole: a killed run leaves whole shards (plus at most one vectors file without metadata,
which the next run overwrites). Embedding is incremental: paths already named in the
metadata are not embedded again, and new shards take the next numbers.
"""

from __future__ import annotations

import functools
import io
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from seminft_bench.errors import MissingWeightsError
from seminft_bench.fileio import atomic_write_bytes
from seminft_bench.imaging import ImageReadError, read_image
from seminft_bench.pipelines.executors import run_units

DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_SHARD_SIZE = 100_000
"""Rows per shard: 100k × 768 float32 is 300 MB, the most held in memory at once."""

DEFAULT_MIN_SIDE = 32
"""Images whose shorter side is below this carry too little content to embed meaningfully."""

_SHARD_NUMBER = re.compile(r"_(\d+)$")


@dataclass
class EmbeddingSummary:
    """What one `embed_images` call did. ``rejections`` are ``{"path", "reason", "detail"}`` records."""

    embedded: int
    already_present: int
    shards: list[Path] = field(default_factory=list)
    rejections: list[dict[str, str]] = field(default_factory=list)


def load_clip(
    model_name: str = DEFAULT_CLIP_MODEL,
    pretrained: str | os.PathLike | None = DEFAULT_CLIP_PRETRAINED,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    precision: str | None = None,
) -> tuple[torch.nn.Module, Callable]:
    """An open_clip model in eval mode and its inference preprocessing; nothing is downloaded.

    ``pretrained`` is a local weights file, an open_clip tag (e.g. ``laion2b_s34b_b79k``) whose
    file is already in the local cache (``cache_dir``, else the Hugging Face cache, or
    ``~/.cache/clip`` for URL tags), or None for random weights (tests, demos: embeddings are
    then not semantic, and a warning says so). ``precision`` is an open_clip precision
    ("fp32", "bf16", "fp16"); None picks `default_precision` for the device.
    """
    import open_clip

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = precision or default_precision(device)
    overrides = {}
    if pretrained is None:
        warnings.warn(
            f"open_clip {model_name} has random weights (no pretrained weights given): "
            "embeddings and the pairs retrieved with them are not semantic",
            stacklevel=2,
        )
        weights = None
    elif Path(pretrained).is_file():
        weights = os.fspath(pretrained)
    else:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, str(pretrained))
        weights = _cached_weights(model_name, str(pretrained), tag_cfg, cache_dir)
        overrides = {
            "image_mean": tag_cfg.get("mean"),
            "image_std": tag_cfg.get("std"),
            "image_interpolation": tag_cfg.get("interpolation"),
            "image_resize_mode": tag_cfg.get("resize_mode"),
            "force_quick_gelu": tag_cfg.get("quick_gelu", False),
        }
    # pretrained_text=False: open_clip would otherwise fetch Hugging Face text-tower weights
    # for random-init models with such a tower; only the image tower is used here.
    # Random weights come from a fixed seed, so every process (and every Ray worker) that
    # embeds part of a pool uses the same model; the caller's RNG state is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=weights, precision=precision, device=device, pretrained_text=False, **overrides
        )
    return model.eval(), preprocess


def default_precision(device: torch.device) -> str:
    """fp16 on CUDA; bf16 on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX); fp32 elsewhere.

    On a CPU with bf16 units a ViT-B-32 embeds about 2.3× faster in bf16 than in fp32 (measured
    with batch 32, benchmarks/RESULTS.md) and its embeddings stay within 1e-4 cosine of the fp32
    ones, far below what separates neighbours; without such units bf16 is emulated and slower.
    """
    if device.type == "cuda":
        return "fp16"
    has_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False
    )()
    return "bf16" if device.type == "cpu" and has_bf16 else "fp32"


def _cached_weights(model_name: str, tag: str, tag_cfg: dict, cache_dir: str | os.PathLike | None) -> str:
    """The local file for an open_clip tag, looked up without any network access.

    open_clip itself would download a missing file, so the tag is resolved here and the file
    handed to it as a path (with the tag's preprocessing passed alongside).
    """
    how = (
        f"pass the weights file as a path (--clip-pretrained PATH), or copy it into the cache "
        f"on a machine with network access (open_clip.create_model_and_transforms({model_name!r}, "
        f"pretrained={tag!r}, cache_dir=...)); pretrained=None gives random, non-semantic weights"
    )
    if not tag_cfg:
        raise MissingWeightsError(
            f"open_clip weights {tag!r} for {model_name}: not a file and not a known open_clip tag; {how}"
        )
    looked = []
    if tag_cfg.get("hf_hub"):
        repo_id, filename = os.path.split(tag_cfg["hf_hub"])
        found, where = _hf_cached_file(repo_id, filename or "open_clip_pytorch_model.bin", cache_dir)
        if found:
            return found
        looked.append(where)
    if tag_cfg.get("url"):
        candidate = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(tag_cfg["url"])
        if candidate.is_file():
            return os.fspath(candidate)
        looked.append(os.fspath(candidate))
    raise MissingWeightsError(
        f"open_clip weights {model_name}/{tag} are not in the local cache (looked in: {'; '.join(looked)}); {how}"
    )


def _hf_cached_file(repo_id: str, filename: str, cache_dir: str | os.PathLike | None) -> tuple[str | None, str]:
    """A file from the Hugging Face cache (its safetensors twin preferred, as open_clip does), or None."""
    from huggingface_hub import constants, try_to_load_from_cache

    names = [filename]
    if filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    for name in names:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(found, str):
            return found, ""
    return None, f"{cache_dir or constants.HF_HUB_CACHE} ({repo_id}/{filename})"


def embed_images(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: torch.nn.Module,
    preprocess: Callable,
    batch_size: int = 64,
    num_workers: int = 2,
    shard_size: int = DEFAULT_SHARD_SIZE,
    min_side: int = DEFAULT_MIN_SIDE,
) -> EmbeddingSummary:
    """Embed the images not yet in ``out_dir`` and append them as new shards.

    Decoding runs in ``num_workers`` DataLoader processes (0: in this process) through
    `read_image`, so every file mode is read the same way everywhere. Unreadable images and
    images whose shorter side is below ``min_side`` are skipped and returned as rejections;
    they are tried again on the next call. Only one shard of vectors is held in memory.
    """
    chunks = _new_chunks(paths, out_dir, shard_size)
    results = (_embed_chunk(chunk, model, preprocess, batch_size, num_workers, min_side) for chunk in chunks.todo)
    return _append_shards(Path(out_dir), results, chunks.already_present)


@dataclass(frozen=True)
class ClipSpec:
    """What a remote worker needs to load the same open_clip model by itself."""

    model_name: str = DEFAULT_CLIP_MODEL
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED
    batch_size: int = 64
    min_side: int = DEFAULT_MIN_SIDE


def embed_images_distributed(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    spec: ClipSpec,
    *,
    workers: int,
    executor: str = "ray",
    ray_address: str | None = None,
    unit_size: int = 1024,
) -> EmbeddingSummary:
    """`embed_images` spread over worker processes or a Ray cluster (`executors.run_units`).

    Each unit of ``unit_size`` paths is embedded by a worker that loads the model once
    (``spec``; weights must be readable at the same path on every node) and becomes one
    shard, written here as it arrives. Paths must be readable from the workers.
    """
    chunks = _new_chunks(paths, out_dir, unit_size)
    results = run_units(_embed_unit, chunks.todo, workers=workers, executor=executor, ray_address=ray_address, shared=(spec,))
    return _append_shards(Path(out_dir), results, chunks.already_present)


@dataclass(frozen=True)
class _Chunks:
    todo: list[list[str]]
    already_present: int


def _new_chunks(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, size: int) -> _Chunks:
    """The paths not yet embedded in ``out_dir`` (duplicates dropped), in chunks of ``size``."""
    present = _embedded_paths(Path(out_dir))
    wanted = list(dict.fromkeys(os.fspath(p) for p in paths))
    todo = [p for p in wanted if p not in present]
    return _Chunks([todo[i : i + size] for i in range(0, len(todo), size)], len(wanted) - len(todo))


def _append_shards(out_dir: Path, results: Iterable[tuple], already_present: int) -> EmbeddingSummary:
    """Write each chunk's (kept paths, vectors, rejections) as the next shard."""
    summary = EmbeddingSummary(embedded=0, already_present=already_present)
    number = _next_shard_number(out_dir)
    for kept, vectors, rejections in results:
        summary.rejections += rejections
        if kept:
            summary.shards.append(_write_shard(out_dir, number, kept, vectors))
            summary.embedded += len(kept)
            number += 1
    return summary


@functools.lru_cache(maxsize=1)
def _worker_clip(model_name: str, pretrained: str | None) -> tuple[torch.nn.Module, Callable]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the driver already warned about random weights
        return load_clip(model_name, pretrained)


def _embed_unit(chunk: list[str], spec: ClipSpec) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
    model, preprocess = _worker_clip(spec.model_name, spec.pretrained)
    return _embed_chunk(chunk, model, preprocess, spec.batch_size, 0, spec.min_side)


class _ImageFiles(Dataset):
    """Decoded, preprocessed images; a file that cannot be used yields its rejection instead."""

    def __init__(self, paths: list[str], preprocess: Callable, min_side: int):
        self.paths, self.preprocess, self.min_side = paths, preprocess, min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, dict[str, str] | None]:
        path = self.paths[i]
        try:
            image = read_image(path)
        except ImageReadError as e:
            return path, None, {"path": path, "reason": "unreadable", "detail": str(e)}
        if min(image.size) < self.min_side:
            detail = f"{image.width}x{image.height}, shorter side below {self.min_side} pixels"
            return path, None, {"path": path, "reason": "too_small", "detail": detail}
        return path, self.preprocess(image), None


def _collate(items: list[tuple]) -> tuple[list[str], torch.Tensor | None, list[dict[str, str]]]:
    kept = [(path, pixels) for path, pixels, _ in items if pixels is not None]
    rejections = [rejection for _, _, rejection in items if rejection is not None]
    pixels = torch.stack([p for _, p in kept]) if kept else None
    return [path for path, _ in kept], pixels, rejections


@torch.inference_mode()
def _embed_chunk(
    paths: list[str], model: torch.nn.Module, preprocess: Callable, batch_size: int, num_workers: int, min_side: int
) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
    """One shard's worth of paths → (kept paths, unit float32 vectors, rejections), in input order."""
    loader = DataLoader(
        _ImageFiles(paths, preprocess, min_side),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available(),
    )
    device = next(model.parameters()).device
    weights = model.visual.conv1.weight.dtype if hasattr(model.visual, "conv1") else next(model.parameters()).dtype
    low_precision = weights if weights in (torch.float16, torch.bfloat16) else None
    kept, vectors, rejections = [], [], []
    for batch_paths, pixels, batch_rejections in loader:
        rejections += batch_rejections
        if pixels is None:
            continue
        # The model's low precision (fp16 on CUDA, bf16 on CPU; see default_precision) for every op;
        # autocast keeps LayerNorm and softmax in float32 where that matters.
        with torch.autocast(device.type, dtype=low_precision, enabled=low_precision is not None):
            features = model.encode_image(pixels.to(device, non_blocking=True))
        vectors.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
        kept += batch_paths
    return kept, (np.concatenate(vectors) if vectors else np.empty((0, 0), np.float32)), rejections


def _write_shard(out_dir: Path, number: int, paths: list[str], vectors: np.ndarray) -> Path:
    """Vectors first, then metadata: metadata on disk means the shard is whole."""
    buffer = io.BytesIO()
    np.save(buffer, vectors.astype(np.float32, copy=False))
    atomic_write_bytes(out_dir / "img_emb" / f"img_emb_{number}.npy", buffer.getvalue())
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image_path": pa.array(paths, pa.string())}), buffer)
    return atomic_write_bytes(out_dir / "metadata" / f"metadata_{number}.parquet", buffer.getvalue())


def _metadata_files(emb_dir: Path) -> dict[int, Path]:
    """Metadata shards by number (clip-retrieval may zero-pad the number; both read the same)."""
    files = {}
    for path in (emb_dir / "metadata").glob("metadata_*.parquet"):
        match = _SHARD_NUMBER.search(path.stem)
        if match:
            files[int(match.group(1))] = path
    return dict(sorted(files.items()))


def _next_shard_number(out_dir: Path) -> int:
    return max(_metadata_files(out_dir), default=-1) + 1


def _embedded_paths(out_dir: Path) -> set[str]:
    return {
        path
        for metadata in _metadata_files(out_dir).values()
        for path in _read_image_paths(metadata)
    }


def _read_image_paths(metadata: Path) -> list[str]:
    try:
        table = pq.read_table(metadata, columns=["image_path"])
    except (KeyError, pa.ArrowInvalid) as e:
        raise ValueError(f"{metadata}: not a clip-retrieval metadata shard with an image_path column ({e})") from e
    return table.column("image_path").to_pylist()


@dataclass(frozen=True)
class EmbeddingShard:
    """One shard's image paths and its vectors file (row i is image i), checked but not read."""

    paths: list[str]
    vectors_file: Path

    def vectors(self) -> np.ndarray:
        """The vectors memory-mapped in their stored dtype (float32, or clip-retrieval's float16):
        only the rows indexed are read from disk."""
        return np.load(self.vectors_file, mmap_mode="r")


def open_embedding_shards(emb_dir: str | os.PathLike) -> Iterator[EmbeddingShard]:
    """Every shard in shard order with its vectors left on disk, so a caller can keep them all at
    hand and read rows in any order, one memory map open at a time.

    Reads our output and clip-retrieval's. Raises ValueError when a shard's vector count differs
    from its metadata rows, or dimensions differ between shards, and FileNotFoundError when
    there is no shard or a shard lacks its vectors.
    """
    emb_dir = Path(emb_dir)
    metadata_files = _metadata_files(emb_dir)
    if not metadata_files:
        raise FileNotFoundError(
            f"{emb_dir}: no embeddings (expected metadata/metadata_N.parquet and img_emb/img_emb_N.npy)"
        )
    vector_files = {
        int(m.group(1)): path
        for path in (emb_dir / "img_emb").glob("img_emb_*.npy")
        if (m := _SHARD_NUMBER.search(path.stem))
    }
    dim = None
    for number, metadata in metadata_files.items():
        if number not in vector_files:
            raise FileNotFoundError(f"{metadata}: its vectors img_emb/img_emb_{number}.npy are missing")
        shard = EmbeddingShard(_read_image_paths(metadata), vector_files[number])
        shape = shard.vectors().shape
        if len(shape) != 2 or shape[0] != len(shard.paths):
            raise ValueError(
                f"{vector_files[number]}: shape {shape} does not match {metadata}, "
                f"which names {len(shard.paths)} images (row i of the vectors must be image i)"
            )
        if dim is not None and shape[1] != dim:
            raise ValueError(f"{vector_files[number]}: {shape[1]}-dimensional vectors, but earlier shards have {dim}")
        dim = shape[1]
        yield shard


def iter_embedding_shards(emb_dir: str | os.PathLike) -> Iterator[tuple[list[str], np.ndarray]]:
    """(image paths, float32 [rows, D] vectors) per shard, in shard order: index building reads
    a pool of any size this way, one shard in memory at a time. Raises as `open_embedding_shards`.
    """
    for shard in open_embedding_shards(emb_dir):
        yield shard.paths, np.asarray(shard.vectors(), dtype=np.float32)


def read_embeddings(emb_dir: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """All shards at once: image paths and their float32 [N, D] vectors (row i ↔ path i).

    Holds every vector in memory; for pools too large for that, use `iter_embedding_shards`.
    """
    paths, vectors = [], []
    for shard_paths, shard_vectors in iter_embedding_shards(emb_dir):
        paths += shard_paths
        vectors.append(shard_vectors)
    return paths, np.concatenate(vectors)

"""Unpaired RL pairs (paper §3.5): each graded reference meets a related but different source photo.

Flow: image pools → CLIP embeddings (clip-retrieval layout, incremental, or given with
``embeddings``) → image descriptions (size, hashes, colour) → a FAISS inner-product index over
the sources with its recall measured against exact search → for each reference the k nearest
sources, filtered by `pairing.pair_references` (related, not a duplicate, not by the same
author, a different grade) → representative test split by clustering the paired references'
embeddings → Parquet shards, card, ``rejections.jsonl``.

Besides the index, no copy of the pool's vectors is held: they stay in their memory-mapped
shards (`ShardedVectors`) and are read `CHUNK_ROWS` at a time, in pool order whatever the
shard layout, so the result does not depend on how the embeddings were sharded. Sources
stream into the index (twice for a trained index, to sample and to add), references stream
through the search and leave only their ``[references, k]`` neighbours; the recall sample
(`RECALL_QUERIES` references) and the paired references' vectors, which the test split
clusters, are the only vectors read whole.

A killed run resumes: the embeddings and the image descriptions, the two expensive stages,
are committed part by part (under ``out/.work/``, never in a user's ``embeddings`` folder)
and reused on the next run, descriptions as long as a file's size and modification time
are unchanged; everything after them is deterministic.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import datasets
import faiss
import numpy as np
from tqdm import tqdm

from seminft_bench.fileio import atomic_write_text
from seminft_bench.imaging import IMAGE_SUFFIXES, encode_png, image_grid, read_image
from seminft_bench.pipelines.embeddings import (
    ClipSpec,
    embed_images,
    embed_images_distributed,
    load_clip,
    open_embedding_shards,
)
from seminft_bench.pipelines.export import counter_table, histogram_chart, write_card, write_split
from seminft_bench.pipelines.pairing import ImageInfo, PairingRules, describe_images, pair_references
from seminft_bench.pipelines.quadruplets import TASK_PROMPT
from seminft_bench.pipelines.retrieval import build_index, exact_search, search, tune_recall
from seminft_bench.pipelines.splits import representative_split

RECALL_QUERIES = 500  # references used to measure the index's recall@k against exact search
CHUNK_ROWS = 16_384
"""Most vectors read at once (48 MB of 768-d floats), for the index as for the searches."""

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "source": datasets.Image(),
        "reference": datasets.Image(),
        "prompt": datasets.Value("string"),
        "source_path": datasets.Value("string"),
        "reference_path": datasets.Value("string"),
        "clip_similarity": datasets.Value("float32"),
        "color_distance": datasets.Value("float32"),
    }
)


@dataclass(frozen=True)
class RLConfig:
    """Everything that decides the RL set's content."""

    images: str
    out: str
    references: str | None = None
    embeddings: str | None = None
    clip_model: str = "ViT-B-32"
    clip_pretrained: str | None = "laion2b_s34b_b79k"
    num_pairs: int | None = None
    sim_min: float = PairingRules.sim_min
    sim_max: float = PairingRules.sim_max
    min_color_distance: float = PairingRules.min_color_distance
    max_source_reuse: int = PairingRules.max_source_reuse
    min_side: int = PairingRules.min_side
    neighbours: int = 32
    eval_count: int = 150
    seed: int = 0
    license: str = "other"

    def rules(self) -> PairingRules:
        return PairingRules(
            sim_min=self.sim_min, sim_max=self.sim_max, min_color_distance=self.min_color_distance,
            max_source_reuse=self.max_source_reuse, min_side=self.min_side,
        )


@dataclass(frozen=True)
class Pool:
    """Images of one pool: paths as stored (relative to ``root``) and their authors where known."""

    root: Path
    paths: list[str]
    authors: dict[str, str]


@dataclass(frozen=True)
class RLSummary:
    out: Path
    counts: dict[str, int]
    rejections: Counter
    index: str
    recall: float


def build_rl(config: RLConfig, workers: int = 1, executor: str = "local", ray_address: str | None = None) -> RLSummary:
    """Build the RL pair dataset described by ``config`` in ``config.out``.

    ``workers`` decode images; with ``executor="ray"`` the embedding runs as Ray tasks
    (``ray_address``, or a local Ray with ``workers`` CPUs), each loading the model itself.
    """
    out = Path(config.out)
    sources = list_pool(Path(config.images))
    references = list_pool(Path(config.references)) if config.references else sources
    rejections: list[dict] = []

    vectors = _embeddings(config, sources, references, out, workers, executor, ray_address, rejections)
    source_infos = _describe(sources, vectors, workers, out, rejections)
    reference_infos = source_infos if references is sources else _describe(references, vectors, workers, out, rejections)
    if not source_infos or not reference_infos:
        raise ValueError(f"no usable images left in {config.images} (see the reasons: {Counter(r['reason'] for r in rejections)})")

    source_rows, reference_rows = vectors.locate(sources, source_infos), vectors.locate(references, reference_infos)
    source_chunks = partial(vectors.chunks, source_rows)  # each call is a fresh pass over the sources
    index = build_index(source_chunks, len(source_rows), vectors.dim, seed=config.seed)
    queries = vectors.read(reference_rows[:RECALL_QUERIES])
    k = min(config.neighbours, len(source_rows))
    tuning = tune_recall(index, queries, exact_search(source_chunks, queries, k)[1], k=min(10, k))
    similarities, neighbours = _search_chunks(index, vectors, reference_rows, k)

    order = _seeded_order([info.path for info in reference_infos], config.seed)
    pairs, unpaired = pair_references(
        [reference_infos[i] for i in order], source_infos, neighbours[order], similarities[order], config.rules()
    )
    rejections += unpaired
    pairs = pairs[: config.num_pairs] if config.num_pairs else pairs
    if not pairs:
        raise ValueError("no reference found an acceptable source; loosen --sim-min/--sim-max/--min-color-distance")

    pair_vectors = vectors.read(reference_rows[order[[p.reference for p in pairs]]])
    test = set(representative_split(pair_vectors, config.eval_count, config.seed).tolist())
    ordered_references = [reference_infos[i] for i in order]
    rows = [_row(p, ordered_references, source_infos, config.seed) for p in pairs]
    splits = {"train": [r for i, r in enumerate(rows) if i not in test], "test": [r for i, r in enumerate(rows) if i in test]}
    for split, split_rows in splits.items():
        write_split(out, split, _encoded(split_rows, references, sources), FEATURES)
    atomic_write_text(out / "rejections.jsonl", "".join(json.dumps(r) + "\n" for r in rejections))

    counts = {name: len(split_rows) for name, split_rows in splits.items()}
    summary = RLSummary(out, counts, Counter(r["reason"] for r in rejections), type(index).__name__, tuning.recall)
    _write_card(out, config, rows, summary, tuning, references, sources)
    return summary


# --------------------------------------------------------------------------- pools


def list_pool(spec: Path) -> Pool:
    """A folder of images (searched recursively) or a CSV/Parquet listing with a ``path`` column
    (optional ``author``, ``site``, ``license``, ``caption``; paths relative to the listing's folder)."""
    if spec.is_dir():
        paths = sorted(p.relative_to(spec).as_posix() for p in spec.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {spec}")
        return Pool(spec, paths, {})
    if spec.suffix.lower() in (".csv", ".parquet"):
        records = _listing_records(spec)
        if not records or "path" not in records[0]:
            raise ValueError(f"{spec} needs a 'path' column and at least one row")
        authors = {r["path"]: r["author"] for r in records if r.get("author")}
        return Pool(spec.parent, sorted({r["path"] for r in records}), authors)
    raise ValueError(f"{spec} is neither a folder of images nor a .csv/.parquet listing")


def _listing_records(spec: Path) -> list[dict]:
    if spec.suffix.lower() == ".csv":
        with spec.open(newline="") as f:
            return list(csv.DictReader(f))
    import pyarrow.parquet as pq

    return pq.read_table(spec).to_pylist()


def _full_path(pool: Pool, path: str) -> str:
    return str(pool.root / path)


# --------------------------------------------------------------------------- stages


class ShardedVectors:
    """The embedded images' unit vectors, left in their shards on disk and read by row on demand.

    Only the rows asked for are read, in the order asked for, with one shard's memory map open
    at a time (a pool embedded on Ray may have thousands of shards, more than open files allow).
    """

    def __init__(self, emb_dir: Path):
        self.files: list[Path] = []
        self.rows: dict[str, int] = {}  # image path → row over all shards; a path in two shards keeps its last
        starts = [0]
        for shard in open_embedding_shards(emb_dir):
            self.rows.update(zip(shard.paths, range(starts[-1], starts[-1] + len(shard.paths))))
            self.files.append(shard.vectors_file)
            starts.append(starts[-1] + len(shard.paths))
        self.starts = np.array(starts)
        self.dim = np.load(self.files[0], mmap_mode="r").shape[1]

    def __contains__(self, path: str) -> bool:
        return path in self.rows

    def locate(self, pool: Pool, infos: Sequence[ImageInfo]) -> np.ndarray:
        """The rows of the described images, in their order."""
        return np.array([self.rows[_full_path(pool, info.path)] for info in infos], dtype=np.int64)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float32 ``[len(rows), dim]``: the vectors of ``rows``, in that order."""
        out = np.empty((len(rows), self.dim), np.float32)
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        for shard in np.unique(shard_of):
            picked = shard_of == shard
            out[picked] = np.load(self.files[shard], mmap_mode="r")[rows[picked] - self.starts[shard]]
        return out

    def chunks(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        """`read` in chunks of at most `CHUNK_ROWS`, all about the same size: faiss computes small
        batches without BLAS, which rounds differently, so no chunk is left tiny."""
        for part in np.array_split(rows, max(1, -(-len(rows) // CHUNK_ROWS))):
            yield self.read(part)


def _embeddings(
    config: RLConfig,
    sources: Pool,
    references: Pool,
    out: Path,
    workers: int,
    executor: str,
    ray_address: str | None,
    rejections: list[dict],
) -> ShardedVectors:
    """The pools' vectors; computed incrementally under ``out/.work/embeddings`` unless given."""
    if config.embeddings:
        return ShardedVectors(Path(config.embeddings))
    emb_dir = out / ".work" / "embeddings"
    wanted = sorted({_full_path(p, path) for p in (sources, references) for path in p.paths})
    if executor == "ray":
        load_clip(config.clip_model, config.clip_pretrained)  # missing weights fail here, not in a task
        spec = ClipSpec(config.clip_model, config.clip_pretrained)
        summary = embed_images_distributed(wanted, emb_dir, spec, workers=workers, ray_address=ray_address)
    else:
        model, preprocess = load_clip(config.clip_model, config.clip_pretrained)
        summary = embed_images(wanted, emb_dir, model, preprocess, num_workers=max(workers, 1))
    rejections += summary.rejections
    return ShardedVectors(emb_dir)


def _describe(pool: Pool, vectors: ShardedVectors, workers: int, out: Path, rejections: list[dict]) -> list[ImageInfo]:
    """Image facts (size, hash, colour) of the pool's embedded images, cached under ``out/.work/descriptions``."""
    embedded = [path for path in pool.paths if _full_path(pool, path) in vectors]
    cache = out / ".work" / "descriptions"
    infos, unreadable = describe_images(embedded, root=pool.root, authors=pool.authors, workers=workers, cache_dir=cache)
    rejections += unreadable
    return infos


def _search_chunks(index: faiss.Index, vectors: ShardedVectors, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`search` for each of ``rows``, chunk by chunk: cosine similarities and neighbour ids, ``[len(rows), k]``."""
    similarities, neighbours = np.empty((len(rows), k), np.float32), np.empty((len(rows), k), np.int64)
    start = 0
    for queries in vectors.chunks(rows):
        similarities[start : start + len(queries)], neighbours[start : start + len(queries)] = search(index, queries, k)
        start += len(queries)
    return similarities, neighbours


def _seeded_order(paths: list[str], seed: int) -> np.ndarray:
    """References are visited in a seeded order, so a reused source is not always given to the same names."""
    keys = [hashlib.sha256(f"{seed}|{p}".encode()).hexdigest() for p in paths]
    return np.array(sorted(range(len(paths)), key=lambda i: keys[i]), dtype=int)


def _row(pair, reference_infos: list, source_infos: list, seed: int) -> dict:
    reference, source = reference_infos[pair.reference].path, source_infos[pair.source].path
    return {
        "id": hashlib.sha256(f"{reference}|{source}|{seed}".encode()).hexdigest()[:16],
        "reference_path": reference,
        "source_path": source,
        "clip_similarity": float(pair.clip_similarity),
        "color_distance": float(pair.color_distance),
    }


def _encoded(rows: list[dict], references: Pool, sources: Pool) -> Iterator[dict]:
    """Rows with their images read once more and stored as lossless RGB PNG."""
    for row in tqdm(rows, desc="writing", unit="pair"):
        yield {
            **row,
            "source": {"bytes": encode_png(read_image(_full_path(sources, row["source_path"])), 1), "path": None},
            "reference": {"bytes": encode_png(read_image(_full_path(references, row["reference_path"])), 1), "path": None},
            "prompt": TASK_PROMPT,
        }


def _write_card(out: Path, config: RLConfig, rows: list[dict], summary: RLSummary, tuning, references: Pool, sources: Pool) -> None:
    charts = {
        "similarity.png": histogram_chart([r["clip_similarity"] for r in rows], title="CLIP cosine of the pairs"),
        "color_distance.png": histogram_chart([r["color_distance"] for r in rows], title="colour distance of the pairs"),
    }
    for name, chart in charts.items():
        chart.save(out / name)
    cells, labels = [], []
    for row in rows[:6]:
        cells += [_full_path(references, row["reference_path"]), _full_path(sources, row["source_path"])]
        labels += ["reference", f"source · cos {row['clip_similarity']:.2f}"]
    preview = image_grid([read_image(c) for c in cells], labels=labels, ncols=2, cell_size=(256, 192)) if cells else None
    knob = f"{tuning.parameter}={tuning.value}" if tuning.parameter else "exact search"
    write_card(
        out,
        title="SemiNFT RL pairs",
        summary=(
            f"Unpaired (source, reference, prompt) triplets from `{Path(config.images).name}` built with "
            f"`seminft-data build-rl` (paper §3.5): each reference is paired with a CLIP-retrieved source "
            f"(cosine in [{config.sim_min}, {config.sim_max}], colour distance ≥ {config.min_color_distance}). "
            f"CLIP {config.clip_model} ({config.clip_pretrained or 'random weights: pairs are not semantic'}); "
            f"FAISS {summary.index}, {knob}, recall@10 {summary.recall:.3f} against exact search."
        ),
        sections={
            "Similarity and colour distance": "![similarity](similarity.png)\n\n![colour distance](color_distance.png)",
            "Rejections": counter_table(summary.rejections, "reason"),
        },
        license=config.license,
        preview=preview,
        tags=("preset-transfer", "color-grading", "seminft"),
    )


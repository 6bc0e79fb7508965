"""Unpaired RL pairs (paper §3.5): each graded reference meets a related but different source photo.

Flow: image pools → CLIP embeddings (clip-retrieval layout, incremental, or
given with ``embeddings``) → a FAISS inner-product index over the sources with
its recall measured against exact search → for each reference the k nearest
sources, filtered by `pairing.pair_references` (related, not a duplicate, not
by the same author, a different grade) → representative test split by
clustering the reference embeddings → Parquet shards, card, ``rejections.jsonl``.

A killed run resumes: the embeddings, the only expensive stage, are committed
shard by shard and never recomputed; everything after them is deterministic.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from tqdm import tqdm

from seminft_bench.fileio import atomic_write_text
from seminft_bench.imaging import encode_png, image_grid, read_image
from seminft_bench.pipelines.embeddings import ClipSpec, embed_images, embed_images_distributed, load_clip, read_embeddings
from seminft_bench.pipelines.export import counter_table, histogram_chart, write_card, write_split
from seminft_bench.pipelines.pairing import PairingRules, describe_images, pair_references
from seminft_bench.pipelines.quadruplets import TASK_PROMPT
from seminft_bench.pipelines.retrieval import build_index, exact_search, search, tune_recall
from seminft_bench.pipelines.splits import representative_split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
RECALL_QUERIES = 500  # references used to measure the index's recall@k against exact search

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
    source_infos, source_vectors = _describe(sources, vectors, workers, config, rejections)
    if references is sources:
        reference_infos, reference_vectors = source_infos, source_vectors
    else:
        reference_infos, reference_vectors = _describe(references, vectors, workers, config, rejections)
    if not source_infos or not reference_infos:
        raise ValueError(f"no usable images left in {config.images} (see the reasons: {Counter(r['reason'] for r in rejections)})")

    index = build_index([source_vectors], len(source_vectors), source_vectors.shape[1], seed=config.seed)
    queries = reference_vectors[: min(RECALL_QUERIES, len(reference_vectors))]
    k = min(config.neighbours, len(source_vectors))
    tuning = tune_recall(index, queries, exact_search([source_vectors], queries, k)[1], k=min(10, k))
    similarities, neighbours = search(index, reference_vectors, k)

    order = _seeded_order([info.path for info in reference_infos], config.seed)
    pairs, unpaired = pair_references(
        [reference_infos[i] for i in order], source_infos, neighbours[order], similarities[order], config.rules()
    )
    rejections += unpaired
    pairs = pairs[: config.num_pairs] if config.num_pairs else pairs
    if not pairs:
        raise ValueError("no reference found an acceptable source; loosen --sim-min/--sim-max/--min-color-distance")

    pair_vectors = np.stack([reference_vectors[order[p.reference]] for p in pairs])
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


def _embeddings(
    config: RLConfig,
    sources: Pool,
    references: Pool,
    out: Path,
    workers: int,
    executor: str,
    ray_address: str | None,
    rejections: list[dict],
) -> dict[str, np.ndarray]:
    """{full path: unit vector}; computed incrementally under ``out/.work/embeddings`` unless given."""
    if config.embeddings:
        emb_dir = Path(config.embeddings)
    else:
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
    paths, vectors = read_embeddings(emb_dir)
    return dict(zip(paths, vectors))


def _describe(
    pool: Pool, vectors: dict[str, np.ndarray], workers: int, config: RLConfig, rejections: list[dict]
) -> tuple[list, np.ndarray]:
    """Image facts (size, hash, colour) of the pool's embedded images, and their vectors in the same order."""
    embedded = [path for path in pool.paths if _full_path(pool, path) in vectors]
    infos, unreadable = describe_images(embedded, root=pool.root, authors=pool.authors, workers=workers)
    rejections += unreadable
    stacked = np.stack([vectors[_full_path(pool, info.path)] for info in infos]) if infos else np.zeros((0, 1), np.float32)
    return infos, np.ascontiguousarray(stacked, dtype=np.float32)


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


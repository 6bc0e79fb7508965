"""FAISS nearest-neighbour retrieval over L2-normalised embeddings (inner product = cosine).

The pool may hold millions of CLIP embeddings, stored in shards on disk, so the index is
built from a stream of shards: one pass draws a deterministic sample to train on, a
second adds the shards one by one, and no more than a shard plus the index itself is ever
in memory. The index type follows the pool size and a memory budget the way autofaiss
chooses it (`choose_index`), and its search-time knob (``nprobe`` for IVF, ``efSearch``
for HNSW) is raised until recall@k against exact search on a sample reaches a target
(`tune_recall`), so an approximate index is only as approximate as the report says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import faiss
import numpy as np

Shards = Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]]

EXACT_MAX_VECTORS = 10_000  # below this a flat scan is as fast as any index and exact
IVF_FLAT_MAX_VECTORS = 1_000_000  # beyond this autofaiss quantises even when memory allows
MAX_PQ_BYTES = 64  # PQ is the fallback when memory is short: at most 64 bytes per code
TRAIN_POINTS_PER_LIST = 40  # faiss's k-means warns below 39 points per centroid
PQ_TRAIN_POINTS = 64 * 256  # each sub-quantizer has 256 centroids
ID_BYTES = 8  # inverted lists store an int64 id per vector
MAX_EF_SEARCH = 4096
UNIT_NORM_TOLERANCE = 1e-3


def choose_index(num_vectors: int, dim: int, memory_budget_bytes: int | None = None) -> str:
    """Return a faiss index factory string for `num_vectors` unit vectors of `dim` floats.

    Rules (autofaiss's, simplified):

    - fewer than 10k vectors: ``Flat``, exact search; nothing is faster at that size.
    - up to 1M vectors whose flat codes (``4·dim + 8`` bytes each, plus the centroids) fit
      `memory_budget_bytes` (no budget: always): ``IVF{nlist},Flat``. IVF rather than HNSW
      because k-means training and list assignment give the same index whatever the thread
      count, while HNSW's graph depends on the order threads insert vectors, and IVF builds
      over a million 768-d vectors in about 3 minutes on two cores.
    - otherwise ``IVF{nlist},PQ{m}x8``: product quantisation to `m` bytes per vector, `m`
      the largest ``m <= 64`` that divides `dim` and whose codes fit the budget.

    ``nlist`` is the power of two nearest 4·√N (the faiss wiki advises 4·√N to 16·√N
    lists; autofaiss rounds the same way). Raises ValueError when no PQ code fits.
    """
    if num_vectors < 1 or dim < 1:
        raise ValueError(f"need at least one vector of at least one dimension, got {num_vectors} x {dim}")
    if num_vectors < EXACT_MAX_VECTORS:
        return "Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(num_vectors)))
    budget = math.inf if memory_budget_bytes is None else memory_budget_bytes
    centroid_bytes = nlist * dim * 4
    codebook_bytes = 256 * dim * 4  # PQ: 256 centroids per sub-quantizer, dim floats in all
    if num_vectors <= IVF_FLAT_MAX_VECTORS and num_vectors * (4 * dim + ID_BYTES) + centroid_bytes <= budget:
        return f"IVF{nlist},Flat"
    for m in range(MAX_PQ_BYTES, 0, -1):
        if dim % m == 0 and num_vectors * (m + ID_BYTES) + centroid_bytes + codebook_bytes <= budget:
            return f"IVF{nlist},PQ{m}x8"
    smallest = num_vectors * (1 + ID_BYTES) + centroid_bytes + codebook_bytes
    raise ValueError(
        f"no index for {num_vectors} vectors of {dim} floats fits in {memory_budget_bytes} bytes "
        f"(the smallest, with 1-byte PQ codes, needs about {smallest} bytes)"
    )


def build_index(
    shards: Shards,
    num_vectors: int,
    dim: int,
    factory: str | None = None,
    train_size: int | None = None,
    seed: int = 0,
) -> faiss.Index:
    """Build an inner-product index over the float32 ``[n, dim]`` unit-vector shards.

    `shards` is a re-iterable collection of arrays or a callable returning a fresh
    iterable, since a trained index reads them twice: once to gather a training sample of
    `train_size` rows (default: 40 per IVF list, at least 16k for PQ) drawn uniformly by
    `seed`, once to add them. `factory` defaults to ``choose_index(num_vectors, dim)``.
    The same shards and seed give the same index whatever the shard sizes or thread count.
    The search-time knob is left at faiss's default; see `tune_recall`.
    """
    index = faiss.index_factory(dim, factory or choose_index(num_vectors, dim), faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        if not callable(shards) and iter(shards) is shards:
            raise TypeError("a trained index reads the shards twice: pass a list or a callable, not an iterator")
        sample = sample_vectors(shards, num_vectors, train_size or default_train_size(index, num_vectors), seed)
        prepare_training(index, seed)
        index.train(sample)
        del sample
    added = 0
    for shard in open_shards(shards):
        index.add(checked(shard, dim))
        added += len(shard)
    if added != num_vectors:
        raise ValueError(f"the shards hold {added} vectors, not the {num_vectors} announced")
    return index


def default_train_size(index: faiss.Index, num_vectors: int) -> int:
    ivf = inverted_file(index)
    needed = TRAIN_POINTS_PER_LIST * ivf.nlist
    if isinstance(ivf, faiss.IndexIVFPQ):
        needed = max(needed, PQ_TRAIN_POINTS)
    return min(needed, num_vectors)


def prepare_training(index: faiss.Index, seed: int) -> None:
    """Fix the k-means seeds (faiss defaults to 1234 for all), so `seed` selects the index.

    Also skips PQ's polysemous training, which the factory turns on: it only serves Hamming
    pre-filtering at search time, which we do not use, and takes minutes.
    """
    ivf = inverted_file(index)
    ivf.cp.seed = seed
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.pq.cp.seed = seed
        ivf.do_polysemous_training = False


def inverted_file(index: faiss.Index) -> faiss.IndexIVF:
    """The IVF part of `index` as its concrete class (``IndexIVFPQ``...), to reach its quantizers."""
    return faiss.downcast_index(faiss.extract_index_ivf(index))


def sample_vectors(shards: Shards, num_vectors: int, count: int, seed: int = 0) -> np.ndarray:
    """Return `count` rows drawn uniformly without replacement by `seed`, in stream order.

    The row numbers are drawn up front from `num_vectors`, so one pass keeps only the
    sample in memory and the draw does not depend on how the rows are split into shards.
    """
    rows = np.sort(np.random.default_rng(seed).choice(num_vectors, size=min(count, num_vectors), replace=False))
    picked, start = [], 0
    for shard in open_shards(shards):
        stop = start + len(shard)
        lo, hi = np.searchsorted(rows, [start, stop])
        picked.append(np.asarray(shard, dtype=np.float32)[rows[lo:hi] - start])
        start = stop
    if start != num_vectors:
        raise ValueError(f"the shards hold {start} vectors, not the {num_vectors} announced")
    return np.ascontiguousarray(np.concatenate(picked))


def exact_search(shards: Shards, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`k` inner products over all shards, one shard in memory at a time."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    offset = 0
    for shard in open_shards(shards):
        shard = np.ascontiguousarray(shard, dtype=np.float32)
        similarities, ids = faiss.knn(queries, shard, min(k, len(shard)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(similarities, ids + offset)
        offset += len(shard)
    heap.finalize()
    return heap.D, heap.I


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return cosine similarities ``[q, k]`` (best first) and the row ids of the neighbours."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def measure_recall(index: faiss.Index, queries: np.ndarray, exact_ids: np.ndarray, k: int = 10) -> float:
    """Recall@k: the mean share of each query's exact top-`k` that the index also returns."""
    _, found = search(index, queries, k)
    hits = sum(len(np.intersect1d(row, truth[:k])) for row, truth in zip(found, exact_ids))
    return hits / (len(queries) * k)


@dataclass(frozen=True)
class RecallTuning:
    """The search-time parameter `tune_recall` set (None for an exact index) and its recall."""

    parameter: str | None
    value: int | None
    recall: float


def tune_recall(
    index: faiss.Index, queries: np.ndarray, exact_ids: np.ndarray, k: int = 10, target: float = 0.95
) -> RecallTuning:
    """Set the smallest ``nprobe`` (IVF) or ``efSearch`` (HNSW) whose recall@k reaches `target`.

    Doubles the value from its cheapest setting until the target is met, then bisects
    between the last two, since search time grows about linearly with it. When even the
    largest value (all lists, or efSearch 4096) misses the target, that value is kept and
    the returned recall says so. `exact_ids` are the queries' exact neighbours
    (`exact_search`), ideally for queries that resemble real ones.
    """
    knob = search_knob(index, k)
    if knob is None:
        return RecallTuning(None, None, measure_recall(index, queries, exact_ids, k))
    name, low, high = knob

    def recall_at(value: int) -> float:
        faiss.ParameterSpace().set_index_parameter(index, name, value)
        return measure_recall(index, queries, exact_ids, k)

    value, recall = low, recall_at(low)
    while recall < target and value < high:
        value = min(2 * value, high)
        recall = recall_at(value)
    if recall >= target:
        failing, passing, passing_recall = max(low, value // 2), value, recall
        while passing - failing > 1:
            middle = (failing + passing) // 2
            middle_recall = recall_at(middle)
            if middle_recall >= target:
                passing, passing_recall = middle, middle_recall
            else:
                failing = middle
        value, recall = passing, passing_recall
    faiss.ParameterSpace().set_index_parameter(index, name, value)
    return RecallTuning(name, value, recall)


def search_knob(index: faiss.Index, k: int) -> tuple[str, int, int] | None:
    """The speed/recall parameter of `index` with its cheapest and most exhaustive values."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return "nprobe", 1, ivf.nlist
    if isinstance(index, faiss.IndexHNSW):
        return "efSearch", k, MAX_EF_SEARCH
    return None


def open_shards(shards: Shards) -> Iterable[np.ndarray]:
    return shards() if callable(shards) else shards


def checked(shard: np.ndarray, dim: int) -> np.ndarray:
    """The shard as contiguous float32, after checking its width and that rows are unit length."""
    shard = np.ascontiguousarray(shard, dtype=np.float32)
    if shard.ndim != 2 or shard.shape[1] != dim:
        raise ValueError(f"expected shards of shape [n, {dim}], got {shard.shape}")
    norms = np.einsum("ij,ij->i", shard, shard)
    if len(shard) and np.abs(norms - 1).max() > UNIT_NORM_TOLERANCE:
        raise ValueError("embeddings must be L2-normalised: inner product is only cosine on unit vectors")
    return shard

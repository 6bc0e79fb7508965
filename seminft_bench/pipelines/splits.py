"""Representative evaluation splits: cluster the samples, keep the one nearest each centre.

The paper holds out 50 cold-start and 150 RL pairs "carefully selected" to be
representative (§3.5). A random draw of that size misses small groups of looks; k-means
with one cluster per held-out sample covers the feature space instead. Features are
whatever describes a sample: `seminft_bench.colorstats.colour_features` for its grade, CLIP
embeddings, or both concatenated.

The k-means here is a few lines of numpy in float64 rather than faiss, so one seed gives one
split whatever the thread count: OpenBLAS shares a matrix product between threads by blocks
of the output, never within one dot product (the tests compare 1 and 2 threads).
"""

from __future__ import annotations

import numpy as np

MAX_ITERATIONS = 50
RESTARTS = 4  # k-means++ starts; the best of a few avoids most poor local minima
FIT_POINTS_PER_CLUSTER = 256


def representative_split(features: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices (ascending) of ``count`` samples that represent ``features`` ``[N, D]``.

    k-means with ``count`` clusters (the lowest-inertia of `RESTARTS` k-means++ starts drawn
    from ``seed``, Lloyd iterations until the assignment is stable, fitted on at most
    `FIT_POINTS_PER_CLUSTER` points per cluster as faiss does), then per cluster the member
    nearest its centre, ties to the lower index. A cluster left empty (duplicate points)
    takes the nearest sample not yet chosen, so the result has exactly ``min(count, N)``
    distinct indices; ``count <= 0`` gives none.
    """
    points = np.asarray(features, dtype=np.float64)
    if count <= 0:
        return np.zeros(0, np.int64)
    if count >= len(points):
        return np.arange(len(points), dtype=np.int64)
    rng = np.random.default_rng(seed)
    fit = points
    if len(points) > FIT_POINTS_PER_CLUSTER * count:
        fit = points[np.sort(rng.choice(len(points), FIT_POINTS_PER_CLUSTER * count, replace=False))]
    centres, _ = min((_kmeans(fit, count, rng) for _ in range(RESTARTS)), key=lambda run: run[1])
    return _nearest_members(points, centres)


def _squared_distances(points: np.ndarray, centres: np.ndarray, point_norms: np.ndarray | None = None) -> np.ndarray:
    if point_norms is None:
        point_norms = np.einsum("nd,nd->n", points, points)
    centre_norms = np.einsum("kd,kd->k", centres, centres)
    return np.maximum(point_norms[:, None] - 2 * (points @ centres.T) + centre_norms[None, :], 0)


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Centres and their inertia (sum of squared distances from each point to its centre)."""
    norms = np.einsum("nd,nd->n", points, points)
    centres = _kmeans_plus_plus(points, norms, k, rng)
    labels = None
    for _ in range(MAX_ITERATIONS):
        new_labels = _squared_distances(points, centres, norms).argmin(1)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        order = np.argsort(labels, kind="stable")
        filled, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
        centres[filled] = np.add.reduceat(points[order], starts) / sizes[:, None]  # an empty cluster stays put
    return centres, float(_squared_distances(points, centres, norms).min(1).sum())


def _kmeans_plus_plus(points: np.ndarray, norms: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Arthur & Vassilvitskii's seeding: each next centre drawn with probability ∝ squared distance."""
    chosen = [int(rng.integers(len(points)))]
    nearest = _squared_distances(points, points[chosen], norms)[:, 0]
    for _ in range(k - 1):
        total = nearest.sum()
        pick = int(rng.choice(len(points), p=nearest / total)) if total > 0 else int(rng.integers(len(points)))
        chosen.append(pick)
        nearest = np.minimum(nearest, _squared_distances(points, points[[pick]], norms)[:, 0])
    return points[chosen].copy()


def _nearest_members(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    distances = _squared_distances(points, centres)
    labels = distances.argmin(1)
    taken = np.zeros(len(points), bool)
    for cluster in range(len(centres)):
        candidates = np.flatnonzero((labels == cluster) & ~taken)
        if candidates.size == 0:
            candidates = np.flatnonzero(~taken)
        taken[candidates[distances[candidates, cluster].argmin()]] = True  # argmin: first, i.e. lowest index
    return np.flatnonzero(taken).astype(np.int64)

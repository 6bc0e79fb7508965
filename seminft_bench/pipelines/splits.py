"""Representative evaluation splits: cluster the samples, keep the one nearest each centre.

The paper holds out 50 cold-start and 150 RL pairs "carefully selected" to be
representative (§3.5). A random draw of that size misses small groups of looks; k-means
with one cluster per held-out sample covers the feature space instead. Features are
whatever describes a sample: `colour_features` for its grade, CLIP embeddings, or both
concatenated.

The k-means here is a few lines of numpy in float64 rather than faiss, so one seed gives one
split whatever the thread count: OpenBLAS shares a matrix product between threads by blocks
of the output, never within one dot product (the tests compare 1 and 2 threads).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from seminft_bench.imaging import from_array

THUMBNAIL_SIDE = 64
L_BINS = 8
AB_BINS = 5  # odd, so neutral greys (a* = b* = 0) fill one central bin
AB_LIMIT = 50.0  # a*, b* beyond ±50 (rare outside saturated colours) land in the edge bins
MAX_ITERATIONS = 50
RESTARTS = 4  # k-means++ starts; the best of a few avoids most poor local minima
FIT_POINTS_PER_CLUSTER = 256


def colour_features(images: Iterable[np.ndarray]) -> np.ndarray:
    """Describe each image's grade as a float32 vector: ``[N, 39]`` (``[0, 39]`` for none).

    Computed in CIELAB on a thumbnail (long side `THUMBNAIL_SIDE`, so image size barely
    matters): the mean and standard deviation of L*, a*, b* divided by 100 (6 values), the
    square roots of an `L_BINS`-bin L* histogram (tone curve) and of an `AB_BINS`² joint
    a*b* histogram (colour casts and split toning). Square-rooted histograms have unit
    length and Euclidean distances between them are Hellinger distances, so each block
    lies within about unit length and none dominates. Each vector depends on its image
    only, so features computed in chunks can be concatenated.
    """
    vectors = [_grade_vector(image) for image in images]
    return np.stack(vectors) if vectors else np.zeros((0, 6 + L_BINS + AB_BINS**2), np.float32)


def _grade_vector(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    thumbnail = from_array(image)
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX)
    lab = rgb2lab(np.asarray(thumbnail)).reshape(-1, 3)
    tone, _ = np.histogram(lab[:, 0], bins=L_BINS, range=(0, 100))
    a, b = np.clip(lab[:, 1:], -AB_LIMIT, AB_LIMIT).T
    cast, _, _ = np.histogram2d(a, b, bins=AB_BINS, range=((-AB_LIMIT, AB_LIMIT), (-AB_LIMIT, AB_LIMIT)))
    parts = [lab.mean(0) / 100, lab.std(0) / 100, np.sqrt(tone / len(lab)), np.sqrt(cast.ravel() / len(lab))]
    return np.concatenate(parts).astype(np.float32)


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

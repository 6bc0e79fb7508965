"""Representative splits: colour features of a grade, and k-means picks that cover the data."""

import os
import subprocess
import sys

import numpy as np
import pytest
from skimage import data

from seminft_bench.colorstats import colour_features
from seminft_bench.pipelines.splits import representative_split


def _tinted(photo: np.ndarray, tint: tuple[float, float, float]) -> np.ndarray:
    return np.clip(photo.astype(np.float32) / 255 * np.asarray(tint, np.float32), 0, 1)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]


def _blobs(sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs of unequal sizes in 6-D; returns points and blob labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=50, size=(len(sizes), 6))
    points = np.concatenate([c + rng.normal(size=(n, 6)) for c, n in zip(centres, sizes)])
    return points, np.repeat(np.arange(len(sizes)), sizes)


def test_colour_features_shape_and_blocks(photos):
    features = colour_features(photos)
    assert features.shape == (5, 39) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features[:, 6:14], axis=1), 1, rtol=1e-5)  # sqrt L* histogram
    np.testing.assert_allclose(np.linalg.norm(features[:, 14:], axis=1), 1, rtol=1e-5)  # sqrt a*b* histogram
    assert colour_features([]).shape == (0, 39)


def test_colour_features_follow_the_grade_not_the_size(photos):
    photo = photos[0]
    warm, cool = _tinted(photo, (1.0, 0.9, 0.6)), _tinted(photo, (0.7, 0.9, 1.0))
    half = photo[::2, ::2]
    original, warm_f, cool_f, half_f = colour_features([photo, warm, cool, half])
    assert warm_f[2] > original[2] > cool_f[2]  # mean b*: yellow is positive, blue negative
    assert np.linalg.norm(half_f - original) < 0.1 * np.linalg.norm(warm_f - original)
    np.testing.assert_array_equal(colour_features([photo.astype(np.float32) / 255])[0], original)


def test_one_pick_per_blob_including_small_ones():
    points, blob = _blobs([200, 150, 100, 40, 10, 5])
    picks = representative_split(points, 6, seed=0)
    assert sorted(blob[picks]) == list(range(6))
    assert np.all(np.diff(picks) > 0)


def test_same_seed_same_split():
    points, _ = _blobs([60, 50, 40, 30, 20], seed=3)
    first = representative_split(points, 12, seed=7)
    np.testing.assert_array_equal(first, representative_split(points.copy(), 12, seed=7))
    assert first.dtype == np.int64 and len(np.unique(first)) == 12


def test_pick_is_the_member_nearest_its_centre():
    points = np.array([[0.0], [1.0], [2.0], [100.0], [101.0], [102.0]])
    np.testing.assert_array_equal(representative_split(points, 2, seed=0), [1, 4])


def test_coverage_beats_random_selection():
    """The farthest any point lies from its nearest pick is smaller than for a typical random pick."""
    points, _ = _blobs([300, 120, 60, 30, 15, 8, 4, 2], seed=1)

    def worst_gap(picks: np.ndarray) -> float:
        return np.linalg.norm(points[:, None] - points[picks][None], axis=-1).min(1).max()

    rng = np.random.default_rng(0)
    random_gaps = [worst_gap(rng.choice(len(points), 10, replace=False)) for _ in range(50)]
    assert worst_gap(representative_split(points, 10, seed=0)) < np.median(random_gaps)


def test_edge_cases():
    points, _ = _blobs([5, 5])
    assert representative_split(points, 0, seed=0).size == 0
    assert representative_split(points, -3, seed=0).size == 0
    np.testing.assert_array_equal(representative_split(points, 10, seed=0), np.arange(10))
    np.testing.assert_array_equal(representative_split(points, 50, seed=0), np.arange(10))
    assert representative_split(np.zeros((0, 4)), 3, seed=0).size == 0
    np.testing.assert_array_equal(representative_split(np.ones((8, 3)), 3, seed=0), [0, 1, 2])  # duplicates


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_picks_one_image_per_grade(seed):
    """Six crops of one photo under four grades: the four picks are one crop of each grade."""
    photo = data.chelsea()[::2, ::2]
    h, w = photo.shape[:2]
    crops = [photo[y : y + h // 2, x : x + w // 2] for y in (0, h // 4, h // 2) for x in (0, w // 2)]
    tints = [(1.0, 0.75, 0.5), (0.55, 0.8, 1.0), (0.6, 1.0, 0.6), (1.0, 1.0, 1.0)]
    images = [_tinted(crop, tint) for tint in tints for crop in crops]
    picks = representative_split(colour_features(images), len(tints), seed=seed)
    assert sorted(picks // len(crops)) == [0, 1, 2, 3]


def test_same_split_with_one_or_two_threads(tmp_path):
    points = np.random.default_rng(5).normal(size=(3000, 48))
    np.save(tmp_path / "points.npy", points)
    script = (
        "import sys, numpy as np; from seminft_bench.pipelines.splits import representative_split;"
        "print(representative_split(np.load(sys.argv[1]), 40, seed=2).tolist())"
    )
    outputs = []
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        result = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "points.npy")], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] == f"{representative_split(points, 40, seed=2).tolist()}\n"

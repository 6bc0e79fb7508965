"""Colour statistics: the sliced Wasserstein colour metric against independent computations."""

import numpy as np
import pytest
from PIL import Image
from scipy.stats import wasserstein_distance
from skimage import data
from skimage.color import rgb2lab

from seminft_bench.colorstats import mean_chroma, sliced_wasserstein, sliced_wasserstein_lab, sphere_directions
from seminft_bench.presets import Preset, apply_lut, builtin_presets


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.astronaut()


def _scipy_sliced_w1(x: np.ndarray, y: np.ndarray, directions: np.ndarray) -> float:
    """The mean over directions of scipy's 1-D W1 between the projected samples (any sizes)."""
    return float(np.mean([wasserstein_distance(x @ theta, y @ theta) for theta in directions]))


def _grade(image: np.ndarray, name: str) -> np.ndarray:
    preset = next(preset for preset in builtin_presets() if preset.name == name)
    return apply_lut(image, preset.to_lut())


def test_sphere_directions_are_unit_and_even():
    directions = sphere_directions(256)
    assert directions.shape == (256, 3)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1, rtol=1e-12)
    assert (directions[:, 0] > 0).all()  # one hemisphere: θ and −θ measure the same
    np.testing.assert_allclose(np.abs(directions).mean(0), 0.5, atol=0.005)  # E|θ_i| = 1/2 on the sphere


def test_each_direction_matches_scipy_on_point_clouds():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)) * [20, 10, 5] + [50, 0, 0]
    y = rng.standard_t(3, size=(500, 3)) * [15, 12, 8] + [40, 5, -10]
    directions = sphere_directions(16)
    assert sliced_wasserstein(x, y, directions) == pytest.approx(_scipy_sliced_w1(x, y, directions), rel=1e-12)
    for theta in directions[:4]:
        one = theta[None, :]
        assert sliced_wasserstein(x, y, one) == pytest.approx(wasserstein_distance(x @ theta, y @ theta), rel=1e-12)


def test_small_images_use_every_pixel_and_match_scipy(photo):
    """64×64 ≤ ``pixels``: no sampling, so the metric is exactly scipy's on all CIELAB pixels."""
    a, b = photo[::8, ::8], data.coffee()[::6, ::9][:64, :64]
    directions = sphere_directions(64)
    expected = _scipy_sliced_w1(rgb2lab(a).reshape(-1, 3), rgb2lab(b).reshape(-1, 3), directions)
    assert sliced_wasserstein_lab(a, b) == pytest.approx(expected, rel=1e-6)  # RGB read as float32, as everywhere


def test_sample_estimates_the_full_distributions_of_different_sizes(photo):
    a, b = photo[::4, ::4], data.coffee()[::3, ::3]  # 16384 and 26800 pixels, sampled to 4096 each
    directions = sphere_directions(16)
    full = _scipy_sliced_w1(rgb2lab(a).reshape(-1, 3), rgb2lab(b).reshape(-1, 3), directions)
    assert sliced_wasserstein_lab(a, b, projections=16) == pytest.approx(full, rel=0.06)


def test_constant_lab_shift_gives_mean_projected_shift(photo):
    lab = rgb2lab(photo[::8, ::8]).reshape(-1, 3)
    delta = np.array([3.0, -4.0, 12.0])
    directions = sphere_directions(256)
    value = sliced_wasserstein(lab, lab + delta, directions)
    assert value == pytest.approx(np.abs(directions @ delta).mean(), rel=1e-9)
    assert value == pytest.approx(np.linalg.norm(delta) / 2, rel=0.01)  # E|θ·δ| = |δ|/2 in 3-D


def test_same_colours_give_zero(photo):
    assert sliced_wasserstein_lab(photo, photo) == 0.0
    assert sliced_wasserstein_lab(photo, photo.astype(np.float32) / 255) == 0.0
    assert sliced_wasserstein_lab(Image.fromarray(photo), photo) == 0.0
    small = photo[::8, ::8]
    shuffled = np.random.default_rng(1).permutation(small.reshape(-1, 3)).reshape(small.shape)
    assert sliced_wasserstein_lab(small, shuffled) == pytest.approx(0.0, abs=1e-9)  # all pixels, same multiset


def test_a_shuffle_costs_only_sampling_noise_and_grades_cost_more(photo):
    shuffled = np.random.default_rng(1).permutation(photo.reshape(-1, 3)).reshape(photo.shape)
    noise = sliced_wasserstein_lab(photo, shuffled)
    assert 0 < noise < 1.0
    assert sliced_wasserstein_lab(photo, _grade(photo, "teal-orange")) > 2 * noise
    assert sliced_wasserstein_lab(photo, _grade(photo, "bw-neutral")) > 10 * noise
    warmer = [sliced_wasserstein_lab(photo, apply_lut(photo, Preset(temperature=t).to_lut())) for t in (20, 40, 80)]
    assert noise < warmer[0] < warmer[1] < warmer[2]


def test_deterministic_and_symmetric(photo):
    graded, other = _grade(photo, "portra-400"), data.coffee()
    value = sliced_wasserstein_lab(photo, graded)
    assert sliced_wasserstein_lab(photo, graded) == value
    assert sliced_wasserstein_lab(graded, photo) == value
    assert sliced_wasserstein_lab(photo, other) == sliced_wasserstein_lab(other, photo)
    reseeded = sliced_wasserstein_lab(photo, graded, seed=1)
    assert reseeded != value and reseeded == pytest.approx(value, rel=0.3)


def test_rejects_non_rgb_input(photo):
    with pytest.raises(ValueError, match="H×W×3"):
        sliced_wasserstein_lab(photo[..., 0], photo)
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein(np.zeros((3, 3)), np.zeros((4, 3)), sphere_directions(4))


def test_mean_chroma_separates_greyscale_from_colour(photo):
    grey = np.repeat(photo.mean(2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert mean_chroma(grey) < 0.1 < 3 < mean_chroma(photo)

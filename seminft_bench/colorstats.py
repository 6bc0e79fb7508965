"""Colour-distribution statistics and distances, one definition for every stage that needs one.

The RL builder describes each photo's grade with `colour_features` and compares grades with
`colour_distance`; it calls a photo near-greyscale by its `mean_chroma`. The benchmark's
weight-free ``color`` metric is `sliced_wasserstein_lab`, a distance between the CIELAB pixel
distributions of two images; the model's ColorStatsReward can reuse either. `reinhard_transfer` imposes a reference's lαβ
means and spreads on a source (the ``reinhard`` baseline, and the model's example anchors). Everything is
measured in CIELAB (D65), where Euclidean distances roughly follow perceived colour
differences (ΔE*ab, L* from 0 to 100).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from seminft_bench.imaging import from_array, to_array

THUMBNAIL_SIDE = 64
L_BINS = 8
AB_BINS = 5  # odd, so neutral greys (a* = b* = 0) fill one central bin
AB_LIMIT = 50.0  # a*, b* beyond ±50 (rare outside saturated colours) land in the edge bins

GOLDEN_ANGLE = np.pi * (3 - np.sqrt(5))

# Reinhard et al. 2001: RGB → LMS cone space, then log LMS → Ruderman's decorrelated lαβ.
_RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LOG_LMS_TO_LAB = np.diag([3**-0.5, 6**-0.5, 2**-0.5]) @ np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]])
_LMS_TO_RGB = np.linalg.inv(_RGB_TO_LMS)
_LAB_TO_LOG_LMS = np.linalg.inv(_LOG_LMS_TO_LAB)
_LOG_OFFSET = 1 / 255
"""Added to LMS before the log: black stays finite, and near-black noise (one 8-bit step) does not
become the outliers that dominate log-space statistics. An offset, not a floor, so the map inverts."""


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


def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    """How differently two photos are graded: the Euclidean distance of their `colour_features`.

    The vectors hold CIELAB mean and standard deviation (/100) and two square-rooted histograms
    (L* tone, joint a*b* cast), so the distance mixes exposure/contrast shifts with Hellinger
    distances between tone and colour distributions; each histogram block contributes at most √2.
    """
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def mean_chroma(rgb: np.ndarray) -> float:
    """Mean CIELAB chroma √(a*² + b*²) of an RGB image: near 0 for black-and-white photos."""
    from skimage.color import rgb2lab

    lab = rgb2lab(rgb)
    return float(np.hypot(lab[..., 1], lab[..., 2]).mean())


def sliced_wasserstein_lab(
    a: np.ndarray | Image.Image,
    b: np.ndarray | Image.Image,
    *,
    pixels: int = 4096,
    projections: int = 64,
    seed: int = 0,
) -> float:
    """How far apart the colour distributions of two RGB images are, whatever their content.

    The benchmark's ``color`` metric. ``a`` and ``b`` are H×W×3 uint8 or float in [0, 1], or PIL
    RGB; their sizes may differ. The value is the sliced Wasserstein-1 distance (Rabin, Peyré,
    Delon & Bernot, "Wasserstein Barycenter and its Application to Texture Mixing", SSVM 2011;
    Bonneel, Rabin, Peyré & Pfister, "Sliced and Radon Wasserstein Barycenters of Measures",
    JMIV 2015) between their CIELAB pixels: the mean over ``projections`` `sphere_directions` θ
    of the 1-D Wasserstein-1 distance between the pixels' projections θ·Lab. W1 rather than W2
    keeps ΔE*ab units and lets a few outlying pixels (specular highlights) weigh only in
    proportion to their number. A uniform cast δ scores the mean of |θ·δ|, about |δ|/2.

    Both images are reduced to the same number of pixels, ``min(pixels, H·W of each)``: all of
    an image that small, else a sample without replacement chosen by ``seed`` and the image's
    pixel count alone. So the value is deterministic and symmetric, an image compared with
    itself gives exactly 0.0, and a spatial shuffle of a larger image costs only the sampling
    noise (about half a ΔE at the defaults).
    """
    a, b = _rgb_pixels(a, "a"), _rgb_pixels(b, "b")
    count = min(pixels, len(a), len(b))
    directions = sphere_directions(projections)
    return sliced_wasserstein(_lab_sample(a, count, seed), _lab_sample(b, count, seed), directions)


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, directions: np.ndarray) -> float:
    """Sliced Wasserstein-1 distance between point clouds ``x`` and ``y`` (both ``[N, D]``).

    ``directions`` ``[P, D]`` are unit vectors. In one dimension the optimal transport between
    two sets of N equally weighted points matches them in sorted order, so each direction's W1
    is the mean absolute difference of the sorted projections.
    """
    if x.shape != y.shape:
        raise ValueError(f"point clouds must have the same shape, got {x.shape} and {y.shape}")
    projected_x = np.sort(directions @ x.T, axis=1)  # [P, N]: sorting contiguous rows is the fast way
    projected_y = np.sort(directions @ y.T, axis=1)
    return float(np.abs(projected_x - projected_y).mean())


def sphere_directions(count: int) -> np.ndarray:
    """``count`` unit vectors ``[count, 3]`` spread evenly over a hemisphere (a Fibonacci lattice).

    A hemisphere suffices because θ and −θ give the same 1-D distance. The lattice's heights
    are equally spaced (equal areas) and its longitudes advance by the golden angle, so the
    directions cover the sphere more evenly than random ones and need no seed.
    """
    index = np.arange(count)
    height = 1 - (index + 0.5) / count
    radius = np.sqrt(1 - height**2)
    angle = GOLDEN_ANGLE * index
    return np.stack([height, radius * np.cos(angle), radius * np.sin(angle)], axis=1)


def _rgb_pixels(image: np.ndarray | Image.Image, name: str) -> np.ndarray:
    """The pixels of an RGB image as ``[H·W, 3]``, values as given."""
    pixels = to_array(image) if isinstance(image, Image.Image) else np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.size == 0:
        raise ValueError(f"{name} must be a non-empty H×W×3 RGB image, got shape {pixels.shape}")
    return pixels.reshape(-1, 3)


def _lab_sample(pixels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """CIELAB values (float64) of ``count`` of ``pixels``, chosen by ``seed`` and ``len(pixels)`` only."""
    from skimage.color import rgb2lab

    if count < len(pixels):
        pixels = pixels[np.random.default_rng(seed).choice(len(pixels), count, replace=False)]
    rgb = to_array(pixels[:, None, :], np.float32)  # uint8 or float in [0, 1], as every stage reads it
    return rgb2lab(rgb.astype(np.float64))[:, 0, :]


def rgb_to_lalphabeta(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] → Reinhard's lαβ (log cone responses rotated to decorrelated axes), float64."""
    lms = np.asarray(rgb, np.float64) @ _RGB_TO_LMS.T
    return np.log10(lms + _LOG_OFFSET) @ _LOG_LMS_TO_LAB.T


def lalphabeta_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_lalphabeta` (values may leave [0, 1] for out-of-gamut lαβ), float64."""
    lms = 10 ** (np.asarray(lab, np.float64) @ _LAB_TO_LOG_LMS.T) - _LOG_OFFSET
    return lms @ _LMS_TO_RGB.T


def reinhard_transfer(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Match the mean and std of each lαβ channel: its axes are nearly decorrelated for natural
    images, so three independent 1-D shifts and scales move the colour feel (Reinhard et al. 2001)."""
    src, ref = rgb_to_lalphabeta(source).reshape(-1, 3), rgb_to_lalphabeta(reference).reshape(-1, 3)
    src_mean, src_std = src.mean(0), src.std(0)
    scale = ref.std(0) / np.maximum(src_std, 1e-6)  # flat channel: src - mean is rounding noise, keep it so
    lab = (src - src_mean) * scale + ref.mean(0)
    return lalphabeta_to_rgb(lab).reshape(source.shape).astype(np.float32)

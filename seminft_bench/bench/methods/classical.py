"""Classical colour-transfer baselines: global statistics of the reference imposed on the source.

Each method has an array-level function on H×W×3 float32 images in [0, 1] (any two sizes:
only the reference's colour distribution is used). The functions return the exact map of
their paper, which may leave [0, 1]; the `Method` classes clip it to make an image.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
from PIL import Image
from skimage.exposure import match_histograms

from seminft_bench.bench.methods.base import Method
from seminft_bench.colorstats import reinhard_transfer
from seminft_bench.imaging import from_array, to_array

_MIN_EIGENVALUE = 1e-8
"""Floor on covariance eigenvalues (a colour std of 1e-4): flat or grey images have singular covariances."""


def _pixels(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float64).reshape(-1, 3)


def _matrix_power(cov: np.ndarray, power: float, floor: float = 0.0) -> np.ndarray:
    """``cov ** power`` for a symmetric PSD matrix, eigenvalues raised to at least ``floor``."""
    values, vectors = np.linalg.eigh(cov)
    return (vectors * np.maximum(values, floor) ** power) @ vectors.T


def mkl_transfer(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The linear map that sends the source's colour mean and covariance to the reference's with the
    least total colour change (Monge-Kantorovich for Gaussians; Pitié & Kokaram 2007)."""
    src, ref = _pixels(source), _pixels(reference)
    cov_src, cov_ref = np.cov(src, rowvar=False, bias=True), np.cov(ref, rowvar=False, bias=True)
    src_half = _matrix_power(cov_src, 0.5, _MIN_EIGENVALUE)
    src_inv_half = _matrix_power(cov_src, -0.5, _MIN_EIGENVALUE)
    transform = src_inv_half @ _matrix_power(src_half @ cov_ref @ src_half, 0.5) @ src_inv_half  # symmetric
    out = (src - src.mean(0)) @ transform + ref.mean(0)
    return out.reshape(source.shape).astype(np.float32)


def histogram_transfer(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-channel exact quantile mapping: each source value goes to the reference value at its CDF level."""
    return match_histograms(np.asarray(source, np.float32), np.asarray(reference, np.float32), channel_axis=-1)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3×3 orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _match_1d(values: np.ndarray, target: np.ndarray, bins: int) -> np.ndarray:
    """Map ``values`` through F_target⁻¹ ∘ F_values, both CDFs from ``bins``-bin histograms over the
    joint range (mass spread evenly within a bin), as in the paper: O(N), no sorting."""
    lo = min(values.min(), target.min())
    scale = bins / max(values.max() - lo, target.max() - lo, 1e-6)
    position = (values - lo) * scale  # in bins, [0, bins]
    index = np.minimum(position.astype(np.int32), bins - 1)
    target_index = np.minimum(((target - lo) * scale).astype(np.int32), bins - 1)
    cdf, target_cdf = (_edge_cdf(np.bincount(i, minlength=bins)) for i in (index, target_index))
    mapped = np.interp(cdf, target_cdf, np.arange(bins + 1)).astype(np.float32)  # edge k → position
    fraction = position - index.astype(np.float32)  # int32 would promote the pixels to float64
    return lo + (mapped[index] + fraction * np.diff(mapped)[index]) / scale


def _edge_cdf(counts: np.ndarray) -> np.ndarray:
    """The CDF at the bins+1 edges, strictly increasing (a tiny count in every bin) for `np.interp`."""
    cumulative = np.cumsum(counts + 1e-6)
    return np.concatenate([[0.0], cumulative / cumulative[-1]])


def pdf_transfer(
    source: np.ndarray, reference: np.ndarray, iterations: int = 20, bins: int = 300, seed: int = 0
) -> np.ndarray:
    """Iterative distribution transfer (Pitié, Kokaram & Dahyot 2005): the full 3-D colour distribution,
    not just its moments, is moved onto the reference's by matching 1-D marginals along the axes of a new
    random rotation each iteration. Without `regrain`, stretched colour ranges show as grain."""
    rng = np.random.default_rng(seed)
    src = np.asarray(source, np.float32).reshape(-1, 3).T.copy()  # 3×N: rows are contiguous
    ref = np.asarray(reference, np.float32).reshape(-1, 3).T.copy()
    for _ in range(iterations):
        rotation = _random_rotation(rng).astype(np.float32)
        src_rot, ref_rot = rotation @ src, rotation @ ref
        matched = np.stack([_match_1d(src_rot[k], ref_rot[k], bins) for k in range(3)])
        src += rotation.T @ (matched - src_rot)
    return src.T.reshape(source.shape)


def _gradient_norm(image: np.ndarray) -> np.ndarray:
    """Colour gradient magnitude as regrain.m measures it: I(x+1) − I(x−1) in each direction (two pixels
    apart, not halved; borders replicated), in the image's own units."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    gx = padded[1:-1, 2:] - padded[1:-1, :-2]
    gy = padded[2:, 1:-1] - padded[:-2, 1:-1]
    return np.sqrt((gx**2 + gy**2).sum(-1))


_REGRAIN_RELAXATION = 1 / 5
"""Share of the previous estimate kept at each Jacobi sweep (regrain.m's ρ). Plain Jacobi leaves the
checkerboard mode, i.e. pixel-level grain, undamped where φ dominates ψ; relaxing damps it."""


def _regrain_level(
    original: np.ndarray, graded: np.ndarray, init: np.ndarray, iterations: int, level: int = 0
) -> np.ndarray:
    """Relaxed Jacobi sweeps on the Euler-Lagrange equation of
    ∫ φ‖∇J − ∇I‖² + ψ‖J − t(I)‖², over 4-neighbour edges p~q:
    ψ_p (J_p − t_p) + Σ_q φ_pq ((J_p − J_q) − (I_p − I_q)) = 0.

    Weights as in Pitié et al. 2007 and their regrain.m, with ‖∇I‖ measured on [0, 1] images:
    φ = 30 / (1 + 10‖∇I‖) enforces the original's gradients everywhere but most in flat areas, where
    grain shows; ψ = min(1, ‖∇I‖ / 5 levels of 255) keeps the graded colours on edges. At the k-th
    halving φ is scaled by 2^-k, as in regrain.m.
    """
    grad = _gradient_norm(original)  # [0, 1] units: φ's constants are set for these, not 8-bit levels
    phi = 30 / (1 + 10 * grad) * 0.5**level
    # ψ's threshold is 5 levels of 255. Floored, unlike regrain.m's: where the original is exactly flat
    # (synthetic or clipped areas) ψ = 0 would leave the estimate there untouched by the grade.
    psi = np.clip(grad * 255 / 5, 1e-3, 1)[..., None]
    phi_x = ((phi[:, :-1] + phi[:, 1:]) / 2)[..., None]  # edge (i, j)~(i, j+1)
    phi_y = ((phi[:-1] + phi[1:]) / 2)[..., None]  # edge (i, j)~(i+1, j)
    dx, dy = np.diff(original, axis=1), np.diff(original, axis=0)  # I_q − I_p along each edge

    denom, rhs = psi.copy(), psi * graded  # the parts that do not depend on J
    denom[:, :-1] += phi_x
    denom[:, 1:] += phi_x
    denom[:-1] += phi_y
    denom[1:] += phi_y
    rhs[:, :-1] -= phi_x * dx
    rhs[:, 1:] += phi_x * dx
    rhs[:-1] -= phi_y * dy
    rhs[1:] += phi_y * dy
    # Where a neighbour is missing, regrain.m pairs a border pixel with itself: a zero term of the equation
    # but a weight in the sweep, which then moves border pixels as slowly as interior ones.
    self_phi = np.zeros_like(psi)
    self_phi[:, 0] += phi[:, :1]
    self_phi[:, -1] += phi[:, -1:]
    self_phi[0] += phi[0, :, None]
    self_phi[-1] += phi[-1, :, None]
    denom += self_phi

    out = init
    for _ in range(iterations):
        neighbours = rhs + self_phi * out
        neighbours[:, :-1] += phi_x * out[:, 1:]
        neighbours[:, 1:] += phi_x * out[:, :-1]
        neighbours[:-1] += phi_y * out[1:]
        neighbours[1:] += phi_y * out[:-1]
        out = (1 - _REGRAIN_RELAXATION) * neighbours / denom + _REGRAIN_RELAXATION * out
    return out


def regrain(
    original: np.ndarray, graded: np.ndarray, iterations: tuple[int, ...] = (4, 16, 32, 64, 64, 64)
) -> np.ndarray:
    """Pitié's grain reduction: keep ``graded``'s colours but ``original``'s gradient field, so that the
    noise a non-linear colour map amplifies in flat areas is smoothed away without blurring edges.

    Solved coarse to fine as in regrain.m: ``iterations[k]`` sweeps at the k-th halving (few at full
    size, where each is costly; many at coarse sizes, where colours must travel far), halving while the
    half size exceeds 20 pixels. The coarsest level starts from the (shrunk) original, each finer one from
    the upsampled solution of the level below.
    """
    original = np.asarray(original, np.float32)
    graded = np.asarray(graded, np.float32)
    return _regrain_from(original, graded, original, iterations, 0)


def _regrain_from(
    original: np.ndarray, graded: np.ndarray, init: np.ndarray, iterations: tuple[int, ...], level: int
) -> np.ndarray:
    height, width = original.shape[:2]
    if len(iterations) > 1 and (min(height, width) + 1) // 2 > 20:
        coarse = _regrain_from(*(_half(x) for x in (original, graded, init)), iterations[1:], level + 1)
        init = _resize_bilinear(coarse, height, width)
    return _regrain_level(original, graded, init, iterations[0], level)


def _bilinear_taps(size: int, new_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights (new_size × taps each) of MATLAB's ``imresize(..., 'bilinear')`` along one
    axis, which regrain.m uses: pixel centres aligned, a triangle kernel widened by the shrink factor when
    shrinking (antialiasing), out-of-range taps mirrored onto the edge pixels."""
    scale = new_size / size
    width = max(1.0, 1 / scale)  # kernel half-width in input pixels
    centres = (np.arange(new_size) + 0.5) / scale - 0.5
    taps = np.floor(centres[:, None] - width) + np.arange(int(np.ceil(2 * width)) + 2)
    weights = np.maximum(0.0, 1 - np.abs(centres[:, None] - taps) / width)
    taps = taps.astype(int) % (2 * size)  # mirror: -1 → 0, size → size - 1
    taps = np.where(taps >= size, 2 * size - 1 - taps, taps)
    return taps, weights / weights.sum(1, keepdims=True)


def _resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    out = image
    for axis, new_size in ((0, height), (1, width)):
        taps, weights = _bilinear_taps(out.shape[axis], new_size)
        shape = (-1, 1, 1) if axis == 0 else (1, -1, 1)
        out = sum(w.reshape(shape) * out.take(t, axis) for t, w in zip(taps.T, weights.T))
    return out.astype(np.float32)


def _half(image: np.ndarray) -> np.ndarray:
    """Half size (rounded up), as regrain.m shrinks (MATLAB's antialiased bilinear): on even sizes each
    pixel weighs its rows and columns [1 3 3 1]/8, not the 2×2 block mean."""
    return _resize_bilinear(image, (image.shape[0] + 1) // 2, (image.shape[1] + 1) // 2)


def idt_transfer(source: np.ndarray, reference: np.ndarray, iterations: int = 20, seed: int = 0) -> np.ndarray:
    """`pdf_transfer` followed by `regrain` against the source: the paper's full colour-grading method."""
    return regrain(source, pdf_transfer(source, reference, iterations=iterations, seed=seed))


class _ArrayMethod(Method):
    """Runs an array-level transfer on float32 [0, 1] pixels and clips the result into an image."""

    def transfer(self, source: Image.Image, reference: Image.Image) -> Image.Image:
        out = self.transfer_array(to_array(source, np.float32), to_array(reference, np.float32))
        return from_array(np.clip(out, 0, 1))

    @abstractmethod
    def transfer_array(self, source: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """``source`` regraded like ``reference``, H×W×3 float32 (may leave [0, 1])."""


class Reinhard(_ArrayMethod):
    """Reinhard, Ashikhmin, Gooch & Shirley 2001, "Color Transfer between Images": lαβ mean/std matching."""

    name = "reinhard"

    def transfer_array(self, source: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return reinhard_transfer(source, reference)


class MKL(_ArrayMethod):
    """Pitié & Kokaram 2007, "The linear Monge-Kantorovitch linear colour mapping for example-based
    colour transfer": the optimal-transport linear map between the two colour Gaussians."""

    name = "mkl"

    def transfer_array(self, source: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return mkl_transfer(source, reference)


class IDT(_ArrayMethod):
    """Pitié, Kokaram & Dahyot 2005/2007, "N-dimensional probability density function transfer" and
    "Automated colour grading using colour distribution transfer": iterative distribution transfer
    plus regrain. Seeded, so the same images give the same output."""

    name = "idt"
    version = "2"  # 2: regrain in [0, 1] units, as Pitié's regrain.m

    def __init__(self, iterations: int = 20, seed: int = 0):
        self.iterations = iterations
        self.seed = seed

    def settings(self) -> dict:
        return {**super().settings(), "iterations": self.iterations, "seed": self.seed}

    def transfer_array(self, source: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return idt_transfer(source, reference, iterations=self.iterations, seed=self.seed)


class Histogram(_ArrayMethod):
    """Per-channel histogram specification in RGB (Gonzalez & Woods' classic CDF matching): exact
    marginals, but channels are matched independently, so colours can shift."""

    name = "histogram"

    def transfer_array(self, source: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return histogram_transfer(source, reference)

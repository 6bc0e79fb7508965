"""Apply a Lut1D or Lut3D to numpy or torch images.

numpy images are channel last with any leading shape (``H×W×3``,
``B×H×W×3``, ``N×3``); torch tensors are channel first (``3×H×W``,
``B×3×H×W``, any leading dims before the channel axis at -3), on any device.
The output has the input's type, shape and dtype.

* Inputs are clamped to the LUT's domain before lookup; NaN is treated as the
  domain minimum so that it can never index outside the table.
* uint8 in, uint8 out: the exact interpolated value, clamped to [0, 1] and
  rounded half up to the nearest 1/255. uint8 input has only 256 codes per
  channel, so the domain clamp, the shaper and each code's lattice cell and
  fraction are tabulated once per call; the per-pixel work is the cube
  interpolation alone (a parallel numba kernel on CPU).
* numpy maths is float64 throughout (float16 images are read as float32);
  results come back in the input's dtype. Float outputs are not clamped.
* torch maths is float32 for float16/bfloat16/float32/uint8 tensors (fast on
  GPUs) and float64 for float64 tensors. A uint8 value within ~1e-6 of a
  rounding tie may therefore land one code away from the numpy result.
* torch float inputs are differentiable with respect to the image.
"""

from __future__ import annotations

import itertools
from typing import Any

import numba
import numpy as np

from seminft_bench.imaging import is_tensor
from seminft_bench.presets.lut import Lut1D, Lut3D

INTERPOLATIONS = ("tetrahedral", "trilinear")


def apply_lut(image: Any, lut: Lut1D | Lut3D, interpolation: str = "tetrahedral") -> Any:
    """Map every pixel of ``image`` through ``lut``; see the module docstring for layouts and precision.

    ``interpolation`` ("tetrahedral" or "trilinear") applies to 3D LUTs; 1D
    LUTs are always interpolated linearly.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if not isinstance(lut, (Lut1D, Lut3D)):
        raise TypeError(f"lut must be a Lut1D or Lut3D, got {type(lut).__name__}")
    if is_tensor(image):
        return _apply_torch(image, lut, interpolation == "tetrahedral")
    return _apply_numpy(np.asarray(image), lut, interpolation == "tetrahedral")


# ---------------------------------------------------------------- shared maths


def _clamp_to_domain(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Clamp per channel; fmax/fmin send NaN to ``lo`` instead of propagating it."""
    return np.fmin(np.fmax(x, lo), hi)


def _curve(x: np.ndarray, lut: Lut1D) -> np.ndarray:
    """Evaluate a 1D LUT per channel in float64, with linear interpolation over its domain."""
    lo, hi = lut.domain_min.astype(np.float64), lut.domain_max.astype(np.float64)
    x = _clamp_to_domain(np.asarray(x, np.float64), lo, hi)
    out = np.empty(x.shape, np.float64)
    for c in range(3):
        knots = np.linspace(lo[c], hi[c], lut.size)
        out[..., c] = np.interp(x[..., c], knots, lut.table[:, c])
    return out


def _cube_coordinates(x: np.ndarray, lut: Lut3D) -> tuple[np.ndarray, np.ndarray]:
    """Lattice cell (int64, 0..N-2) and fraction within it (float64) of each value, per channel."""
    lo, hi = lut.domain_min.astype(np.float64), lut.domain_max.astype(np.float64)
    position = (_clamp_to_domain(x, lo, hi) - lo) / (hi - lo) * (lut.size - 1)
    cell = np.clip(np.floor(position), 0, lut.size - 2)
    return cell.astype(np.int64), position - cell


def _round_to_uint8(y: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _uint8_codes() -> np.ndarray:
    """The 256 uint8 codes as float64 values in [0, 1], one column per channel."""
    return np.repeat((np.arange(256, dtype=np.float64) / 255.0)[:, None], 3, axis=1)


def _uint8_curve_table(lut: Lut1D) -> np.ndarray:
    """``uint8[256, 3]``: the correctly rounded output of every input code, per channel."""
    return _round_to_uint8(_curve(_uint8_codes(), lut))


def _uint8_cube_tables(lut: Lut3D) -> tuple[np.ndarray, np.ndarray]:
    """Cell ``int64[256, 3]`` and fraction ``float64[256, 3]`` of every input code, shaper and clamp folded in."""
    x = _uint8_codes()
    if lut.shaper is not None:
        x = _curve(x, lut.shaper)
    return _cube_coordinates(x, lut)


# ---------------------------------------------------------------- numpy path


def _apply_numpy(image: np.ndarray, lut: Lut1D | Lut3D, tetrahedral: bool) -> np.ndarray:
    if image.ndim < 1 or image.shape[-1] != 3:
        raise ValueError(f"numpy images must be channel last with 3 channels (…×3), got shape {image.shape}")
    if image.dtype == np.uint8:
        return _apply_numpy_uint8(image, lut, tetrahedral)
    if image.dtype in (np.float16, np.float32, np.float64):
        return _apply_numpy_float(image, lut, tetrahedral).astype(image.dtype, copy=False)
    raise ValueError(f"numpy images must be uint8 or float16/32/64, got {image.dtype}")


def _apply_numpy_uint8(image: np.ndarray, lut: Lut1D | Lut3D, tetrahedral: bool) -> np.ndarray:
    if isinstance(lut, Lut1D):
        return _uint8_curve_table(lut)[image, np.arange(3)]
    cell, fraction = _uint8_cube_tables(lut)
    strides = _row_strides(lut.size)
    row_offsets = np.ascontiguousarray((cell.astype(np.uint64) * strides).T)  # [3, 256]: each code's row step
    fractions = np.ascontiguousarray(fraction.T)
    pixels = np.ascontiguousarray(image).reshape(-1, 3)
    out = np.empty_like(pixels)
    _cube_uint8_kernel(pixels, row_offsets, fractions, lut.table.reshape(-1, 3), strides, tetrahedral, out)
    return out.reshape(image.shape)


def _apply_numpy_float(image: np.ndarray, lut: Lut1D | Lut3D, tetrahedral: bool) -> np.ndarray:
    if isinstance(lut, Lut1D):
        return _curve(image, lut)
    pixels = image.reshape(-1, 3)
    if lut.shaper is not None:
        pixels = _curve(pixels, lut.shaper)
    elif pixels.dtype == np.float16:
        pixels = pixels.astype(np.float32)
    pixels = np.ascontiguousarray(pixels)
    lo, hi = lut.domain_min.astype(np.float64), lut.domain_max.astype(np.float64)
    scale = (lut.size - 1) / (hi - lo)
    out = np.empty_like(pixels)
    _cube_float_kernel(pixels, lo, hi, scale, lut.table.reshape(-1, 3), _row_strides(lut.size), tetrahedral, out)
    return out.reshape(image.shape)


def _row_strides(n: int) -> np.ndarray:
    """Row steps along r, g, b in the cube flattened to ``[N³, 3]``; unsigned so numba skips negative-index checks."""
    return np.array([n * n, n, 1], np.uint64)


# ---------------------------------------------------------------- numba kernels
# The cube is flattened to rows: lattice point (r, g, b) is row r*N*N + g*N + b. Row indices are
# uint64 throughout (unsigned indexing spares a wraparound check per load, ~30% of the uint8 kernel);
# the maths is float64, so uint8 results round as the exact value does (barring a tie within ~1e-13).
# Kernels compile on first use and are cached on disk.


@numba.njit(cache=True, inline="always")
def _tetrahedral(table, base, fr, fg, fb, sr, sg, sb):
    """Walk from the cell origin along the axis of the largest fraction, then along all axes but the
    smallest, then to the far corner; the weights are the gaps between the sorted fractions.
    Branch-free selects: the six-way tetrahedron branch mispredicts on real images."""
    s1, f1 = sr, fr
    if fg > f1:
        s1, f1 = sg, fg
    if fb > f1:
        s1, f1 = sb, fb
    s3, f3 = sr, fr
    if fg < f3:
        s3, f3 = sg, fg
    if fb < f3:
        s3, f3 = sb, fb
    f2 = fr + fg + fb - f1 - f3
    v1 = base + s1
    v3 = base + sr + sg + sb
    v2 = v3 - s3
    w0, w1, w2 = 1.0 - f1, f1 - f2, f2 - f3
    r = w0 * table[base, 0] + w1 * table[v1, 0] + w2 * table[v2, 0] + f3 * table[v3, 0]
    g = w0 * table[base, 1] + w1 * table[v1, 1] + w2 * table[v2, 1] + f3 * table[v3, 1]
    b = w0 * table[base, 2] + w1 * table[v1, 2] + w2 * table[v2, 2] + f3 * table[v3, 2]
    return r, g, b


@numba.njit(cache=True, inline="always")
def _trilinear(table, base, fr, fg, fb, sr, sg, sb):
    """Weight each of the cell's 8 corners by the product of its per-axis weights."""
    gr, gg, gb = 1.0 - fr, 1.0 - fg, 1.0 - fb
    rows = (base, base + sb, base + sg, base + sg + sb, base + sr, base + sr + sb, base + sr + sg, base + sr + sg + sb)
    weights = (
        gr * gg * gb, gr * gg * fb, gr * fg * gb, gr * fg * fb,
        fr * gg * gb, fr * gg * fb, fr * fg * gb, fr * fg * fb,
    )  # fmt: skip
    r = g = b = 0.0
    for k in range(8):
        r += weights[k] * table[rows[k], 0]
        g += weights[k] * table[rows[k], 1]
        b += weights[k] * table[rows[k], 2]
    return r, g, b


@numba.njit(cache=True, inline="always")
def _interpolate(table, base, fr, fg, fb, strides, tetrahedral):
    if tetrahedral:
        return _tetrahedral(table, base, fr, fg, fb, strides[0], strides[1], strides[2])
    return _trilinear(table, base, fr, fg, fb, strides[0], strides[1], strides[2])


@numba.njit(cache=True, inline="always")
def _to_uint8(y):
    """Clamp to [0, 1] and round half up to the nearest 1/255."""
    return np.uint8(int(min(max(y * 255.0 + 0.5, 0.0), 255.0)))


@numba.njit(parallel=True, cache=True)
def _cube_uint8_kernel(pixels, row_offsets, fractions, table, strides, tetrahedral, out):
    """``row_offsets``/``fractions`` are per-channel 256-entry tables: everything per code is precomputed."""
    for p in numba.prange(pixels.shape[0]):
        r, g, b = pixels[p, 0], pixels[p, 1], pixels[p, 2]
        base = row_offsets[0, r] + row_offsets[1, g] + row_offsets[2, b]
        y = _interpolate(table, base, fractions[0, r], fractions[1, g], fractions[2, b], strides, tetrahedral)
        out[p, 0], out[p, 1], out[p, 2] = _to_uint8(y[0]), _to_uint8(y[1]), _to_uint8(y[2])


@numba.njit(cache=True, inline="always")
def _cell_and_fraction(x, lo, hi, scale, last_cell):
    if not x > lo:  # also catches NaN
        x = lo
    elif x > hi:
        x = hi
    position = (x - lo) * scale
    cell = min(int(position), last_cell)
    return np.uint64(cell), position - cell


@numba.njit(parallel=True, cache=True)
def _cube_float_kernel(pixels, lo, hi, scale, table, strides, tetrahedral, out):
    last_cell = np.int64(strides[1]) - 2  # strides[1] is N
    for p in numba.prange(pixels.shape[0]):
        cr, fr = _cell_and_fraction(np.float64(pixels[p, 0]), lo[0], hi[0], scale[0], last_cell)
        cg, fg = _cell_and_fraction(np.float64(pixels[p, 1]), lo[1], hi[1], scale[1], last_cell)
        cb, fb = _cell_and_fraction(np.float64(pixels[p, 2]), lo[2], hi[2], scale[2], last_cell)
        base = cr * strides[0] + cg * strides[1] + cb
        out[p, 0], out[p, 1], out[p, 2] = _interpolate(table, base, fr, fg, fb, strides, tetrahedral)


# ---------------------------------------------------------------- torch path


def _apply_torch(image: Any, lut: Lut1D | Lut3D, tetrahedral: bool) -> Any:
    import torch

    if image.dim() < 3 or image.shape[-3] != 3:
        shape = tuple(image.shape)
        raise ValueError(f"torch images must be channel first with 3 channels (…×3×H×W), got shape {shape}")
    pixels = image.movedim(-3, -1)
    if image.dtype == torch.uint8:
        out = _torch_uint8(pixels, lut, tetrahedral)
    elif image.is_floating_point():
        dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
        out = _torch_float(pixels.to(dtype), lut, tetrahedral).to(image.dtype)
    else:
        raise ValueError(f"torch images must be uint8 or floating point, got {image.dtype}")
    return out.movedim(-1, -3).contiguous()


def _torch_uint8(pixels: Any, lut: Lut1D | Lut3D, tetrahedral: bool) -> Any:
    import torch

    codes = pixels.int()  # int32 indices throughout: half the memory traffic of int64 on GPUs
    channel = torch.arange(3, device=pixels.device, dtype=torch.int32)
    if isinstance(lut, Lut1D):
        table = torch.from_numpy(_uint8_curve_table(lut)).to(pixels.device)
        return table[codes, channel]
    cell, fraction = _uint8_cube_tables(lut)
    cell = torch.from_numpy(cell.astype(np.int32)).to(pixels.device)
    fraction = torch.from_numpy(fraction.astype(np.float32)).to(pixels.device)
    y = _torch_interpolate(lut, cell[codes, channel], fraction[codes, channel], tetrahedral)
    return (y.clamp(0.0, 1.0) * 255.0 + 0.5).floor().to(torch.uint8)


def _torch_float(x: Any, lut: Lut1D | Lut3D, tetrahedral: bool) -> Any:
    if isinstance(lut, Lut1D):
        return _torch_curve(x, lut)
    if lut.shaper is not None:
        x = _torch_curve(x, lut.shaper)
    cell, fraction = _torch_lattice(x, lut)
    return _torch_interpolate(lut, cell, fraction, tetrahedral)


def _torch_lattice(x: Any, lut: Lut1D | Lut3D) -> tuple[Any, Any]:
    """Tensor twin of ``_cube_coordinates`` for either LUT kind; the fraction carries the gradient."""
    import torch

    lo, hi = (torch.as_tensor(d, dtype=x.dtype, device=x.device) for d in (lut.domain_min, lut.domain_max))
    position = (torch.fmin(torch.fmax(x, lo), hi) - lo) * ((lut.size - 1) / (hi - lo))
    cell = position.detach().floor().clamp(0, lut.size - 2)
    return cell.int(), position - cell


def _torch_curve(x: Any, lut: Lut1D) -> Any:
    """Tensor twin of ``_curve``: linear interpolation per channel."""
    import torch

    table = torch.as_tensor(lut.table, dtype=x.dtype, device=x.device).reshape(-1)
    cell, fraction = _torch_lattice(x, lut)
    index = cell * 3 + torch.arange(3, device=x.device, dtype=torch.int32)
    below, above = table[index], table[index + 3]
    return below + fraction * (above - below)


def _torch_interpolate(lut: Lut3D, cell: Any, fraction: Any, tetrahedral: bool) -> Any:
    """Interpolate at ``cell`` (…×3, int) plus ``fraction`` (…×3) by gathering rows of the N³×3 table."""
    import torch

    n = lut.size
    table = torch.as_tensor(lut.table, dtype=fraction.dtype, device=fraction.device).reshape(-1, 3)
    stride = torch.tensor([n * n, n, 1], device=fraction.device, dtype=torch.int32)
    far = n * n + n + 1
    base = (cell * stride).sum(-1, dtype=torch.int32)
    if tetrahedral:
        # From the cell origin, step along the axis of the largest fraction, then along all but the
        # smallest, then to the far corner; the weights are the gaps between the ordered fractions.
        largest, largest_axis = fraction.max(-1)
        smallest, smallest_axis = fraction.min(-1)
        middle = fraction.sum(-1) - largest - smallest
        corners = (base, base + stride[largest_axis], base + far - stride[smallest_axis], base + far)
        weights = (1 - largest, largest - middle, middle - smallest, smallest)
    else:
        fr, fg, fb = fraction.unbind(-1)
        corners, weights = [], []
        for dr, dg, db in itertools.product((0, 1), repeat=3):
            corners.append(base + (dr * n * n + dg * n + db))
            weights.append((fr if dr else 1 - fr) * (fg if dg else 1 - fg) * (fb if db else 1 - fb))
    out = 0
    for index, weight in zip(corners, weights):
        out = out + weight.unsqueeze(-1) * table[index]
    return out

"""apply_lut against a plain float64 evaluator written from the definitions, colour-science and Pillow."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from seminft_bench.presets.apply import apply_lut
from seminft_bench.presets.lut import Lut1D, Lut3D

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # colour warns that matplotlib is missing
    import colour

INTERPOLATIONS = ["tetrahedral", "trilinear"]
COLOUR_CUBES = Path(colour.__file__).parent / "io" / "luts" / "tests" / "resources" / "resolve_cube"


# ---------------------------------------------------------------- slow float64 reference


def lattice_position(value, lut, c):
    """Clamp to the domain, then return (cell, fraction) on the N-point lattice of channel c."""
    lo, hi = float(lut.domain_min[c]), float(lut.domain_max[c])
    position = (min(max(value, lo), hi) - lo) / (hi - lo) * (lut.size - 1)
    cell = min(int(position), lut.size - 2)
    return cell, position - cell


def reference_curve(rgb, lut):
    out = []
    for c in range(3):
        i, f = lattice_position(rgb[c], lut, c)
        out.append((1 - f) * float(lut.table[i, c]) + f * float(lut.table[i + 1, c]))
    return out


def reference_cube(rgb, lut, interpolation):
    (i, x), (j, y), (k, z) = (lattice_position(rgb[c], lut, c) for c in range(3))

    def v(dr, dg, db):
        return lut.table[i + dr, j + dg, k + db].astype(np.float64)

    if interpolation == "trilinear":
        return sum(
            (x if dr else 1 - x) * (y if dg else 1 - y) * (z if db else 1 - z) * v(dr, dg, db)
            for dr in (0, 1)
            for dg in (0, 1)
            for db in (0, 1)
        )
    if x >= y >= z:
        return (1 - x) * v(0, 0, 0) + (x - y) * v(1, 0, 0) + (y - z) * v(1, 1, 0) + z * v(1, 1, 1)
    if x >= z >= y:
        return (1 - x) * v(0, 0, 0) + (x - z) * v(1, 0, 0) + (z - y) * v(1, 0, 1) + y * v(1, 1, 1)
    if z >= x >= y:
        return (1 - z) * v(0, 0, 0) + (z - x) * v(0, 0, 1) + (x - y) * v(1, 0, 1) + y * v(1, 1, 1)
    if y >= x >= z:
        return (1 - y) * v(0, 0, 0) + (y - x) * v(0, 1, 0) + (x - z) * v(1, 1, 0) + z * v(1, 1, 1)
    if y >= z >= x:
        return (1 - y) * v(0, 0, 0) + (y - z) * v(0, 1, 0) + (z - x) * v(0, 1, 1) + x * v(1, 1, 1)
    return (1 - z) * v(0, 0, 0) + (z - y) * v(0, 0, 1) + (y - x) * v(0, 1, 1) + x * v(1, 1, 1)


def reference(image, lut, interpolation="tetrahedral"):
    """Float64 result for every pixel of a channel-last image (uint8 codes are read as code/255)."""
    pixels = np.asarray(image, np.float64).reshape(-1, 3)
    if image.dtype == np.uint8:
        pixels = pixels / 255.0
    out = []
    for rgb in pixels:
        if isinstance(lut, Lut1D):
            out.append(reference_curve(rgb, lut))
            continue
        if lut.shaper is not None:
            rgb = reference_curve(rgb, lut.shaper)
        out.append(reference_cube(rgb, lut, interpolation))
    return np.array(out).reshape(image.shape)


def rounded(y):
    return np.floor(np.clip(y, 0, 1) * 255 + 0.5)


# ---------------------------------------------------------------- fixtures


def random_cube(rng, size=5, shaper=False):
    """A rough random cube over a non-unit domain; outputs leave [0, 1] so output clamping is exercised."""
    table = rng.uniform(-0.2, 1.2, (size, size, size, 3))
    curve = Lut1D(rng.uniform(-0.3, 2.2, (7, 3)), domain_min=(0.05, 0.0, -0.2), domain_max=(1.0, 1.3, 1.0))
    return Lut3D(table, domain_min=(-0.1, 0.2, 0.0), domain_max=(1.1, 0.9, 2.0), shaper=curve if shaper else None)


def random_curve(rng):
    return Lut1D(rng.uniform(-0.2, 1.2, (9, 3)), domain_min=(0.1, -0.5, 0.0), domain_max=(0.9, 1.0, 2.0))


def random_float_image(rng, shape=(6, 40, 3)):
    """Values well outside every domain above, so the clamp is exercised on both sides."""
    return rng.uniform(-0.6, 2.6, shape)


def random_uint8_image(rng, shape=(6, 40, 3)):
    return rng.integers(0, 256, shape, dtype=np.uint8)


def to_tensor(image):
    return torch.from_numpy(np.ascontiguousarray(image)).movedim(-1, -3)


def to_numpy(tensor):
    return tensor.movedim(-3, -1).cpu().numpy()


# ---------------------------------------------------------------- numpy


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("size", [2, 17, 33])
def test_identity_cube_is_identity(interpolation, size):
    codes = np.arange(256, dtype=np.uint8)
    image = np.stack(np.meshgrid(codes, codes[::-1], codes[::3], indexing="ij"), axis=-1)
    np.testing.assert_array_equal(apply_lut(image, Lut3D.identity(size), interpolation), image)
    floats = np.random.default_rng(0).uniform(0, 1, (100, 3)).astype(np.float32)
    np.testing.assert_allclose(apply_lut(floats, Lut3D.identity(size), interpolation), floats, atol=1e-6)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("shaper", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_matches_reference(interpolation, shaper, dtype):
    rng = np.random.default_rng(1)
    lut = random_cube(rng, shaper=shaper)
    image = random_float_image(rng).astype(dtype)
    # numpy evaluates in float64, so only the output's own rounding remains
    atol = 2 * np.finfo(dtype).eps
    np.testing.assert_allclose(apply_lut(image, lut, interpolation), reference(image, lut, interpolation), atol=atol)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("shaper", [False, True])
def test_uint8_is_correctly_rounded(interpolation, shaper):
    rng = np.random.default_rng(2)
    lut = random_cube(rng, shaper=shaper)
    image = random_uint8_image(rng, (50, 60, 3))
    np.testing.assert_array_equal(apply_lut(image, lut, interpolation), rounded(reference(image, lut, interpolation)))


def test_uint8_rounds_half_up():
    """0.5 is exactly 127.5/255 (the one tie a binary float can hit); on lattice points nothing rounds before it."""
    lut = Lut3D(np.full((2, 2, 2, 3), 0.5))
    image = np.array([[0, 0, 0], [255, 255, 255], [0, 255, 0]], np.uint8)
    np.testing.assert_array_equal(apply_lut(image, lut), np.full((3, 3), 128))
    np.testing.assert_array_equal(to_numpy(apply_lut(to_tensor(image.reshape(1, 3, 3)), lut)), np.full((1, 3, 3), 128))


def test_lut1d_matches_reference():
    rng = np.random.default_rng(3)
    lut = random_curve(rng)
    floats = random_float_image(rng).astype(np.float32)
    np.testing.assert_allclose(apply_lut(floats, lut), reference(floats, lut), atol=2e-7)
    codes = random_uint8_image(rng)
    np.testing.assert_array_equal(apply_lut(codes, lut), rounded(reference(codes, lut)))


def test_nan_is_treated_as_domain_minimum():
    lut = random_cube(np.random.default_rng(4))
    image = np.array([[np.nan, 0.5, 0.5]], np.float32)
    expected = apply_lut(np.array([[lut.domain_min[0], 0.5, 0.5]], np.float32), lut)
    np.testing.assert_array_equal(apply_lut(image, lut), expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3,), (1, 1, 3), (7, 3), (2, 5, 4, 3)])
def test_dtype_and_shape_preserved_and_pixels_independent(dtype, shape):
    rng = np.random.default_rng(5)
    lut = random_cube(rng, shaper=True)
    image = (random_uint8_image(rng, shape) if dtype == np.uint8 else rng.uniform(0, 1, shape)).astype(dtype)
    out = apply_lut(image, lut)
    assert out.shape == image.shape and out.dtype == image.dtype
    one_by_one = np.stack([apply_lut(pixel, lut) for pixel in image.reshape(-1, 3)]).reshape(shape)
    np.testing.assert_array_equal(out, one_by_one)


def test_non_contiguous_input():
    rng = np.random.default_rng(6)
    lut = random_cube(rng)
    image = random_uint8_image(rng, (20, 30, 3))
    np.testing.assert_array_equal(apply_lut(image[::2, ::-3], lut), apply_lut(image[::2, ::-3].copy(), lut))


def test_bad_arguments_raise_clear_errors():
    lut = Lut3D.identity(3)
    with pytest.raises(ValueError, match="3 channels"):
        apply_lut(np.zeros((4, 4, 4), np.float32), lut)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        apply_lut(np.zeros((4, 4, 3), np.float32), lut, "cubic")
    with pytest.raises(ValueError, match="uint8 or float"):
        apply_lut(np.zeros((4, 4, 3), np.int32), lut)
    with pytest.raises(ValueError, match="3 channels"):
        apply_lut(torch.zeros(4, 4, 3), lut)
    with pytest.raises(TypeError, match="Lut1D or Lut3D"):
        apply_lut(np.zeros((4, 4, 3), np.float32), lut.table)


# ---------------------------------------------------------------- peers


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_matches_colour_table_interpolation(interpolation):
    rng = np.random.default_rng(7)
    lut = Lut3D(rng.uniform(-0.2, 1.2, (9, 9, 9, 3)))
    image = rng.uniform(0, 1, (500, 3))
    interpolate = getattr(colour.algebra, f"table_interpolation_{interpolation}")
    expected = interpolate(image, lut.table.astype(np.float64))
    np.testing.assert_allclose(apply_lut(image, lut, interpolation), expected, atol=1e-12)


def test_matches_colour_on_its_shaper_cube_resource():
    sequence = colour.read_LUT(str(COLOUR_CUBES / "Three_Dimensional_Table_With_Shaper.cube"))
    shaper, cube = sequence[0], sequence[1]
    lut = Lut3D(cube.table, *cube.domain, shaper=Lut1D(shaper.table, *shaper.domain))
    image = np.random.default_rng(8).uniform(-0.1, 3.0, (500, 3))  # the shaper's domain: colour extrapolates beyond
    expected = sequence.apply(image, LUT3D={"interpolator": colour.algebra.table_interpolation_tetrahedral})
    np.testing.assert_allclose(apply_lut(image, lut), expected, atol=1e-5)


def test_uint8_trilinear_matches_pillow_within_one_code():
    rng = np.random.default_rng(9)
    lut = Lut3D(rng.uniform(0, 1, (17, 17, 17, 3)))
    image = random_uint8_image(rng, (64, 64, 3))
    pillow_table = lut.table.transpose(2, 1, 0, 3).reshape(-1)  # Pillow wants b-major, r fastest
    expected = np.asarray(Image.fromarray(image).filter(ImageFilter.Color3DLUT(17, pillow_table)))
    assert np.abs(apply_lut(image, lut, "trilinear").astype(int) - expected).max() <= 1


# ---------------------------------------------------------------- torch


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("shape", [(5, 7, 3), (2, 3, 5, 7, 3)])
def test_torch_cpu_matches_numpy(interpolation, shape):
    rng = np.random.default_rng(10)
    lut = random_cube(rng, shaper=True)
    floats = random_float_image(rng, shape).astype(np.float32)
    out = apply_lut(to_tensor(floats), lut, interpolation)
    assert out.shape == to_tensor(floats).shape and out.dtype == torch.float32
    # torch runs the shaper in float32 (numpy in float64); the steep random shaper and cube amplify that rounding
    np.testing.assert_allclose(to_numpy(out), apply_lut(floats, lut, interpolation), atol=2e-5)
    codes = random_uint8_image(rng, shape)
    out = apply_lut(to_tensor(codes), lut, interpolation)
    assert out.dtype == torch.uint8
    assert np.abs(to_numpy(out).astype(int) - apply_lut(codes, lut, interpolation)).max() <= 1
    half = apply_lut(to_tensor(floats).half(), lut, interpolation)
    assert half.dtype == torch.float16


def test_torch_lut1d_matches_numpy():
    rng = np.random.default_rng(11)
    lut = random_curve(rng)
    floats = random_float_image(rng).astype(np.float32)
    np.testing.assert_allclose(to_numpy(apply_lut(to_tensor(floats), lut)), apply_lut(floats, lut), atol=1e-6)
    codes = random_uint8_image(rng)
    np.testing.assert_array_equal(to_numpy(apply_lut(to_tensor(codes), lut)), apply_lut(codes, lut))


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_torch_gradients_match_finite_differences(interpolation):
    rng = np.random.default_rng(12)
    lut = random_cube(rng, shaper=True)
    image = torch.tensor(rng.uniform(0.1, 0.85, (1, 3, 2, 3)), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: apply_lut(x, lut, interpolation), (image,), eps=1e-7, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_torch_cuda_matches_numpy(interpolation):
    rng = np.random.default_rng(13)
    lut = random_cube(rng, shaper=True)
    floats = random_float_image(rng, (2, 64, 64, 3)).astype(np.float32)
    out = apply_lut(to_tensor(floats).cuda(), lut, interpolation)
    assert out.is_cuda
    np.testing.assert_allclose(to_numpy(out), apply_lut(floats, lut, interpolation), atol=2e-5)
    codes = random_uint8_image(rng, (2, 64, 64, 3))
    out = apply_lut(to_tensor(codes).cuda(), lut, interpolation)
    assert np.abs(to_numpy(out).astype(int) - apply_lut(codes, lut, interpolation)).max() <= 1


def test_a_lut_applies_to_numpy_while_another_thread_is_still_importing_torch(monkeypatch):
    """A torch half imported (in sys.modules, no Tensor yet) must not break numpy callers, as it did oracle cells
    of runs whose metric thread was importing torch."""
    import sys
    import types

    from seminft_bench.imaging import is_tensor

    image = np.random.default_rng(0).random((4, 5, 3))
    expected = apply_lut(image, Lut3D.identity(5))
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))  # as a partial import looks
    assert not is_tensor(image)
    np.testing.assert_array_equal(apply_lut(image, Lut3D.identity(5)), expected)

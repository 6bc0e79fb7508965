"""Apply one 33³ LUT to a 12-megapixel uint8 photo: ours vs Pillow, colour-science and OpenColorIO, one run.

    .venv/bin/python benchmarks/bench_lut.py

Prints MPix/s for each (best of several runs, after a warm-up that also
compiles our kernel), the ratios ours/Pillow and ours/OCIO, and each result's
error against an exact float64 tetrahedral evaluation (colour-science's, in
1/255 units, on a subsample). Pillow interpolates trilinearly, the others
tetrahedrally. colour-science is pure float64 numpy, so it runs on a 1-MPix
slice to keep memory and time sensible.
"""

import tempfile
import time
import warnings
from pathlib import Path

import numba
import numpy as np
import PyOpenColorIO as ocio
import skimage.data
from PIL import Image, ImageFilter

from seminft_bench.presets.apply import apply_lut
from seminft_bench.presets.io import write_cube
from seminft_bench.presets.lut import Lut3D

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # colour warns that matplotlib is missing
    import colour

WIDTH, HEIGHT, LUT_SIZE, REPEATS = 4000, 3000, 33, 5
TARGET_OVER_PILLOW = 1.5


def photo() -> np.ndarray:
    return np.asarray(Image.fromarray(skimage.data.coffee()).resize((WIDTH, HEIGHT), Image.BICUBIC))


def graded_lut() -> Lut3D:
    """A film-like grade with channel crosstalk, so every tetrahedron of the cube matters."""
    rgb = Lut3D.identity(LUT_SIZE).table.astype(np.float64)
    mixed = rgb**0.85 @ np.array([[1.10, -0.06, -0.04], [-0.05, 1.08, -0.03], [0.02, -0.10, 1.08]]).T
    contrast = 0.5 + 0.5 * np.tanh(2.4 * (mixed - 0.5)) / np.tanh(1.2)
    return Lut3D(np.clip(contrast, 0.0, 1.0))


def best_seconds(run, repeats: int = REPEATS) -> float:
    run()  # warm-up: compilation, caches, first-touch allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def ocio_cpu_processor(lut: Lut3D, folder: Path) -> "ocio.CPUProcessor":
    path = write_cube(lut, folder / "bench.cube")
    transform = ocio.FileTransform(src=str(path), interpolation=ocio.INTERP_TETRAHEDRAL)
    processor = ocio.Config.CreateRaw().getProcessor(transform)
    return processor.getOptimizedCPUProcessor(ocio.BIT_DEPTH_UINT8, ocio.BIT_DEPTH_UINT8, ocio.OPTIMIZATION_DEFAULT)


def error_in_codes(result: np.ndarray, exact: np.ndarray, sample: slice) -> str:
    """Max |result − exact| in 1/255 units, and how many values differ from the correctly rounded exact value."""
    diff = result.reshape(-1, 3)[sample].astype(np.float64) - np.clip(exact, 0.0, 1.0) * 255.0
    wrong = np.count_nonzero(result.reshape(-1, 3)[sample] != np.floor(np.clip(exact, 0, 1) * 255.0 + 0.5))
    return f"max error {np.abs(diff).max():.4f}/255, {wrong} of {diff.size} values off the correctly rounded one"


def main() -> None:
    image, lut = photo(), graded_lut()
    megapixels = image.shape[0] * image.shape[1] / 1e6
    threads = numba.get_num_threads()
    print(f"image {WIDTH}×{HEIGHT} uint8 ({megapixels:.1f} MPix), LUT {LUT_SIZE}³, numba threads {threads}")

    ours = best_seconds(lambda: apply_lut(image, lut))

    pillow_image = Image.fromarray(image)
    pillow_lut = ImageFilter.Color3DLUT(LUT_SIZE, lut.table.transpose(2, 1, 0, 3).reshape(-1))  # b-major, r fastest
    pillow = best_seconds(lambda: pillow_image.filter(pillow_lut))

    with tempfile.TemporaryDirectory() as folder:
        processor = ocio_cpu_processor(lut, Path(folder))
    ocio_result = image.copy()
    processor.applyRGB(ocio_result)
    scratch = image.copy()  # applyRGB works in place; the cost does not depend on the values
    opencolorio = best_seconds(lambda: processor.applyRGB(scratch))

    table64 = lut.table.astype(np.float64)
    colour_slice = image.reshape(-1, 3)[: 1_000_000] / 255.0
    interpolate = colour.algebra.table_interpolation_tetrahedral
    colour_seconds = best_seconds(lambda: interpolate(colour_slice, table64), repeats=1)

    sample = slice(None, None, 61)
    exact = interpolate(image.reshape(-1, 3)[sample] / 255.0, table64)
    ours_result = apply_lut(image, lut)
    pillow_result = np.asarray(pillow_image.filter(pillow_lut))

    rows = [
        ("ours (numba, tetrahedral)", megapixels / ours, error_in_codes(ours_result, exact, sample)),
        ("Pillow Color3DLUT (C, trilinear)", megapixels / pillow, error_in_codes(pillow_result, exact, sample)),
        ("OpenColorIO CPU (tetrahedral)", megapixels / opencolorio, error_in_codes(ocio_result, exact, sample)),
        ("colour-science (numpy float64, 1 MPix)", 1.0 / colour_seconds, "the exact reference"),
    ]
    for name, rate, note in rows:
        print(f"{name:40s} {rate:8.1f} MPix/s   {note}")
    over_colour = colour_seconds * megapixels / ours
    print(f"ours/Pillow {pillow / ours:.2f}×   ours/OCIO {opencolorio / ours:.2f}×   ours/colour {over_colour:.0f}×")
    verdict = "met" if pillow / ours >= TARGET_OVER_PILLOW else "NOT met"
    print(f"target ours ≥ {TARGET_OVER_PILLOW}× Pillow: {verdict}")


if __name__ == "__main__":
    main()

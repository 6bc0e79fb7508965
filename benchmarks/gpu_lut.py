"""GPU check of apply_lut's torch path: agreement with the numpy path, then throughput in GPix/s.

    python3 benchmarks/gpu_lut.py                                   # on a CUDA machine, well under a minute
    python3 benchmarks/gpu_lut.py --device cpu --megapixels 0.3 --batch 2   # dry run of the same steps

Needs only numpy, numba and torch. Exits 1 when the torch result disagrees
with numpy (float32 beyond 1e-5, or uint8 beyond one code or off by one in
more than 0.1% of values); speed is reported against the > 1 GPix/s target but
never fails the run. Tensors are made on the device before timing, and every
timing is bracketed by synchronisation after a warm-up.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout, no install needed

from seminft_bench.presets.apply import apply_lut  # noqa: E402
from seminft_bench.presets.lut import Lut1D, Lut3D  # noqa: E402

FLOAT_TOLERANCE = 1e-5
MAX_OFF_BY_ONE_SHARE = 1e-3
TARGET_GPIX_PER_S = 1.0


def smooth_lut(size: int = 33) -> Lut3D:
    """A smooth cross-channel grade behind a gamma shaper, so every stage of the torch path runs."""
    rgb = Lut3D.identity(size).table.astype(np.float64)
    wobble = 0.08 * np.sin(2 * np.pi * rgb[..., [1, 2, 0]]) * np.cos(np.pi * rgb[..., [2, 0, 1]])
    ramp = np.linspace(0.0, 1.0, 256)[:, None].repeat(3, axis=1) ** np.array([0.9, 1.0, 1.1])
    return Lut3D(np.clip(rgb + wobble, 0.0, 1.0), shaper=Lut1D(ramp))


def on_device(image: np.ndarray, lut: Lut3D, interpolation: str, device: str) -> np.ndarray:
    """Run the torch path on ``device`` for a channel-last numpy image and bring the result back."""
    tensor = torch.from_numpy(image).movedim(-1, -3).to(device)
    return apply_lut(tensor, lut, interpolation).movedim(-3, -1).cpu().numpy()


def check_agreement(lut: Lut3D, device: str) -> bool:
    rng = np.random.default_rng(0)
    floats = rng.uniform(-0.1, 1.1, (2, 500, 500, 3)).astype(np.float32)
    codes = rng.integers(0, 256, (2, 500, 500, 3), dtype=np.uint8)
    ok = True
    for interpolation in ("tetrahedral", "trilinear"):
        expected = apply_lut(floats, lut, interpolation)
        error = float(np.abs(on_device(floats, lut, interpolation, device) - expected).max())
        passed = error <= FLOAT_TOLERANCE
        verdict = "ok" if passed else "MISMATCH"
        print(f"agreement float32 {interpolation:11s} max |torch - numpy| = {error:.2e}  {verdict}")
        ok &= passed

        expected = apply_lut(codes, lut, interpolation).astype(int)
        off = np.abs(on_device(codes, lut, interpolation, device).astype(int) - expected)
        share = np.count_nonzero(off) / off.size
        passed = off.max() <= 1 and share <= MAX_OFF_BY_ONE_SHARE
        verdict = "ok" if passed else "MISMATCH"
        print(f"agreement uint8   {interpolation:11s} max code step {off.max()}, off by one {share:.1e}  {verdict}")
        ok &= passed
    return ok


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gigapixels_per_second(image: torch.Tensor, lut: Lut3D, device: str, repeats: int = 5) -> float:
    for _ in range(2):
        apply_lut(image, lut)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        apply_lut(image, lut)
    synchronize(device)
    pixels = image.numel() / 3
    return pixels * repeats / (time.perf_counter() - start) / 1e9


def measure_speed(lut: Lut3D, device: str, megapixels: float, batch: int) -> None:
    side = int(round((megapixels * 1e6 / 12) ** 0.5))
    height, width = 3 * side, 4 * side
    generator = torch.Generator(device=device).manual_seed(0)
    for leading in ((), (batch,)):
        shape = (*leading, 3, height, width)
        codes = torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=generator)
        for name, image in (("uint8", codes), ("float32", codes.float() / 255)):
            rate = gigapixels_per_second(image, lut, device)
            verdict = "met" if rate > TARGET_GPIX_PER_S else "not met"
            size = "×".join(map(str, shape))
            print(f"speed {name:7s} {size:>18s} tetrahedral {rate:6.2f} GPix/s  (> {TARGET_GPIX_PER_S}: {verdict})")
            del image
        del codes
        if device.startswith("cuda"):
            print(f"      peak GPU memory so far {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
            torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available; pass --device cpu for a dry run")
        return 1
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device {name}, torch {torch.__version__}")
    lut = smooth_lut()
    ok = check_agreement(lut, args.device)
    measure_speed(lut, args.device, args.megapixels, args.batch)
    print("PASS" if ok else "FAIL: torch and numpy disagree")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

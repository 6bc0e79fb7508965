"""PSNR, SSIM and LPIPS on 150 pairs of 512×512 photos: ours against piq and torchmetrics, in one run.

    .venv/bin/python benchmarks/bench_metrics.py [--device cuda] [--repeats 3] [--vgg]

The peers get the same float32 B×3×H×W tensor already on the device and work through it in the
same chunks; our PSNR and SSIM are numpy code (so that runs without model-based metrics never import
torch) and get the uint8 N×H×W×3 photos as they are read, on the CPU whatever ``--device`` says.
Times are the best of ``--repeats`` runs, taken in turns after a warm-up.
Values: PSNR and SSIM are checked against scikit-image (float64, the definition) on the
first pairs, LPIPS against the lpips package called directly (ours runs that same network
channels-last, which moves values by float32 rounding, about 1e-6). SSIM is Wang et al.'s
(11×11 Gaussian, σ = 1.5, mean over the pixels whose window lies inside the image); piq runs
with ``downsample=False`` to compute that.

LPIPS runs offline: a temporary TORCH_HOME receives random AlexNet/VGG16 backbones under
torchvision's file names, and piq's ``lpips_weights.pt`` is written from the lpips package's
own VGG linear layers, so all implementations load the same weights. The values are not the
published LPIPS, but the comparison is exact. LPIPS-VGG (the only LPIPS piq has) runs with
``--vgg``, by default on CUDA only: on a small CPU it takes many minutes.
"""

import argparse
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import lpips as lpips_package
import numpy as np
import piq
import skimage.data
import torch
import torchvision
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim
from torchmetrics.image import LearnedPerceptualImagePatchSimilarity

from seminft_bench.bench import metrics

PAIRS, SIZE, CHECKED = 150, 512, 8
warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")  # lpips and piq pass `pretrained=`
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]


def photo_pairs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pred, target) uint8 batches: random crops of real photos, and each crop regraded with noise."""
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS]
    photos = [photo.resize((photo.width * 640 // min(photo.size), photo.height * 640 // min(photo.size)))
              for photo in photos]
    targets = []
    for i in range(PAIRS):
        photo = np.asarray(photos[i % len(photos)])
        top, left = rng.integers(0, photo.shape[0] - SIZE + 1), rng.integers(0, photo.shape[1] - SIZE + 1)
        targets.append(photo[top : top + SIZE, left : left + SIZE])
    targets = np.stack(targets)
    gamma = rng.uniform(0.8, 1.25, (PAIRS, 1, 1, 1))
    gains = rng.uniform(0.85, 1.1, (PAIRS, 1, 1, 3))
    graded = (targets / 255.0) ** gamma * gains + rng.normal(0, 0.02, targets.shape)
    return np.round(np.clip(graded, 0, 1) * 255).astype(np.uint8), targets


def write_random_torch_cache(home: Path) -> None:
    """Random backbones where torchvision looks, and piq's LPIPS weights taken from the lpips package."""
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for build, name in [
        (torchvision.models.alexnet, "alexnet-owt-7be5be79.pth"),
        (torchvision.models.vgg16, "vgg16-397923af.pth"),
    ]:
        with torch.device("meta"):
            shapes = {key: value.shape for key, value in build().state_dict().items()}
        state = {  # classifier matrices (unused by any metric) as stride-0 views, to keep the files small
            key: torch.zeros(()).expand(shape) if math.prod(shape) > 2**22
            else torch.randn(shape, generator=generator) * math.sqrt(2 * shape[0] / math.prod(shape))
            for key, shape in shapes.items()
        }
        torch.save(state, checkpoints / name)
    lpips_vgg = torch.load(Path(lpips_package.__file__).parent / "weights/v0.1/vgg.pth", map_location="cpu")
    torch.save([lpips_vgg[f"lin{k}.model.1.weight"] for k in range(5)], checkpoints / "lpips_weights.pt")


def in_chunks(metric, pred: torch.Tensor, target: torch.Tensor, size: int) -> torch.Tensor:
    with torch.inference_mode():
        chunks = range(0, len(pred), size)
        return torch.cat([metric(pred[i : i + size], target[i : i + size]).flatten() for i in chunks])


def time_in_turns(implementations: dict, repeats: int, device: torch.device) -> dict[str, tuple[float, np.ndarray]]:
    """Best wall time of each implementation over ``repeats`` rounds, and its values.

    One warm-up call each, then the implementations take turns, so that the allocator's and
    caches' states (which swing CPU timings by 2× on a small machine) fall on all of them alike.
    """
    values = {label: run() for label, run in implementations.items()}
    best = dict.fromkeys(implementations, math.inf)
    for _ in range(repeats):
        for label, run in implementations.items():
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[label] = min(best[label], time.perf_counter() - start)
    return {label: (best[label], torch.as_tensor(values[label]).double().cpu().numpy()) for label in implementations}


def report(title: str, results: dict, reference: np.ndarray, reference_name: str, tolerance: float) -> None:
    ours_seconds, ours_values = results["ours"]
    checked = len(reference)
    print(f"\n{title}")
    for name, (seconds, values) in results.items():
        gap = np.abs(values[:checked] - reference).max()
        to_ours = np.abs(values - ours_values).max()
        print(f"  {name:13s} {seconds:8.3f} s   max |Δ| vs {reference_name} {gap:.2e}   vs ours {to_ours:.2e}")
    peer_seconds, peer = min((seconds, name) for name, (seconds, _) in results.items() if not name.startswith("ours"))
    ratio = peer_seconds / ours_seconds
    exact = np.abs(ours_values[:checked] - reference).max() <= tolerance
    verdict = "met" if ratio >= 1.0 and exact else "NOT met"
    print(f"  ours is {ratio:.2f}× the faster peer ({peer}); target ≥ 1.0× with ours within {tolerance:g} "
          f"of {reference_name}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vgg", action=argparse.BooleanOptionalAction, default=torch.cuda.is_available())
    args = parser.parse_args()
    device = torch.device(args.device)

    preds_uint8, targets_uint8 = photo_pairs()
    pred = torch.from_numpy(preds_uint8).permute(0, 3, 1, 2).to(device).float().div_(255).contiguous()
    target = torch.from_numpy(targets_uint8).permute(0, 3, 1, 2).to(device).float().div_(255).contiguous()
    exact_pairs = [(p / 255.0, t / 255.0) for p, t in zip(preds_uint8[:CHECKED], targets_uint8[:CHECKED])]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{PAIRS} pairs of {SIZE}×{SIZE} RGB, float32 on {device} ({name}), torch {torch.__version__}, "
          f"best of {args.repeats} runs; values checked on the first {CHECKED} pairs")

    psnr_results = time_in_turns({
        "ours": lambda: metrics.psnr(preds_uint8, targets_uint8),
        "piq": lambda: in_chunks(lambda p, t: piq.psnr(p, t, data_range=1.0, reduction="none"), pred, target, 16),
        "torchmetrics": lambda: in_chunks(
            lambda p, t: tm_psnr(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3)), pred, target, 16
        ),
    }, args.repeats, device)
    exact_psnr = np.array([peak_signal_noise_ratio(t, p, data_range=1) for p, t in exact_pairs])
    report("PSNR (dB)", psnr_results, exact_psnr, "skimage", 1e-5)

    ssim_results = time_in_turns({
        "ours": lambda: metrics.ssim(preds_uint8, targets_uint8),
        "piq": lambda: in_chunks(
            lambda p, t: piq.ssim(p, t, data_range=1.0, downsample=False, reduction="none"), pred, target, 16
        ),
        "torchmetrics": lambda: in_chunks(
            lambda p, t: tm_ssim(p, t, sigma=1.5, kernel_size=11, data_range=1.0, reduction="none"), pred, target, 16
        ),
    }, args.repeats, device)
    exact_ssim = np.array([
        structural_similarity(p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
                              channel_axis=-1)
        for p, t in exact_pairs
    ])
    report("SSIM", ssim_results, exact_ssim, "skimage", 2e-6)

    with tempfile.TemporaryDirectory() as home:
        os.environ["TORCH_HOME"] = home
        write_random_torch_cache(Path(home))
        print("\nLPIPS with RANDOM backbone weights (offline), the same files loaded by every implementation")
        for net in ["alex", "vgg"] if args.vgg else ["alex"]:
            torchmetrics_net = LearnedPerceptualImagePatchSimilarity(net_type=net).net.to(device)
            implementations = {
                "ours": lambda: metrics.lpips(pred, target, net=net, device=device, batch_size=8),
                "torchmetrics": lambda: in_chunks(lambda p, t: torchmetrics_net(p, t, normalize=True), pred, target, 8),
            }
            if net == "vgg":
                piq_lpips = piq.LPIPS(reduction="none").to(device)
                implementations["piq"] = lambda: in_chunks(piq_lpips, pred, target, 8)
            results = time_in_turns(implementations, args.repeats, device)
            reference = lpips_package.LPIPS(net=net, verbose=False).to(device)
            exact = in_chunks(lambda p, t: reference(2 * p - 1, 2 * t - 1), pred[:CHECKED], target[:CHECKED], 8)
            report(f"LPIPS-{net}", results, exact.double().cpu().numpy(), "lpips package", 1e-5)


if __name__ == "__main__":
    main()

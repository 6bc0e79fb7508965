"""Image metrics of the benchmark (paper §4.1) and their registry: PSNR, SSIM, LPIPS, DISTS, the DINO
success ratio, DINO's position-by-position patch similarity (Table 3), and two weight-free ones that run anywhere: `color` (to the reference) and `structure`
(to the source).

Every metric takes a pair of images, or two batches of the same length, each as a PIL image,
a numpy array (H×W×3 or N×H×W×3, uint8 or float in [0, 1]), a torch tensor (…×3×H×W, uint8
or float in [0, 1]) or a list of single images. One pair gives a float; batches give a float64
numpy array of the batch's shape, one value per pair. Images of different sizes are refused,
because a metric over resized pixels would no longer be the metric.

The weight-free metrics (PSNR, SSIM, color, structure) are numpy, in float64, one pair at a
time: a run that computes only those never imports torch (two seconds and most of a gigabyte
per process). The model-based ones run ``batch_size`` pairs at a time on ``device`` (default:
CUDA when present, else CPU).

Weights are never downloaded here, so a benchmark run cannot change under a moving cache:
LPIPS and DISTS read torch's cache (``$TORCH_HOME/hub/checkpoints``), DINO the Hugging Face
cache or a local folder, and a missing file raises `MissingWeightsError` naming it and how
to provide it.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from seminft_bench.errors import MissingWeightsError
from seminft_bench.imaging import is_tensor, to_array

if TYPE_CHECKING:
    import torch

    ImageInput = Image.Image | np.ndarray | torch.Tensor | Sequence[Image.Image | np.ndarray | torch.Tensor]


class _OnFirstUse:
    """A module imported when first used: the registry, ``seminft-bench --help``, ``report`` and the weight-free
    metrics never import torch (two seconds and most of a gigabyte); computing a model-based metric does."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str):
        return getattr(importlib.import_module(self._name), attribute)


torch = _OnFirstUse("torch")  # noqa: F811 (the module itself for type checkers)
F = _OnFirstUse("torch.nn.functional")
Values = float | np.ndarray

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
"""scikit-image's truncation of the Gaussian: radius int(3.5 · 1.5 + 0.5) = 5, the 11×11 window of Wang et al."""
SSIM_K1, SSIM_K2 = 0.01, 0.03
LUMA_709 = (0.2126, 0.7152, 0.0722)

LPIPS_BACKBONE_URLS = {  # torchvision's AlexNet_Weights / VGG16_Weights.IMAGENET1K_V1, which lpips loads
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
DISTS_URLS = (  # piq.DISTS: torchvision's VGG16 plus its own alpha/beta weights
    LPIPS_BACKBONE_URLS["vgg"],
    "https://github.com/photosynthesis-team/piq/releases/download/v0.4.1/dists_weights.pt",
)

DINO_MODEL = "facebook/dino-vitb16"
DINO_THRESHOLD = 0.7
"""Default success threshold on DINO similarity. The paper (§4.1) calls its threshold "predefined"
without giving it. DINO was trained to map colour-jittered, greyscaled and blurred views of a
photo to the same embedding, so a regrade of the source should stay far above 0.7, while a
different scene (the reference handed back, newly generated content) should fall below it.
Always report the threshold used with the ratio."""

def psnr(pred: ImageInput, target: ImageInput) -> Values:
    """Peak signal-to-noise ratio in dB for data range 1, as ``skimage.metrics.peak_signal_noise_ratio``.

    Identical images give ``inf`` (zero error), as in scikit-image: a capped value would let a
    perfect result pass for a merely good one. Mind the infinities before averaging.
    """
    return _per_pair(_psnr, pred, target)


def ssim(pred: ImageInput, target: ImageInput) -> Values:
    """Mean SSIM of Wang et al. over the three channels, equal (to float64 rounding) to scikit-image's
    ``structural_similarity(pred, target, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)``.

    As there, the mean covers only the pixels whose whole 11×11 window lies inside the image,
    so no border rule is involved; images must be at least 11×11.
    """
    return _per_pair(_ssim, pred, target)


def lpips(
    pred: ImageInput, target: ImageInput, *, net: str = "alex", device: str | None = None, batch_size: int = 8,
) -> Values:
    """LPIPS v0.1 (Zhang et al.) through the ``lpips`` package, ``net`` "alex" (its default) or "vgg".

    Images are mapped from [0, 1] to the package's [-1, 1]. Its linear layers ship in the
    package; the backbone is torchvision's ImageNet checkpoint in the torch cache.
    """
    if net not in LPIPS_BACKBONE_URLS:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_BACKBONE_URLS)}, got {net!r}")
    checkpoints = _torch_checkpoints(f"LPIPS ({net})", [LPIPS_BACKBONE_URLS[net]])
    model = _lpips_network(net, _device(device), checkpoints)
    return _per_batch(
        lambda p, t: model(_channels_last(p), _channels_last(t), normalize=True).flatten(), pred, target,
        device=device, batch_size=batch_size,
    )


def dists(pred: ImageInput, target: ImageInput, *, device: str | None = None, batch_size: int = 8) -> Values:
    """DISTS (Ding et al.) via ``piq.DISTS``; its VGG16 backbone and alpha/beta weights come from the torch cache."""
    model = _dists_network(_device(device), _torch_checkpoints("DISTS", DISTS_URLS))
    return _per_batch(
        lambda p, t: model(_channels_last(p), _channels_last(t)), pred, target, device=device, batch_size=batch_size
    )


def dino_similarity(
    source: ImageInput, output: ImageInput, *, model: str = DINO_MODEL, device: str | None = None,
    batch_size: int = 32,
) -> Values:
    """Cosine similarity of the DINO ViT CLS embeddings of ``source`` and ``output`` (paper §4.1).

    Close to 1 when the output keeps the source's content, whatever its colours. ``model`` is
    a Hugging Face id already in the local cache, or a folder written by ``save_pretrained``;
    images go through the model's own ``ViTImageProcessor``.
    """
    tokens = _dino_tokens(model, _device(device))
    return _per_batch(
        lambda s, o: F.cosine_similarity(tokens(s)[:, 0], tokens(o)[:, 0], dim=-1), source, output,
        device=device, batch_size=batch_size,
    )


def dino_local_similarity(
    source: ImageInput, output: ImageInput, *, model: str = DINO_MODEL, device: str | None = None,
    batch_size: int = 32,
) -> Values:
    """Content kept in place: the mean over patch positions of the cosine similarity of the DINO ViT patch
    tokens of ``source`` and ``output`` at the same position (the paper's Table 3 "DINO_local" column).

    DINO's patch tokens describe local semantics and are robust to colour (Caron et al., "Emerging
    Properties in Self-Supervised Vision Transformers", ICCV 2021); compared position by position
    they drop where content moved or changed, which the global CLS embedding of `dino_similarity`
    can average away. Both images are resized to the model's input grid, so an output the size
    of its source lines up patch for patch. The paper thresholds it into a binary "local change"
    count without giving the threshold; this is the similarity itself. Same ``model`` as `dino_similarity`.
    """
    tokens = _dino_tokens(model, _device(device))
    return _per_batch(
        lambda s, o: F.cosine_similarity(tokens(s)[:, 1:], tokens(o)[:, 1:], dim=-1).mean(1), source, output,
        device=device, batch_size=batch_size,
    )


def success(similarity: Values, threshold: float = DINO_THRESHOLD) -> bool | np.ndarray:
    """Whether outputs kept their source's content: DINO similarity above ``threshold``.

    The success ratio of the paper's tables is the mean of this over a method's outputs.
    """
    passed = np.asarray(similarity) > threshold
    return bool(passed) if passed.ndim == 0 else passed


def structure(pred: ImageInput, source: ImageInput) -> Values:
    """Content kept, whatever the colours: Pearson correlation of the luminance gradient magnitudes.

    The gradient correlation of image registration (Penney et al., "A comparison of similarity
    measures for use in 2-D-3-D medical image registration", IEEE TMI 1998), on Sobel gradient
    magnitudes of Rec. 709 luma. A global regrade scales and bends the luminance but leaves its
    edges where they were, so the correlation stays near 1 (exactly 1 for the source itself, and
    unchanged by any affine change of luminance); other content decorrelates the edges (a
    different photo scores near 0). A flat image has no gradients: comparing one gives NaN.
    """
    return _per_pair(_gradient_correlation, pred, source)


def _gradient_correlation(a: np.ndarray, b: np.ndarray) -> float:
    x, y = _sobel_magnitude(a).ravel(), _sobel_magnitude(b).ravel()
    x, y = x - x.mean(), y - y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):  # a flat image: 0 / 0
        return float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y)))


def _sobel_magnitude(rgb: np.ndarray) -> np.ndarray:
    """|∇| of the luma by the 3×3 Sobel kernels, where the whole kernel lies inside the image (H−2 × W−2)."""
    luma = rgb @ np.array(LUMA_709)
    across, down = luma[:, :-2] - luma[:, 2:], luma[:-2] - luma[2:]  # central differences, then smoothed 1 2 1
    gx = across[:-2] + 2 * across[1:-1] + across[2:]
    gy = down[:, :-2] + 2 * down[:, 1:-1] + down[:, 2:]
    return np.hypot(gx, gy)


def color(pred: ImageInput, reference: ImageInput) -> Values:
    """How far the output's colours are from the reference's: `colorstats.sliced_wasserstein_lab` (CIELAB units).

    0 for identical colour distributions, whatever the content or image sizes. See there for the definition.
    """
    from seminft_bench.colorstats import sliced_wasserstein_lab

    preds, references = _as_list(pred), _as_list(reference)
    if len(preds) != len(references):
        raise ValueError(f"{len(preds)} outputs but {len(references)} references; pairs must match one to one")
    values = np.array([sliced_wasserstein_lab(to_array(p), to_array(r)) for p, r in zip(preds, references)])
    return float(values[0]) if not isinstance(pred, (list, tuple)) else values


def _as_list(images: ImageInput) -> list:
    return list(images) if isinstance(images, (list, tuple)) else [images]


@dataclass(frozen=True)
class MetricSettings:
    """The parameters metrics take. Each metric names those that change its values: they key its cells."""

    lpips_net: str = "alex"
    dino_model: str = DINO_MODEL
    dino_threshold: float = DINO_THRESHOLD
    device: str | None = None


@dataclass(frozen=True)
class Metric:
    """One entry of the registry: everything the runner, the report and the CLI need to know of a metric.

    ``compute(pred, other, settings)`` takes an output and the image it is ``compared_with``
    ("target", "source" or "reference"); a metric that ``uses`` another is computed from that
    metric's value instead (``compute(value, None, settings)``). ``parameters`` are the
    `MetricSettings` fields its values depend on; ``weights`` says what it loads (None:
    weight-free, runs anywhere). Bump ``version`` when a change of code changes its values.
    """

    name: str
    label: str
    compared_with: str
    higher_is_better: bool
    compute: Callable[[object, object, MetricSettings], Values]
    parameters: tuple[str, ...] = ()
    weights: str | None = None
    uses: str | None = None
    version: int = 1

    def settings(self, settings: MetricSettings) -> dict:
        """What determines this metric's values (hashed into its cells' key)."""
        return {"metric": self.name, "version": self.version, **{p: getattr(settings, p) for p in self.parameters}}


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("psnr", "PSNR", "target", True, lambda p, t, s: psnr(p, t)),
        Metric("ssim", "SSIM", "target", True, lambda p, t, s: ssim(p, t)),
        Metric(
            "lpips", "LPIPS", "target", False, lambda p, t, s: lpips(p, t, net=s.lpips_net, device=s.device),
            parameters=("lpips_net",), weights="torchvision AlexNet/VGG16 in the torch cache",
        ),
        Metric("dists", "DISTS", "target", False, lambda p, t, s: dists(p, t, device=s.device), weights="piq DISTS + VGG16 in the torch cache"),
        Metric(
            "dino", "DINO sim.", "source", True,
            lambda p, src, s: dino_similarity(src, p, model=s.dino_model, device=s.device),
            parameters=("dino_model",), weights="a DINO ViT in the Hugging Face cache",
        ),
        Metric(
            "success", "Success", "source", True, lambda similarity, _, s: success(similarity, s.dino_threshold),
            parameters=("dino_model", "dino_threshold"), weights="as dino", uses="dino",
        ),
        Metric(
            "dino_local", "DINO local", "source", True,
            lambda p, src, s: dino_local_similarity(src, p, model=s.dino_model, device=s.device),
            parameters=("dino_model",), weights="as dino",
        ),
        Metric("color", "Color dist.", "reference", False, lambda p, r, s: color(p, r)),
        Metric("structure", "Structure", "source", True, lambda p, src, s: structure(p, src)),
    )
}
"""The metrics registry, in the tables' column order. Adding a metric is one entry here."""
METRIC_NAMES = tuple(METRICS)


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


def with_dependencies(names: Sequence[str]) -> list[str]:
    """``names`` plus the metrics they are computed from, each once, dependencies first."""
    ordered: list[str] = []
    for name in names:
        used = get_metric(name).uses
        ordered += [n for n in (used, name) if n is not None and n not in ordered]
    return ordered


def compute_metrics(
    names: Sequence[str], pred: ImageInput, images: Mapping[str, ImageInput], settings: MetricSettings = MetricSettings()
) -> dict[str, np.ndarray]:
    """Each metric of ``names`` (and what they use) on one output or batch, one value per pair.

    ``images`` maps roles ("target", "source", "reference") to the images compared with.
    """
    values: dict[str, np.ndarray] = {}
    for name in with_dependencies(names):
        metric = get_metric(name)
        if metric.uses is not None:
            values[name] = np.atleast_1d(metric.compute(values[metric.uses], None, settings))
            continue
        if images.get(metric.compared_with) is None:
            raise ValueError(f"metric {name!r} needs {metric.compared_with} images")
        values[name] = np.atleast_1d(metric.compute(pred, images[metric.compared_with], settings))
    return values


def _psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """10·log10(1 / MSE), as scikit-image computes it."""
    error = pred - target
    with np.errstate(divide="ignore"):  # identical images: inf
        return float(10 * np.log10(1 / np.mean(np.square(error, out=error))))


def _ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """The mean over channels of each channel's mean SSIM, as scikit-image averages them.

    Wang et al.: (2·μx·μy + C1)(2·σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)), the windowed moments by
    population (co)variance E[xy] − E[x]E[y] (float64 loses nothing that matters to the cancellation). Computed
    in place: fresh temporaries cost a page fault per 4 kB, which took most of the time."""
    taps = _gaussian_taps()
    if min(pred.shape[:2]) < len(taps):
        height, width = pred.shape[:2]
        raise ValueError(f"SSIM needs images of at least {len(taps)}×{len(taps)} pixels, got {width}×{height}")
    x, y = np.moveaxis(pred, -1, 0), np.moveaxis(target, -1, 0)  # 3×H×W
    maps = np.empty((5, *x.shape))
    maps[0], maps[1] = x, y
    np.multiply(x, x, out=maps[2])
    np.multiply(y, y, out=maps[3])
    np.multiply(x, y, out=maps[4])
    mu_x, mu_y, xx, yy, xy = _blur_inside(maps)
    numerator = mu_x * mu_y
    xy -= numerator
    xy *= 2
    xy += SSIM_K2**2  # 2·σxy + C2
    numerator *= 2
    numerator += SSIM_K1**2
    numerator *= xy  # (2·μx·μy + C1)(2·σxy + C2)
    np.square(mu_x, out=mu_x)
    np.square(mu_y, out=mu_y)
    xx += yy
    xx -= mu_x
    xx -= mu_y
    xx += SSIM_K2**2  # σx² + σy² + C2
    mu_x += mu_y
    mu_x += SSIM_K1**2
    mu_x *= xx  # (μx² + μy² + C1)(σx² + σy² + C2)
    numerator /= mu_x
    return float(numerator.mean(axis=(1, 2)).mean())


@functools.cache
def _gaussian_taps() -> np.ndarray:
    """scipy.ndimage's Gaussian as scikit-image calls it: radius int(truncate·σ + 0.5), weights summing to 1."""
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / SSIM_SIGMA**2 * x**2)
    return weights / weights.sum()


def _blur_inside(maps: np.ndarray) -> np.ndarray:
    """The separable Gaussian over the last two axes, kept where the whole window lies inside the image:
    each axis's sliding windows (views, no copy) times the taps, a product BLAS runs fast."""
    taps = _gaussian_taps()
    rows = sliding_window_view(maps, len(taps), axis=-1) @ taps
    return sliding_window_view(rows, len(taps), axis=-2) @ taps


def _per_pair(metric: Callable[[np.ndarray, np.ndarray], float], pred: ImageInput, target: ImageInput) -> Values:
    """Run ``metric`` (two H×W×3 float64 images in [0, 1] → a value) on every pair, one pair at a time."""
    preds, targets, batch_shape = _as_pairs(pred, target)
    values = np.array([metric(_float64(p), _float64(t)) for p, t in zip(preds, targets)])
    return float(values[0]) if not batch_shape else values.reshape(batch_shape)


def _float64(image: np.ndarray) -> np.ndarray:
    return image / 255 if image.dtype == np.uint8 else image.astype(np.float64)


def _per_batch(
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], pred: ImageInput, target: ImageInput, *,
    device: str | None, batch_size: int,
) -> Values:
    """Run a model-based ``metric`` (two B×3×H×W float32 tensors in [0, 1] → B values) over every pair,
    ``batch_size`` at a time on ``device``."""
    preds, targets, batch_shape = _as_pairs(pred, target)
    run_on = _device(device)
    with torch.inference_mode():
        values = [
            metric(_tensor(preds[i : i + batch_size], run_on), _tensor(targets[i : i + batch_size], run_on))
            for i in range(0, len(preds), batch_size)
        ]
    result = torch.cat(values).to("cpu", torch.float64).numpy().reshape(batch_shape)
    return float(result) if result.ndim == 0 else result


def _as_pairs(pred: ImageInput, target: ImageInput) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    preds, pred_shape = _as_batch(pred, "pred")
    targets, target_shape = _as_batch(target, "target")
    if preds.shape[1:3] != targets.shape[1:3]:
        (ph, pw), (th, tw) = preds.shape[1:3], targets.shape[1:3]
        raise ValueError(f"pred is {pw}×{ph} but target is {tw}×{th} (width×height); metrics need equal sizes")
    if pred_shape != target_shape:
        raise ValueError(f"pred has batch shape {pred_shape} but target {target_shape}; pairs must match one to one")
    if len(preds) == 0:
        raise ValueError("no images to compare")
    return preds, targets, pred_shape


def _as_batch(images: ImageInput, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """``images`` as an N×H×W×3 array of its own pixel type (uint8 or float) and the batch shape results take."""
    if isinstance(images, (list, tuple)):
        singles = [_as_batch(image, name) for image in images]
        if not singles or any(batch_shape for _, batch_shape in singles):
            raise ValueError(f"{name}: a list must hold one or more single images, not batches")
        if len({(single.shape, single.dtype) for single, _ in singles}) > 1:
            raise ValueError(f"{name}: the images of one list must share size and pixel type")
        return np.concatenate([single for single, _ in singles]), (len(singles),)
    if isinstance(images, Image.Image):
        images = to_array(images)
    if is_tensor(images):
        if images.ndim < 3 or images.shape[-3] != 3:
            raise ValueError(f"{name}: expected a …×3×H×W tensor, got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
            raise ValueError(f"{name}: pixels must be uint8, or float in [0, 1], not {images.dtype}")
        if images.dtype not in (torch.uint8, torch.float64):
            images = images.float()  # float16 and bfloat16 have no numpy twin
        images = images.detach().movedim(-3, -1).cpu().numpy()
    elif not isinstance(images, np.ndarray):
        raise TypeError(f"{name}: expected PIL images, numpy arrays or torch tensors, got {type(images).__name__}")
    elif images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"{name}: expected an H×W×3 or N×H×W×3 array, got shape {images.shape}")
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise ValueError(f"{name}: pixels must be uint8, or float in [0, 1], not {images.dtype}")
    return images.reshape(-1, *images.shape[-3:]), tuple(images.shape[:-3])


def _tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """N×H×W×3 pixels to ``device`` before widening (uint8 moves 4× fewer bytes), then a contiguous
    N×3×H×W float32 tensor in [0, 1]."""
    moved = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True).movedim(-1, -3)
    moved = moved.to(torch.float32, memory_format=torch.contiguous_format)
    return moved / 255 if images.dtype == np.uint8 else moved


def _channels_last(images: torch.Tensor) -> torch.Tensor:
    """Convolutional backbones run faster channels-last (oneDNN, cuDNN); values change only by rounding."""
    return images.contiguous(memory_format=torch.channels_last)


def _device(device: str | None) -> torch.device:
    return torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")


def _torch_checkpoints(metric: str, urls: Sequence[str]) -> Path:
    """The torch cache's checkpoint folder, after checking that every file ``metric`` loads from it is there."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    missing = [(folder / os.path.basename(urlparse(url).path), url) for url in urls]
    missing = [(path, url) for path, url in missing if not path.is_file()]
    if missing:
        files = "; ".join(f"{path} (from {url})" for path, url in missing)
        raise MissingWeightsError(
            f"{metric} needs weights missing from the torch cache: {files}. Put each file at exactly that "
            "path (the folder is $TORCH_HOME/hub/checkpoints, TORCH_HOME defaulting to ~/.cache/torch), "
            "e.g. `curl -L --create-dirs -o PATH URL` on a machine with network; metrics never download."
        )
    return folder


@functools.cache
def _lpips_network(net: str, device: torch.device, checkpoints: Path) -> torch.nn.Module:
    """Built once per net, device and weights folder (the folder in the key keeps tests' caches apart)."""
    import lpips as lpips_package

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision deprecates `pretrained=`, which lpips still passes
        model = lpips_package.LPIPS(net=net, verbose=False)
    return model.to(device, memory_format=torch.channels_last).eval()


@functools.cache
def _dists_network(device: torch.device, checkpoints: Path) -> torch.nn.Module:
    import piq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # as above: piq passes `pretrained=True` to torchvision
        model = piq.DISTS(reduction="none")
    return model.to(device, memory_format=torch.channels_last).eval()


def _dino_tokens(model: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images ``[B, 3, H, W]`` in [0, 1] to DINO's last hidden states ``[B, 1 + patches, D]`` (CLS first)."""
    network, processor = _dino_network(model, device)

    def tokens(images: torch.Tensor) -> torch.Tensor:
        pixels = processor(images=list(images), do_rescale=False, return_tensors="pt", device=images.device)
        return network(pixel_values=pixels["pixel_values"]).last_hidden_state

    return tokens


@functools.cache
def _dino_network(model: str, device: torch.device) -> tuple[torch.nn.Module, Callable]:
    from huggingface_hub.constants import HF_HUB_CACHE
    from transformers import ViTImageProcessor, ViTModel

    try:
        processor = ViTImageProcessor.from_pretrained(model, local_files_only=True)
        network = ViTModel.from_pretrained(model, add_pooling_layer=False, local_files_only=True)
    except OSError as e:
        raise MissingWeightsError(
            f"DINO model {model!r} is neither a folder holding config.json, preprocessor_config.json and "
            f"weights nor a model in the Hugging Face cache ({HF_HUB_CACHE}; HF_HOME or HF_HUB_CACHE move it). "
            f"Fetch a model id with `hf download {model}` on a machine with network; metrics never download."
        ) from e
    return network.to(device).eval(), processor

"""Image metrics of the benchmark (paper §4.1): PSNR, SSIM, LPIPS, DISTS and the DINO success ratio.

Every metric takes a pair of images, or two batches of the same length, each as a PIL image,
a numpy array (H×W×3 or N×H×W×3, uint8 or float in [0, 1]), a torch tensor (…×3×H×W, uint8
or float in [0, 1]) or a list of single images. One pair gives a float; batches give a float64
numpy array of the batch's shape, one value per pair. Pairs are processed ``batch_size`` at a
time on ``device`` (default: CUDA when present, else CPU). Images of different sizes are
refused, because a metric over resized pixels would no longer be the metric.

Weights are never downloaded here, so a benchmark run cannot change under a moving cache:
LPIPS and DISTS read torch's cache (``$TORCH_HOME/hub/checkpoints``), DINO the Hugging Face
cache or a local folder, and a missing file raises `MissingWeightsError` naming it and how
to provide it.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from seminft_bench.errors import MissingWeightsError
from seminft_bench.imaging import to_array

ImageInput = Image.Image | np.ndarray | torch.Tensor | Sequence[Image.Image | np.ndarray | torch.Tensor]
Values = float | np.ndarray

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
"""scikit-image's truncation of the Gaussian: radius int(3.5 · 1.5 + 0.5) = 5, the 11×11 window of Wang et al."""
SSIM_K1, SSIM_K2 = 0.01, 0.03

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

COMPARED_WITH = {"psnr": "target", "ssim": "target", "lpips": "target", "dists": "target", "dino": "source"}
"""The image each metric compares a method's output with: the true answer, or (content kept?) the source."""
METRIC_NAMES = tuple(COMPARED_WITH)


def psnr(
    pred: ImageInput, target: ImageInput, *, device: str | None = None,
    dtype: torch.dtype = torch.float32, batch_size: int = 16,
) -> Values:
    """Peak signal-to-noise ratio in dB for data range 1, as ``skimage.metrics.peak_signal_noise_ratio``.

    Identical images give ``inf`` (zero error), as in scikit-image: a capped value would let a
    perfect result pass for a merely good one. Mind the infinities before averaging.
    """
    return _per_pair(_psnr, pred, target, device=device, dtype=dtype, batch_size=batch_size)


def ssim(
    pred: ImageInput, target: ImageInput, *, device: str | None = None,
    dtype: torch.dtype = torch.float32, batch_size: int = 16,
) -> Values:
    """Mean SSIM of Wang et al. over the three channels, equal to scikit-image's
    ``structural_similarity(pred, target, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)``.

    As there, the mean covers only the pixels whose whole 11×11 window lies inside the image,
    so no border rule is involved; images must be at least 11×11. float32 agrees with
    scikit-image to about 1e-6, ``dtype=torch.float64`` to rounding.
    """
    return _per_pair(_ssim, pred, target, device=device, dtype=dtype, batch_size=batch_size)


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
    return _per_pair(
        lambda p, t: model(_channels_last(p), _channels_last(t), normalize=True).flatten(), pred, target,
        device=device, dtype=torch.float32, batch_size=batch_size,
    )


def dists(pred: ImageInput, target: ImageInput, *, device: str | None = None, batch_size: int = 8) -> Values:
    """DISTS (Ding et al.) via ``piq.DISTS``; its VGG16 backbone and alpha/beta weights come from the torch cache."""
    model = _dists_network(_device(device), _torch_checkpoints("DISTS", DISTS_URLS))
    return _per_pair(
        lambda p, t: model(_channels_last(p), _channels_last(t)), pred, target,
        device=device, dtype=torch.float32, batch_size=batch_size,
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
    network, processor = _dino_network(model, _device(device))

    def embed(images: torch.Tensor) -> torch.Tensor:
        pixels = processor(images=list(images), do_rescale=False, return_tensors="pt", device=images.device)
        return network(pixel_values=pixels["pixel_values"]).last_hidden_state[:, 0]

    return _per_pair(
        lambda s, o: F.cosine_similarity(embed(s), embed(o), dim=-1), source, output,
        device=device, dtype=torch.float32, batch_size=batch_size,
    )


def success(similarity: Values, threshold: float = DINO_THRESHOLD) -> bool | np.ndarray:
    """Whether outputs kept their source's content: DINO similarity above ``threshold``.

    The success ratio of the paper's tables is the mean of this over a method's outputs.
    """
    passed = np.asarray(similarity) > threshold
    return bool(passed) if passed.ndim == 0 else passed


@dataclass
class MetricSuite:
    """Several metrics by name over one batch, one value per pair: what the benchmark runner records.

    "psnr", "ssim", "lpips" and "dists" compare ``pred`` with ``target``; "dino" compares
    ``pred`` with ``source`` and adds "dino_success". `settings` is what to store beside the
    values so that they can be read later (the threshold above all).
    """

    names: Sequence[str] = ("psnr", "ssim", "lpips", "dists")
    lpips_net: str = "alex"
    dino_model: str = DINO_MODEL
    dino_threshold: float = DINO_THRESHOLD
    device: str | None = None

    def __post_init__(self) -> None:
        unknown = [name for name in self.names if name not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {', '.join(METRIC_NAMES)}")

    def __call__(
        self, pred: ImageInput, target: ImageInput | None = None, source: ImageInput | None = None,
    ) -> dict[str, np.ndarray]:
        results = {}
        for name in self.names:
            other_name = COMPARED_WITH[name]
            other = source if other_name == "source" else target
            if other is None:
                raise ValueError(f"metric {name!r} needs {other_name} images")
            results[name] = np.atleast_1d(self._metric(name)(pred, other))
        if "dino" in results:
            results["dino_success"] = success(results["dino"], self.dino_threshold)
        return results

    def settings(self) -> dict:
        return {**asdict(self), "names": list(self.names)}

    def _metric(self, name: str) -> Callable[[ImageInput, ImageInput], Values]:
        device = self.device
        return {
            "psnr": functools.partial(psnr, device=device),
            "ssim": functools.partial(ssim, device=device),
            "lpips": functools.partial(lpips, net=self.lpips_net, device=device),
            "dists": functools.partial(dists, device=device),
            "dino": lambda pred, source: dino_similarity(source, pred, model=self.dino_model, device=device),
        }[name]


def _psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """10·log10(1 / MSE). Squared errors are summed per image row in one fused pass (a few hundred float32
    terms lose nothing that matters), then across rows in float64."""
    row_norms = torch.linalg.vector_norm((pred - target).flatten(1, 2), dim=-1)
    return 10 * torch.log10(pred[0].numel() / row_norms.double().square().sum(dim=1))


def _ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    taps = _gaussian_taps()
    if min(pred.shape[-2:]) < len(taps):
        height, width = pred.shape[-2:]
        raise ValueError(f"SSIM needs images of at least {len(taps)}×{len(taps)} pixels, got {width}×{height}")
    # Windowed (co)variances are E[xy] − E[x]E[y]; shifting the data by 0.5 leaves them unchanged but halves
    # the largest magnitudes that cancel, which keeps float32 within about 1e-6 of float64 on flat regions.
    x, y = pred - 0.5, target - 0.5
    mu_x, mu_y, xx, yy, xy = _blur_inside(torch.cat([x, y, x * x, y * y, x * y], dim=1), taps).chunk(5, dim=1)
    var_sum = (xx + yy).sub_(mu_x.square()).sub_(mu_y.square())
    cov = xy.sub_(mu_x * mu_y)
    mu_x, mu_y = mu_x.add_(0.5), mu_y.add_(0.5)
    # Wang et al.: (2·μx·μy + C1)(2·σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)), in place.
    mu_xy = mu_x * mu_y
    mu_sq = mu_x.square().addcmul_(mu_y, mu_y)
    numerator = cov.mul_(2).add_(SSIM_K2**2).mul_(mu_xy.mul_(2).add_(SSIM_K1**2))
    denominator = var_sum.add_(SSIM_K2**2).mul_(mu_sq.add_(SSIM_K1**2))
    return numerator.div_(denominator).mean(dim=(1, 2, 3), dtype=torch.float64)


@functools.cache
def _gaussian_taps() -> tuple[float, ...]:
    """scipy.ndimage's Gaussian as scikit-image calls it: radius int(truncate·σ + 0.5), weights summing to 1."""
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / SSIM_SIGMA**2 * x**2)
    return tuple((weights / weights.sum()).tolist())


def _blur_inside(maps: torch.Tensor, taps: Sequence[float]) -> torch.Tensor:
    """Separable filter over the last two axes, kept where the whole window lies inside the image.

    On a GPU two depthwise convolutions read the maps once each; on a CPU, shifted sums beat
    PyTorch's depthwise convolution (by 1.4–2× in our measurements).
    """
    if maps.device.type == "cpu":
        for dim in (-1, -2):
            size = maps.shape[dim] - len(taps) + 1
            out = maps.narrow(dim, 0, size) * taps[0]
            for offset, weight in enumerate(taps[1:], start=1):
                out.add_(maps.narrow(dim, offset, size), alpha=weight)
            maps = out
        return maps
    channels = maps.shape[1]
    kernel = torch.tensor(taps, dtype=maps.dtype, device=maps.device)
    maps = F.conv2d(maps, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(maps, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


@torch.inference_mode()
def _per_pair(
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], pred: ImageInput, target: ImageInput, *,
    device: str | None, dtype: torch.dtype, batch_size: int,
) -> Values:
    """Run ``metric`` (two B×3×H×W tensors in [0, 1] → B values) over every pair, ``batch_size`` at a time."""
    pred, target, batch_shape = _as_pairs(pred, target)
    run_on = _device(device)
    values = [
        metric(_unit(pred[i : i + batch_size], run_on, dtype), _unit(target[i : i + batch_size], run_on, dtype))
        for i in range(0, len(pred), batch_size)
    ]
    result = torch.cat(values).to("cpu", torch.float64).numpy().reshape(batch_shape)
    return float(result) if result.ndim == 0 else result


def _as_pairs(pred: ImageInput, target: ImageInput) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    pred_tensor, pred_shape = _as_batch(pred, "pred")
    target_tensor, target_shape = _as_batch(target, "target")
    if pred_tensor.shape[-2:] != target_tensor.shape[-2:]:
        (ph, pw), (th, tw) = pred_tensor.shape[-2:], target_tensor.shape[-2:]
        raise ValueError(f"pred is {pw}×{ph} but target is {tw}×{th} (width×height); metrics need equal sizes")
    if pred_shape != target_shape:
        raise ValueError(f"pred has batch shape {pred_shape} but target {target_shape}; pairs must match one to one")
    if len(pred_tensor) == 0:
        raise ValueError("no images to compare")
    return pred_tensor, target_tensor, pred_shape


def _as_batch(images: ImageInput, name: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``images`` as a B×3×H×W tensor of its own dtype (uint8 or float) and the batch shape results take."""
    if isinstance(images, (list, tuple)):
        singles = [_as_batch(image, name) for image in images]
        if not singles or any(batch_shape for _, batch_shape in singles):
            raise ValueError(f"{name}: a list must hold one or more single images, not batches")
        if len({(single.shape, single.dtype) for single, _ in singles}) > 1:
            raise ValueError(f"{name}: the images of one list must share size and pixel type")
        return torch.cat([single for single, _ in singles]), (len(singles),)
    if isinstance(images, Image.Image):
        images = to_array(images)
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4) or images.shape[-1] != 3:
            raise ValueError(f"{name}: expected an H×W×3 or N×H×W×3 array, got shape {images.shape}")
        images = torch.from_numpy(np.require(images, requirements="CW")).movedim(-1, -3)
    elif not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected PIL images, numpy arrays or torch tensors, got {type(images).__name__}")
    elif images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"{name}: expected a …×3×H×W tensor, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise ValueError(f"{name}: pixels must be uint8, or float in [0, 1], not {images.dtype}")
    return images.reshape(-1, *images.shape[-3:]), tuple(images.shape[:-3])


def _unit(images: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """To ``device`` before widening (uint8 moves 4× fewer bytes), then to contiguous ``dtype`` in [0, 1]."""
    moved = images.to(device, non_blocking=True).to(dtype, memory_format=torch.contiguous_format)
    return moved / 255 if images.dtype == torch.uint8 else moved


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

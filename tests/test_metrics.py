"""Image metrics against their definitions: scikit-image for PSNR and SSIM (and the torch code they replaced), the
lpips and piq packages themselves (on the same weights files) for LPIPS and DISTS, a tiny random ViT for DINO."""

import math

import lpips as lpips_package
import numpy as np
import piq
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from seminft_bench.bench import metrics
from seminft_bench.bench.metrics import MissingWeightsError

PHOTOS = ["astronaut", "chelsea", "coffee"]  # 512×512, 451×300 (odd width), 600×400


def skimage_ssim(pred, target):
    return structural_similarity(
        as_float64(pred), as_float64(target), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1, channel_axis=-1,
    )


def skimage_psnr(pred, target):
    return peak_signal_noise_ratio(as_float64(target), as_float64(pred), data_range=1)


def as_float64(image):
    return image / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)


def regraded(image, seed):
    """A plausible method output: a tone curve, a colour cast and noise, back in uint8."""
    rng = np.random.default_rng(seed)
    graded = (image / 255.0) ** 1.2 * np.array([1.05, 0.97, 0.9]) + rng.normal(0, 0.02, image.shape)
    return np.round(np.clip(graded, 0, 1) * 255).astype(np.uint8)


def pairs(count, size=(48, 40), seed=0):
    """``count`` (pred, target) uint8 pairs cut from one real photo: an N×H×W×3 batch each."""
    height, width = size
    photo = skimage.data.astronaut()
    targets = np.stack([photo[40 * i : 40 * i + height, 30 * i : 30 * i + width] for i in range(count)])
    return regraded(targets, seed), targets


def to_tensor(images):
    return torch.from_numpy(images / 255.0).movedim(-1, -3).float()


# ---------------------------------------------------------------- PSNR and SSIM


@pytest.mark.parametrize("name", PHOTOS)
def test_psnr_and_ssim_equal_skimage_on_photos(name):
    target = getattr(skimage.data, name)()
    pred = regraded(target, seed=1)
    assert metrics.ssim(pred, target) == pytest.approx(skimage_ssim(pred, target), abs=1e-12)
    assert metrics.psnr(pred, target) == pytest.approx(skimage_psnr(pred, target), abs=1e-10)


@pytest.mark.parametrize("size", [(11, 11), (13, 30), (37, 64)])
def test_ssim_equals_skimage_on_random_float_images(size):
    rng = np.random.default_rng(sum(size))
    target = rng.uniform(0, 1, (*size, 3))
    pred = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1)
    assert metrics.ssim(pred, target) == pytest.approx(skimage_ssim(pred, target), abs=1e-12)


@pytest.mark.parametrize("level, noise", [(0.98, 0.002), (0.02, 0.002), (0.5, 0.0005)])
def test_ssim_equals_skimage_on_nearly_flat_float32_images(level, noise):
    """Nearly flat images are where windowed variances lose digits to cancellation."""
    rng = np.random.default_rng(3)
    target = np.clip(level + rng.normal(0, noise, (64, 64, 3)), 0, 1).astype(np.float32)
    pred = np.clip(target + rng.normal(0, noise, target.shape), 0, 1).astype(np.float32)
    assert metrics.ssim(pred, target) == pytest.approx(skimage_ssim(pred, target), abs=1e-12)


def torch_psnr_ssim_structure(pred, target):
    """The torch code these metrics were until issue 20 (float32 PSNR and SSIM as the defaults computed them, the
    structure in float64), written out with convolutions: the cells of earlier runs hold its values."""
    import torch.nn.functional as F

    x, y = to_tensor(pred[None]), to_tensor(target[None])
    row_norms = torch.linalg.vector_norm((x - y).flatten(1, 2), dim=-1)
    psnr = 10 * torch.log10(x[0].numel() / row_norms.double().square().sum(dim=1))

    taps = torch.exp(-0.5 / 1.5**2 * torch.arange(-5, 6, dtype=torch.float64) ** 2)
    taps = (taps / taps.sum()).float()
    maps = torch.cat([x - 0.5, y - 0.5, (x - 0.5) ** 2, (y - 0.5) ** 2, (x - 0.5) * (y - 0.5)], dim=1)
    maps = F.conv2d(maps, taps.view(1, 1, 1, -1).expand(15, 1, 1, -1), groups=15)
    mu_x, mu_y, xx, yy, xy = F.conv2d(maps, taps.view(1, 1, -1, 1).expand(15, 1, -1, 1), groups=15).chunk(5, dim=1)
    var_sum, cov = xx + yy - mu_x**2 - mu_y**2, xy - mu_x * mu_y
    mu_x, mu_y = mu_x + 0.5, mu_y + 0.5
    ssim_map = (2 * mu_x * mu_y + 1e-4) * (2 * cov + 9e-4) / ((mu_x**2 + mu_y**2 + 1e-4) * (var_sum + 9e-4))
    ssim = ssim_map.mean(dtype=torch.float64)

    def magnitude(rgb):
        luma = torch.tensordot(rgb.movedim(1, -1), rgb.new_tensor([0.2126, 0.7152, 0.0722]), dims=1).unsqueeze(1)
        sobel = rgb.new_tensor([[1, 0, -1], [2, 0, -2], [1, 0, -1]])
        return torch.hypot(F.conv2d(luma, sobel.view(1, 1, 3, 3)), F.conv2d(luma, sobel.T.reshape(1, 1, 3, 3))).flatten()

    a, b = magnitude(x.double()), magnitude(y.double())
    a, b = a - a.mean(), b - b.mean()
    structure = (a * b).sum() / (a.square().sum() * b.square().sum()).sqrt()
    return float(psnr), float(ssim), float(structure)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "rocket", "immunohistochemistry"])
def test_weight_free_metrics_keep_the_values_of_the_torch_code_they_replaced(name):
    """Their cell keys did not change, so the values of cells computed before must not either."""
    target = getattr(skimage.data, name)()
    pred = regraded(target, seed=2)
    before = torch_psnr_ssim_structure(pred, target)
    now = metrics.psnr(pred, target), metrics.ssim(pred, target), metrics.structure(pred, target)
    assert now == pytest.approx(before, rel=0, abs=1e-6)


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    photo = skimage.data.chelsea()
    assert metrics.psnr(photo, photo) == math.inf
    assert metrics.ssim(photo, photo) == pytest.approx(1.0, abs=1e-7)


def test_every_input_kind_gives_the_same_values():
    pred, target = skimage.data.coffee()[:50, :70], skimage.data.chelsea()[:50, :70]
    expected = skimage_ssim(pred, target), skimage_psnr(pred, target)
    kinds = [
        (pred, target),
        (Image.fromarray(pred), Image.fromarray(target)),
        ((pred / 255).astype(np.float32), (target / 255).astype(np.float32)),
        (to_tensor(pred), to_tensor(target)),
        (torch.from_numpy(pred).permute(2, 0, 1), torch.from_numpy(target).permute(2, 0, 1)),
        (Image.fromarray(pred), to_tensor(target).double()),
    ]
    for kind in kinds:
        assert (metrics.ssim(*kind), metrics.psnr(*kind)) == pytest.approx(expected, abs=1e-5)


def test_batches_give_the_values_of_pairs_one_by_one():
    preds, targets = pairs(5)
    one_by_one = [metrics.ssim(p, t) for p, t in zip(preds, targets)]
    np.testing.assert_array_equal(metrics.ssim(preds, targets), one_by_one)
    np.testing.assert_array_equal(metrics.ssim(list(preds), list(targets)), one_by_one)
    grid = metrics.psnr(to_tensor(preds[:4]).reshape(2, 2, 3, 48, 40), to_tensor(targets[:4]).reshape(2, 2, 3, 48, 40))
    assert grid.shape == (2, 2)
    np.testing.assert_allclose(grid.ravel(), [skimage_psnr(p, t) for p, t in zip(preds[:4], targets[:4])], atol=1e-5)


def test_mismatched_sizes_are_refused_naming_both():
    image = np.zeros((30, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=r"pred is 40×30 but target is 41×30"):
        metrics.ssim(image, np.zeros((30, 41, 3), np.uint8))
    with pytest.raises(ValueError, match=r"pred is 40×30 but target is 40×31"):
        metrics.psnr(Image.fromarray(image), torch.zeros(3, 31, 40))
    with pytest.raises(ValueError, match=r"batch shape \(2,\) but target \(3,\)"):
        metrics.psnr(np.stack([image] * 2), np.stack([image] * 3))
    with pytest.raises(ValueError, match="share size"):
        metrics.psnr([image, image[:29]], [image, image])


def test_bad_inputs_are_refused_clearly():
    image = np.zeros((30, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 11×11 pixels, got 10×30"):
        metrics.ssim(image[:, :10], image[:, :10])
    with pytest.raises(ValueError, match="H×W×3"):
        metrics.psnr(image[..., 0], image[..., 0])
    with pytest.raises(ValueError, match="uint8, or float"):
        metrics.psnr(image.astype(np.uint16), image.astype(np.uint16))
    with pytest.raises(TypeError, match="str"):
        metrics.psnr("photo.png", image)
    with pytest.raises(ValueError, match="one or more single images"):
        metrics.psnr([], [])


# ---------------------------------------------------------------- LPIPS and DISTS on a random torch cache


def save_random_checkpoint(build, path, seed):
    """Random weights for ``build()`` saved where torch's hub cache keeps the real ones.

    Tensors above 4M values (the classifier heads, which no metric uses) are saved as
    stride-0 views of one zero, so the files stay small.
    """
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in build().state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        size = math.prod(shape)
        if size > 2**22:
            state[name] = torch.zeros(()).expand(shape)
        else:
            state[name] = torch.randn(shape, generator=generator) * math.sqrt(2 * shape[0] / size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


@pytest.fixture(scope="module")
def random_torch_cache(tmp_path_factory):
    """A TORCH_HOME holding random AlexNet, VGG16 and DISTS weights under the files' real names."""
    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    save_random_checkpoint(torchvision.models.alexnet, checkpoints / "alexnet-owt-7be5be79.pth", seed=1)
    save_random_checkpoint(torchvision.models.vgg16, checkpoints / "vgg16-397923af.pth", seed=2)
    alpha_beta = torch.rand(2, 1, 1475, 1, 1, generator=torch.Generator().manual_seed(3)) / 2950
    torch.save({"alpha": alpha_beta[0], "beta": alpha_beta[1]}, checkpoints / "dists_weights.pt")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        yield checkpoints


TORCHVISION_PRETRAINED = "ignore:.*(pretrained|weight enum).*:UserWarning"  # lpips and piq still pass `pretrained=`


@pytest.mark.filterwarnings(TORCHVISION_PRETRAINED)
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_lpips_package_on_the_same_weights(random_torch_cache, net):
    """On the CPU, where both run the same float32 kernels (CUDA convolutions may use TF32)."""
    preds, targets = pairs(3, size=(64, 48))
    reference = lpips_package.LPIPS(net=net, verbose=False)  # reads the same cache files
    with torch.no_grad():
        expected = reference(2 * to_tensor(preds) - 1, 2 * to_tensor(targets) - 1).flatten().numpy()
    np.testing.assert_allclose(metrics.lpips(preds, targets, net=net, device="cpu", batch_size=2), expected, rtol=1e-5)
    assert metrics.lpips(preds[0], targets[0], net=net, device="cpu") == pytest.approx(expected[0], rel=1e-5)


@pytest.mark.filterwarnings(TORCHVISION_PRETRAINED)
def test_dists_equals_piq_on_the_same_weights(random_torch_cache):
    preds, targets = pairs(2, size=(64, 48))
    with torch.no_grad():
        expected = piq.DISTS(reduction="none")(to_tensor(preds), to_tensor(targets)).numpy()
    np.testing.assert_allclose(metrics.dists(list(preds), list(targets), device="cpu"), expected, rtol=1e-5)


def test_missing_weights_name_the_file_and_where_it_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    image = np.zeros((32, 32, 3), np.uint8)
    checkpoints = tmp_path / "hub" / "checkpoints"
    with pytest.raises(MissingWeightsError) as lpips_error:
        metrics.lpips(image, image)
    assert str(checkpoints / "alexnet-owt-7be5be79.pth") in str(lpips_error.value)
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in str(lpips_error.value)
    with pytest.raises(MissingWeightsError) as dists_error:
        metrics.dists(image, image)
    assert str(checkpoints / "vgg16-397923af.pth") in str(dists_error.value)
    assert str(checkpoints / "dists_weights.pt") in str(dists_error.value)
    assert "$TORCH_HOME/hub/checkpoints" in str(dists_error.value)


# ---------------------------------------------------------------- DINO success ratio


def test_dino_similarity_is_one_for_identical_images_and_batches_match(tiny_dino):
    photo, other = skimage.data.chelsea(), skimage.data.coffee()[:300, :451]
    assert metrics.dino_similarity(photo, photo, model=tiny_dino) == pytest.approx(1.0, abs=1e-5)
    different = metrics.dino_similarity(photo, other, model=tiny_dino)
    assert different < 1 - 1e-4
    batch = metrics.dino_similarity([photo, photo], [photo, other], model=tiny_dino, batch_size=1)
    np.testing.assert_allclose(batch, [1.0, different], atol=1e-5)


def test_dino_local_is_the_mean_patchwise_cosine_written_out_and_sees_moved_content(tiny_dino):
    from transformers import ViTImageProcessor, ViTModel

    photo = skimage.data.chelsea()
    shifted = np.roll(photo, photo.shape[1] // 2, axis=1)  # the same content, moved half a frame
    network = ViTModel.from_pretrained(tiny_dino, add_pooling_layer=False).eval()
    processor = ViTImageProcessor.from_pretrained(tiny_dino)

    def patches(image):  # CLS dropped
        pixels = processor(images=image.astype(np.float32) / 255, do_rescale=False, return_tensors="pt")
        with torch.no_grad():
            return network(**pixels).last_hidden_state[0, 1:].double().numpy()

    a, b = patches(photo), patches(shifted)
    expected = np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    got = metrics.dino_local_similarity(photo, shifted, model=tiny_dino)
    assert got == pytest.approx(expected, abs=1e-4)
    assert metrics.dino_local_similarity(photo, photo, model=tiny_dino) == pytest.approx(1.0, abs=1e-5)
    regraded = (np.clip(photo * [1.1, 0.95, 0.85], 0, 255)).astype(np.uint8)  # same content, other colours
    assert metrics.dino_local_similarity(photo, regraded, model=tiny_dino) > got
    assert metrics.get_metric("dino_local").compared_with == "source"


def test_success_is_similarity_strictly_above_the_threshold():
    assert metrics.success(0.9) is True
    assert metrics.success(metrics.DINO_THRESHOLD) is False
    np.testing.assert_array_equal(metrics.success(np.array([0.2, 0.5, 0.51]), threshold=0.5), [False, False, True])


def test_missing_dino_model_names_it_and_the_cache(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(MissingWeightsError, match="no-such-model") as error:
        metrics.dino_similarity(np.zeros((32, 32, 3)), np.zeros((32, 32, 3)), model=missing)
    assert "Hugging Face cache" in str(error.value) and "hf download" in str(error.value)


# ---------------------------------------------------------------- the suite


def test_compute_metrics_reports_each_metric_per_pair_and_what_they_use(tiny_dino):
    preds, targets = pairs(3, size=(48, 40))
    settings = metrics.MetricSettings(dino_model=tiny_dino, dino_threshold=0.999)
    results = metrics.compute_metrics(("psnr", "ssim", "success"), preds, {"target": targets, "source": targets}, settings)
    assert set(results) == {"psnr", "ssim", "dino", "success"}  # success is computed from dino
    np.testing.assert_allclose(results["ssim"], metrics.ssim(preds, targets))
    np.testing.assert_allclose(results["dino"], metrics.dino_similarity(targets, preds, model=tiny_dino))
    np.testing.assert_array_equal(results["success"], results["dino"] > 0.999)
    assert metrics.compute_metrics(("psnr",), preds[0], {"target": targets[0]})["psnr"].shape == (1,)
    with pytest.raises(ValueError, match="'dino' needs source"):
        metrics.compute_metrics(("success",), preds, {"target": targets}, settings)
    with pytest.raises(ValueError, match="unknown metric 'fid'"):
        metrics.compute_metrics(("psnr", "fid"), preds, {"target": targets})


def test_metric_settings_key_only_what_changes_a_metric():
    base, other = metrics.MetricSettings(), metrics.MetricSettings(dino_threshold=0.5, device="cpu")
    assert metrics.METRICS["success"].settings(base) != metrics.METRICS["success"].settings(other)
    assert metrics.METRICS["dino"].settings(base) == metrics.METRICS["dino"].settings(other)  # the threshold is not DINO's
    assert metrics.METRICS["psnr"].settings(base) == metrics.METRICS["psnr"].settings(other)  # nor is the device
    weight_free = {name for name, metric in metrics.METRICS.items() if metric.weights is None}
    assert {"psnr", "ssim", "color", "structure"} <= weight_free and "lpips" not in weight_free


# ---------------------------------------------------------------- weight-free metrics: structure and color


def independent_gradient_correlation(a, b):
    """scipy.ndimage's Sobel on Rec. 709 luma, cropped to the valid interior, then numpy's corrcoef."""
    from scipy import ndimage

    def magnitude(image):
        luma = (np.asarray(image, np.float64) / 255) @ np.array([0.2126, 0.7152, 0.0722])
        gradient = np.hypot(ndimage.sobel(luma, axis=1), ndimage.sobel(luma, axis=0))
        return gradient[1:-1, 1:-1].ravel()

    return np.corrcoef(magnitude(a), magnitude(b))[0, 1]


def test_structure_is_the_gradient_correlation_and_ignores_the_grade():
    from seminft_bench.presets import apply_lut, builtin_presets

    photo, other = skimage.data.astronaut()[::2, ::2], skimage.data.coffee()[:256, :256]
    graded = apply_lut(photo, builtin_presets()[5].to_lut())
    assert metrics.structure(photo, photo) == pytest.approx(1.0, abs=1e-12)
    assert metrics.structure(graded, photo) == pytest.approx(independent_gradient_correlation(graded, photo), abs=1e-9)
    brighter = np.clip(photo.astype(np.float64) * 0.6 + 40, 0, 255).round().astype(np.uint8)  # affine luminance
    assert metrics.structure(brighter, photo) > 0.99
    assert metrics.structure(other, photo) < 0.3 < 0.9 < metrics.structure(graded, photo)
    np.testing.assert_allclose(metrics.structure([graded, other], [photo, photo]), [metrics.structure(graded, photo), metrics.structure(other, photo)])


def test_color_is_the_lab_sliced_wasserstein_distance_to_the_reference():
    from seminft_bench.colorstats import sliced_wasserstein_lab

    photo, reference = skimage.data.astronaut()[::4, ::4], skimage.data.coffee()[::3, ::3]  # sizes differ
    assert metrics.color(photo, photo) == 0.0
    assert metrics.color(photo, reference) == sliced_wasserstein_lab(photo, reference) > 1
    assert list(metrics.color([photo, reference], [reference, reference])) == [metrics.color(photo, reference), 0.0]

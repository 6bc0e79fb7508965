"""FLUX components: tiny random ones, local loading, FLUX's latent maths, LoRA targets."""

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.flux.pipeline_flux_kontext import FluxKontextPipeline
from PIL import Image

from seminft_bench.errors import MissingWeightsError
from seminft_bench.model.caches import tiny_prompt_embeddings
from seminft_bench.model.components import (
    DEFAULT_BASE,
    FluxComponents,
    load_components,
    lora_target_regex,
    tiny_components,
)
from seminft_bench.model.config import LORA_TARGET_MODULES


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def _transformer_output(components: FluxComponents) -> torch.Tensor:
    """One denoiser call on fixed inputs: 64 image tokens (a 64×64 image) and 8 text tokens."""
    with torch.no_grad():
        return _transformer_output_with_grad(components)


def _transformer_output_with_grad(components: FluxComponents) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    dtype = components.transformer.dtype
    prompt = tiny_prompt_embeddings("a prompt").to(dtype=dtype)
    return components.transformer(
        hidden_states=torch.randn(1, 64, 16, generator=g).to(dtype),
        encoder_hidden_states=prompt.prompt_embeds,
        pooled_projections=prompt.pooled_prompt_embeds,
        timestep=torch.tensor([0.7], dtype=dtype),
        img_ids=torch.zeros(64, 3),
        txt_ids=prompt.text_ids,
        guidance=torch.tensor([3.5], dtype=dtype),
    ).sample


def _save_diffusers_folder(components: FluxComponents, folder) -> None:
    components.transformer.save_pretrained(folder / "transformer")
    components.vae.save_pretrained(folder / "vae")
    components.scheduler.save_pretrained(folder / "scheduler")


def test_same_seed_gives_bit_identical_weights_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = tiny_components(0), tiny_components(0)
    assert torch.equal(torch.rand(1), expected_next)
    _assert_same_weights(a.transformer, b.transformer)
    _assert_same_weights(a.vae, b.vae)
    other = tiny_components(1)
    assert not torch.equal(a.transformer.x_embedder.weight, other.transformer.x_embedder.weight)
    assert a.base == "tiny:0" and other.base == "tiny:1"


def test_tiny_shapes_match_flux_conventions():
    components = tiny_components()
    config = components.transformer.config
    assert config.in_channels == 4 * components.vae.config.latent_channels  # 2×2 packing
    assert sum(config.axes_dims_rope) == config.attention_head_dim
    assert components.vae.config.scaling_factor == pytest.approx(0.3611)
    assert components.vae.config.shift_factor == pytest.approx(0.1159)
    assert components.scheduler.config.use_dynamic_shifting
    images = torch.rand(2, 3, 64, 48)
    latents = components.encode(images)
    assert latents.shape == (2, 4, 16, 12)
    assert components.decode(latents).shape == images.shape


def test_vae_scale_factor_is_flux_pipelines():
    components = tiny_components()
    pipeline = FluxPipeline(components.scheduler, components.vae, None, None, None, None, components.transformer)
    assert components.vae_scale_factor == pipeline.vae_scale_factor == 4


def test_encode_matches_diffusers_kontext_image_latents():
    """FluxKontextPipeline encodes its context image with the posterior mode, then shifts and scales."""
    components = tiny_components()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
    pixels_in_minus1_1 = VaeImageProcessor(vae_scale_factor=8).preprocess(image)  # the pipeline's own preprocessing
    with torch.no_grad():
        expected = FluxKontextPipeline._encode_vae_image(components, pixels_in_minus1_1, generator=None)
    ours = components.encode(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None] / 255.0)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    assert torch.equal(components.encode(pixels_in_minus1_1 / 2 + 0.5), components.encode(pixels_in_minus1_1 / 2 + 0.5))


def test_decode_matches_flux_pipeline_output():
    """FluxPipeline's image equals our decode of the latents it returns with output_type="latent"."""
    components = tiny_components()
    pipeline = FluxPipeline(components.scheduler, components.vae, None, None, None, None, components.transformer)
    prompt = tiny_prompt_embeddings("a prompt")
    call = dict(
        prompt_embeds=prompt.prompt_embeds,
        pooled_prompt_embeds=prompt.pooled_prompt_embeds,
        height=64,
        width=64,
        num_inference_steps=2,
    )
    images = pipeline(**call, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    packed = pipeline(**call, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    latents = FluxPipeline._unpack_latents(packed, 64, 64, pipeline.vae_scale_factor)
    torch.testing.assert_close(components.decode(latents), images, rtol=0, atol=1e-6)


def test_save_pretrained_folder_loads_back_identical(tmp_path):
    original = tiny_components(seed=5)
    _save_diffusers_folder(original, tmp_path)
    loaded = load_components(tmp_path, device="cpu")
    assert loaded.base == str(tmp_path)
    assert loaded.transformer.dtype == torch.float32  # the CPU default
    _assert_same_weights(original.transformer, loaded.transformer)
    # bit-identical weights; the outputs agree to float32 rounding only, since CPU kernels take other
    # vectorised paths over the memory-mapped (differently aligned) tensors safetensors hands back
    torch.testing.assert_close(_transformer_output(original), _transformer_output(loaded), rtol=0, atol=1e-6)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(original.encode(images), loaded.encode(images))
    public = lambda config: {key: value for key, value in config.items() if not key.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(original.scheduler.config)


def test_load_components_honours_dtype_and_tiny_names():
    loaded = load_components("tiny:3", device="cpu", dtype=torch.bfloat16)
    assert loaded.transformer.dtype == torch.bfloat16 and loaded.vae.dtype == torch.bfloat16
    assert loaded.base == "tiny:3"
    reference = tiny_components(3, dtype=torch.bfloat16)
    _assert_same_weights(loaded.transformer, reference.transformer)
    with pytest.raises(ValueError, match="tiny:SEED"):
        load_components("tiny:x", device="cpu")


def test_missing_folder_and_empty_cache_name_where_and_how(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(MissingWeightsError) as caught:
        load_components(DEFAULT_BASE, device="cpu")
    message = str(caught.value)
    assert DEFAULT_BASE in message and str(cache) in message
    assert f"hf download {DEFAULT_BASE}" in message and "licence" in message

    with pytest.raises(MissingWeightsError, match="not a folder") as caught:
        load_components(tmp_path / "no-such-folder", device="cpu")
    assert "no-such-folder" in str(caught.value)


def test_folder_missing_a_part_names_it(tmp_path):
    tiny_components().transformer.save_pretrained(tmp_path / "transformer")
    with pytest.raises(MissingWeightsError) as caught:
        load_components(tmp_path, device="cpu")
    message = str(caught.value)
    assert "lacks vae/, scheduler/." in message
    assert str(tmp_path) in message and "hf download" in message


def test_incomplete_part_is_missing_weights(tmp_path):
    components = tiny_components()
    _save_diffusers_folder(components, tmp_path)
    for weights in (tmp_path / "vae").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(MissingWeightsError, match="incomplete"):
        load_components(tmp_path, device="cpu")


def test_lora_target_regex_adapts_every_block_and_nothing_else():
    from peft import LoraConfig

    transformer = tiny_components().transformer
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=lora_target_regex(LORA_TARGET_MODULES)))
    adapted = {name for name, module in transformer.named_modules() if hasattr(module, "lora_A")}
    double = [f"transformer_blocks.{i}.{path}" for i in range(2) for path in LORA_TARGET_MODULES[:12]]
    single = [
        f"single_transformer_blocks.{i}.{path}"
        for i in range(2)
        for path in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")
    ]
    assert adapted == set(double + single)
    assert "proj_out" not in adapted  # the model's final projection


def test_a_float8_base_keeps_its_outputs_and_trains_only_the_lora_on_top(tmp_path):
    from torchao.quantization import Float8Tensor

    from seminft_bench.model.lora import add_lora

    original = tiny_components(seed=5)
    _save_diffusers_folder(original, tmp_path)
    quantized = load_components(tmp_path, device="cpu", dtype=torch.bfloat16, quantize="float8")
    weight = quantized.transformer.transformer_blocks[0].attn.to_q.weight
    assert isinstance(weight, Float8Tensor)
    # e4m3 keeps 3 mantissa bits: the weights within 2^-4 relative, the outputs near the float32 model's
    dequantized = weight.dequantize().float()
    reference = original.transformer.transformer_blocks[0].attn.to_q.weight
    assert ((dequantized - reference).abs() <= reference.abs() / 16 + 1e-3).all()
    expected, got = _transformer_output(original), _transformer_output(quantized).float()
    assert (got - expected).norm() / expected.norm() < 0.1

    add_lora(quantized.transformer, "coldstart", rank=2, alpha=2, target_modules=LORA_TARGET_MODULES, seed=0)
    frozen = weight.dequantize().clone()
    trainable = [p for p in quantized.transformer.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _transformer_output_with_grad(quantized).float().square().mean().backward()
    optimizer.step()
    assert all(p.grad is not None for p in trainable)
    assert torch.equal(quantized.transformer.transformer_blocks[0].attn.to_q.base_layer.weight.dequantize(), frozen)


def test_nf4_needs_a_cuda_gpu(tmp_path):
    _save_diffusers_folder(tiny_components(seed=5), tmp_path)
    with pytest.raises(ValueError, match="nf4 runs on CUDA GPUs only"):
        load_components(tmp_path, device="cpu", quantize="nf4")

"""SemiNFTPipeline on the tiny random components: sizes, the condition cache, LoRA files, and `--method ours`."""

import pytest
import skimage.data
import torch
from PIL import Image

from seminft_bench.errors import MissingWeightsError
from seminft_bench.model.components import tiny_components
from seminft_bench.model.pipeline import LoraMismatchError, SemiNFTPipeline

SOURCE = skimage.data.astronaut()[::4, ::6]  # 86×128: portrait, not square
REFERENCE = skimage.data.coffee()[::5, ::5]  # 120×80: landscape, another size


def seeded():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def pipe():
    return SemiNFTPipeline.tiny(0)


def save_random_lora(transformer, folder, rank=2, seed=1):
    """A LoRA on the tiny transformer's attention projections, saved in diffusers' format."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name="made")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer, adapter_name="made"))
    return folder


def test_output_is_exactly_the_sources_size_whatever_the_aspect(pipe):
    out = pipe(SOURCE, REFERENCE, num_inference_steps=2, generator=seeded())
    assert out.mode == "RGB" and out.size == (SOURCE.shape[1], SOURCE.shape[0])
    width, height = pipe.work_size((86, 128))
    multiple = 2 * pipe.components.vae_scale_factor
    assert width % multiple == height % multiple == 0 and abs(width * height - pipe.pixel_area) < 0.15 * pipe.pixel_area
    assert abs(width / height - 86 / 128) < 0.1


def test_condition_cache_on_equals_off_before_decoding(pipe):
    cached = pipe.denoise(SOURCE, REFERENCE, num_inference_steps=4, generator=seeded())
    full = pipe.denoise(SOURCE, REFERENCE, num_inference_steps=4, generator=seeded(), use_condition_cache=False)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


def test_samples_drawn_in_one_batch_equal_one_at_a_time_cache_on_or_off(pipe):
    source, reference = pipe.encode_image(SOURCE), pipe.encode_image(REFERENCE)
    # CPU randn fills blocks of 16 numbers: one [3, 4, h, w] draw (h, w even) is three [1, 4, h, w] draws in a row
    generator = seeded()
    one_by_one = torch.cat([pipe.denoise_latents(source, reference, 3, generator=generator) for _ in range(3)])
    for cached in (True, False):
        batched = pipe.denoise_latents(source, reference, 3, generator=seeded(), use_condition_cache=cached, num_samples=3)
        torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)
    assert not torch.allclose(one_by_one[0], one_by_one[1])
    with pytest.raises(ValueError, match="one pair"):
        pipe.denoise_latents(source.expand(2, -1, -1, -1), reference.expand(2, -1, -1, -1), 1, num_samples=2)


def test_the_reference_and_the_seed_change_the_result(pipe):
    base = pipe.denoise(SOURCE, REFERENCE, num_inference_steps=3, generator=seeded())
    assert torch.equal(base, pipe.denoise(SOURCE, REFERENCE, num_inference_steps=3, generator=seeded()))
    other_reference = skimage.data.chelsea()[::4, ::4]
    assert not torch.allclose(base, pipe.denoise(SOURCE, other_reference, num_inference_steps=3, generator=seeded()))
    assert not torch.allclose(base, pipe.denoise(SOURCE, REFERENCE, num_inference_steps=3, generator=torch.Generator().manual_seed(1)))


def test_a_saved_lora_loads_changes_the_output_and_is_hashed(tmp_path):
    folder = save_random_lora(tiny_components(0).transformer, tmp_path / "lora")
    plain = SemiNFTPipeline.tiny(0).denoise(SOURCE, REFERENCE, num_inference_steps=2, generator=seeded())
    pipe = SemiNFTPipeline.from_pretrained("tiny:0", lora=[folder])
    with_lora = pipe.denoise(SOURCE, REFERENCE, num_inference_steps=2, generator=seeded())
    assert not torch.allclose(plain, with_lora)
    again = SemiNFTPipeline.from_pretrained("tiny:0", lora=[folder]).denoise(SOURCE, REFERENCE, num_inference_steps=2, generator=seeded())
    assert torch.equal(with_lora, again)
    assert list(pipe.lora_hashes()) == ["coldstart"] and len(pipe.lora_hashes()["coldstart"]) == 64
    rl = save_random_lora(tiny_components(0).transformer, tmp_path / "rl", seed=3)
    both = SemiNFTPipeline.from_pretrained("tiny:0", lora=[folder, rl])  # cold-start then RL, as stage 2 generates
    assert list(both.lora_hashes()) == ["coldstart", "rl"]
    assert not torch.allclose(with_lora, both.denoise(SOURCE, REFERENCE, num_inference_steps=2, generator=seeded()))


def test_a_main_branch_lora_leaves_the_condition_pass_to_the_base_and_cache_on_equals_off(tmp_path):
    from seminft_bench.model.lora import LORA_FILE, save_lora

    made = tiny_components(0).transformer
    save_random_lora(made, tmp_path / "all")  # a plain diffusers LoRA: no record, it runs on every branch
    save_lora(made, tmp_path / "main", "made", SemiNFTPipeline.tiny(0).record("main", "sft", 1))  # the same weights, recorded as trained with lora_on: main
    main_only, everywhere = tmp_path / "main", tmp_path / "all"
    assert (main_only / LORA_FILE).is_file()
    main_pipe, all_pipe = (SemiNFTPipeline.from_pretrained("tiny:0", lora=[f]) for f in (main_only, everywhere))
    base = SemiNFTPipeline.tiny(0)

    def condition_kv(pipe):
        return pipe.condition_cache(pipe.encode_image(SOURCE), pipe.encode_image(REFERENCE)).kv

    # the condition keys/values are exactly the base model's, as in lora_on: main training
    for (k, v), (k0, v0) in zip(condition_kv(main_pipe), condition_kv(base), strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    assert not torch.equal(condition_kv(all_pipe)[0][0], condition_kv(base)[0][0])
    assert main_pipe.components.transformer.active_adapters() == ["coldstart"]  # restored after the pass
    cached = main_pipe.denoise(SOURCE, REFERENCE, num_inference_steps=3, generator=seeded())
    full = main_pipe.denoise(SOURCE, REFERENCE, num_inference_steps=3, generator=seeded(), use_condition_cache=False)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
    assert not torch.allclose(cached, all_pipe.denoise(SOURCE, REFERENCE, num_inference_steps=3, generator=seeded()))


def test_a_lora_for_another_model_fails_clearly(tmp_path):
    from diffusers import FluxTransformer2DModel

    other = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(2, 3, 3),
    )
    folder = save_random_lora(other, tmp_path / "foreign")
    with pytest.raises(LoraMismatchError, match="not a LoRA for this FLUX transformer"):
        SemiNFTPipeline.tiny(0).load_lora_weights(folder)


def test_a_lora_that_also_adapts_a_text_encoder_is_refused_not_cut(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = save_random_lora(tiny_components(0).transformer, tmp_path / "both")
    file = folder / "pytorch_lora_weights.safetensors"
    tensors = load_file(file)
    tensors["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(2, 32)
    save_file(tensors, file)
    with pytest.raises(LoraMismatchError, match="text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight: no such"):
        SemiNFTPipeline.tiny(0).load_lora_weights(folder)


def test_missing_weights_name_what_is_missing(tmp_path):
    with pytest.raises(MissingWeightsError, match="no-flux-here"):
        SemiNFTPipeline.from_pretrained(str(tmp_path / "no-flux-here"))


def test_ours_runs_in_the_benchmark_and_a_changed_lora_is_remade(tmp_path):
    from seminft_bench.bench.datasets import load_bench_set
    from seminft_bench.bench.results import read_records
    from seminft_bench.bench.runner import RunOptions, run_benchmark

    bench_set = load_bench_set("demo", limit=2)
    lora = save_random_lora(tiny_components(0).transformer, tmp_path / "lora")
    run = RunOptions(methods=["identity", "ours"], judges=[], reward=None, metrics=["psnr", "structure"],
                     cache=str(tmp_path / "cache"), method_options={"ours": {"base": "tiny:0", "lora": [str(lora)], "steps": 2}})  # fmt: skip
    summary = run_benchmark(tmp_path / "run", run, bench_set=bench_set, log=lambda line: None)
    assert summary.failed == 0
    first = read_records(tmp_path / "run" / "results.jsonl")
    assert "ours: a tiny random-weight smoke model (tiny:0)" in (tmp_path / "run" / "report.md").read_text()
    for sample in bench_set.samples:
        output = Image.open(tmp_path / "run" / first[sample.name, "ours"]["output"])
        assert output.size == sample.image("source").size
    save_random_lora(tiny_components(0).transformer, lora, seed=2)  # the same file name, other weights
    run_benchmark(tmp_path / "run", run, bench_set=bench_set, log=lambda line: None)
    second = read_records(tmp_path / "run" / "results.jsonl")
    for sample in bench_set.samples:
        assert second[sample.name, "identity"] == first[sample.name, "identity"]
        assert second[sample.name, "ours"]["keys"]["generate"] != first[sample.name, "ours"]["keys"]["generate"]
        assert second[sample.name, "ours"]["metrics"]["psnr"] != first[sample.name, "ours"]["metrics"]["psnr"]

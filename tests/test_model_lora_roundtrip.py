"""A trained LoRA runs exactly as it was trained, under every setting a user varies.

For each point of a grid of training settings (rank ≠ alpha, ``lora_on`` all and main, condition
timestep 0, 0.3 and null, two working areas with a non-square source and a reference of another
size, a custom prompt, a float8 base), 2 tiny SFT steps are trained and saved; a fresh
`SemiNFTPipeline` loads the file and must give the training model's velocity on a fixed input
(float32, 1e-5). The same holds for an ``rl`` LoRA stacked on its cold-start LoRA after 2 NFT steps.
diffusers' own loaders must apply our files at the scale we train them at, and a warm latent cache
must train the same LoRA, bit for bit, as a cold one after the resolution or an image changed.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seminft_bench.imaging import sample_photo
from seminft_bench.model import nft, sft
from seminft_bench.model.config import NFTConfig
from seminft_bench.model.lora import LORA_FILE, LoraMismatchError, read_record
from seminft_bench.model.pipeline import SemiNFTPipeline
from test_model_nft_loop import write_pairs
from test_model_sft import tiny_config, write_coldstart

SOURCE = np.asarray(Image.fromarray(sample_photo("astronaut")).resize((56, 36)))  # non-square
REFERENCE = np.asarray(Image.fromarray(sample_photo("coffee")).resize((30, 44)))  # another size and aspect
CUSTOM_PROMPT = "Regrade the source photo with the colours and tones of the reference photo."


class Recorder:
    """Stands in for `SemiNFTPipeline` in a training module and keeps the pipelines the loop builds."""

    def __init__(self):
        self.made: list[SemiNFTPipeline] = []

    def __call__(self, *args, **kwargs) -> SemiNFTPipeline:
        self.made.append(SemiNFTPipeline(*args, **kwargs))
        return self.made[-1]


def trained_pipeline(module, monkeypatch, train, *args, **kwargs) -> tuple[Path, SemiNFTPipeline]:
    """Run ``train`` and return its output folder and the pipeline it trained, as it stands at the end."""
    recorder = Recorder()
    with monkeypatch.context() as patch:
        patch.setattr(module, "SemiNFTPipeline", recorder)
        out = train(*args, **kwargs)
    return out, recorder.made[-1]


@torch.no_grad()
def velocity(pipe: SemiNFTPipeline) -> torch.Tensor:
    """The pipeline's velocity on fixed noise at σ = 0.6 for the fixed source and reference, each encoded at the
    pipeline's working size (the full forward: every branch recomputed, no cache)."""
    source, reference = pipe.encode_image(SOURCE), pipe.encode_image(REFERENCE)
    noisy = torch.randn(source.shape, generator=torch.Generator().manual_seed(0))
    return pipe.velocity(noisy, 0.6, source=source, reference=reference)


def assert_same_velocity(loaded: SemiNFTPipeline, trained: SemiNFTPipeline) -> None:
    expected, got = velocity(trained), velocity(loaded)
    assert got.shape == expected.shape, "the loaded LoRA runs at another working size"
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def coldstart(tmp_path_factory) -> Path:
    return write_coldstart(tmp_path_factory.mktemp("coldstart"), size=(48, 32), reference_size=(24, 40))


GRID = {
    "rank 4 alpha 16, all, t 0, 48²": dict(lora_rank=4, lora_alpha=16, resolution=48),
    "rank 8 alpha 2, main, t 0.3, 32², custom prompt": dict(
        lora_rank=8, lora_alpha=2, lora_on="main", condition_timestep=0.3, resolution=32, prompt=CUSTOM_PROMPT
    ),
    "rank 4 alpha 12, all, t null, 40²": dict(lora_rank=4, lora_alpha=12, condition_timestep=None, resolution=40),
}


@pytest.mark.parametrize("settings", GRID.values(), ids=GRID.keys())
def test_a_saved_lora_runs_in_a_fresh_pipeline_as_at_the_end_of_training(coldstart, tmp_path, monkeypatch, settings):
    config = tiny_config(coldstart, tmp_path / "run", steps=2, **settings)
    out, trained = trained_pipeline(sft, monkeypatch, sft.train_sft, config, tiny=True, cache_dir=tmp_path / "cache")
    loaded = SemiNFTPipeline.from_pretrained("tiny:0", lora=[out])
    record = read_record(out)
    assert (record.peft["r"], record.peft["lora_alpha"], record.lora_on) == (config.lora_rank, config.lora_alpha, config.lora_on)
    assert (loaded.condition_timestep, loaded.pixel_area) == (config.condition_timestep, config.resolution**2)
    assert loaded.prompt_text == (config.prompt or trained.prompt_text)
    assert_same_velocity(loaded, trained)
    # and diffusers' own loaders apply the file at the scale it was trained at
    assert_diffusers_loads_at_our_scale(out, loaded)


def test_a_lora_trained_on_a_float8_base_runs_as_trained(tiny_flux_folder, coldstart, tmp_path, monkeypatch):
    folder, _ = tiny_flux_folder  # a FLUX folder with text encoders: the prompt goes through them and their cache
    config = tiny_config(coldstart, tmp_path / "run", steps=2, base=str(folder), quantize_base="float8",
                         lora_rank=4, lora_alpha=8, resolution=32, mixed_precision="no")  # fmt: skip
    cache = tmp_path / "cache"
    out, trained = trained_pipeline(sft, monkeypatch, sft.train_sft, config, cache_dir=cache)
    loaded = SemiNFTPipeline.from_pretrained(folder, lora=[out], quantize="float8", device="cpu", cache_dir=cache)
    assert read_record(out).prompt_key == loaded.prompts.key(loaded.prompt_text)
    assert_same_velocity(loaded, trained)
    # the same LoRA loads on the unquantised base (one model), and runs there within float8's rounding only
    unquantised = velocity(SemiNFTPipeline.from_pretrained(folder, lora=[out], device="cpu", cache_dir=cache))
    expected = velocity(trained)
    assert not torch.allclose(unquantised, expected, rtol=0, atol=1e-5)
    assert (unquantised - expected).norm() < 0.1 * expected.norm()


def assert_diffusers_loads_at_our_scale(out: Path, ours: SemiNFTPipeline) -> None:
    """FLUX with the LoRA loaded by diffusers (`FluxPipeline.load_lora_weights` and
    `FluxTransformer2DModel.load_lora_adapter`) computes what our loaded transformer computes."""
    from diffusers import FluxPipeline

    from seminft_bench.model.components import tiny_components

    by_pipeline = tiny_components(0)
    FluxPipeline(by_pipeline.scheduler, by_pipeline.vae, None, None, None, None, by_pipeline.transformer).load_lora_weights(out)
    by_adapter = tiny_components(0).transformer
    by_adapter.load_lora_adapter(str(out), weight_name=LORA_FILE, prefix="transformer")
    expected = plain_flux(ours.components.transformer)
    for transformer in (by_pipeline.transformer, by_adapter):
        torch.testing.assert_close(plain_flux(transformer), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(plain_flux(tiny_components(0).transformer), expected, atol=1e-3)  # the LoRA matters


@torch.no_grad()
def plain_flux(transformer) -> torch.Tensor:
    """diffusers' own `FluxTransformer2DModel.forward` on fixed inputs (no branches, no mask)."""
    g = torch.Generator().manual_seed(3)
    config = transformer.config
    return transformer(
        hidden_states=torch.randn(1, 12, config.in_channels, generator=g),
        encoder_hidden_states=torch.randn(1, 5, config.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=g),
        timestep=torch.tensor([0.4]), img_ids=torch.randint(0, 4, (12, 3), generator=g).float(), txt_ids=torch.zeros(5, 3),
        guidance=torch.tensor([3.5]), return_dict=False,
    )[0]


def test_an_rl_lora_stacked_on_its_cold_start_lora_runs_as_trained(coldstart, tmp_path, monkeypatch):
    settings = dict(lora_rank=4, lora_alpha=16, condition_timestep=0.3, resolution=40, prompt=CUSTOM_PROMPT)
    sft_out = sft.train_sft(tiny_config(coldstart, tmp_path / "sft", steps=2, **settings), tiny=True, cache_dir=tmp_path / "c")
    pairs = write_pairs(tmp_path / "pairs")
    config = NFTConfig().override(
        dataset=str(pairs), coldstart_lora=str(sft_out), out=str(tmp_path / "nft"), base="tiny:0", steps=2,
        groups_per_step=1, group_online=3, group_offline=0, rollout_steps=2, reward="color-stats", lora_rank=8,
        lora_alpha=2, learning_rate=1e-2, validate_every=1000, checkpoint_every=1000, lora_on="main",
        **{key: settings[key] for key in ("condition_timestep", "resolution", "prompt")},
    )  # fmt: skip
    nft_out, trained = trained_pipeline(nft, monkeypatch, nft.train_nft, config, tiny=True, cache_dir=tmp_path / "c")
    assert trained.active_adapters[0] == ["coldstart", "rl"]
    loaded = SemiNFTPipeline.from_pretrained("tiny:0", lora=[sft_out, nft_out])
    assert loaded.lora_on == {"coldstart": "all", "rl": "main"}
    assert_same_velocity(loaded, trained)

    # an NFT run under other settings than its cold-start LoRA's is refused, naming both and the setting
    with pytest.raises(LoraMismatchError, match=r"cold-start LoRA .*sft.* and this NFT run's config differ in condition_timestep"):
        nft.train_nft(config.override(condition_timestep=0.0, out=str(tmp_path / "x")), tiny=True, cache_dir=tmp_path / "c")
    with pytest.raises(LoraMismatchError, match="differ in pixel_area"):
        nft.train_nft(config.override(resolution=48, out=str(tmp_path / "x")), tiny=True, cache_dir=tmp_path / "c")


def test_stacked_loras_trained_under_other_settings_are_refused(coldstart, tmp_path):
    first = sft.train_sft(tiny_config(coldstart, tmp_path / "a", steps=1), tiny=True, cache_dir=tmp_path / "c")
    other = sft.train_sft(tiny_config(coldstart, tmp_path / "b", steps=1, condition_timestep=None), tiny=True,
                          cache_dir=tmp_path / "c")  # fmt: skip
    with pytest.raises(LoraMismatchError) as caught:
        SemiNFTPipeline.from_pretrained("tiny:0", lora=[first, other])
    assert all(part in str(caught.value) for part in (str(first), str(other), "condition_timestep", "0.0", "None"))
    with pytest.raises(LoraMismatchError, match=re.escape("this pipeline runs 'tiny:0'")):
        bigger = SemiNFTPipeline.tiny(0)
        bigger.components.transformer.register_to_config(num_layers=3)  # another model's config
        bigger.load_lora_weights(first)


def test_a_warm_cache_trains_what_a_cold_one_does_after_the_resolution_or_an_image_changed(tmp_path, capsys):
    data = write_coldstart(tmp_path / "data")
    warm = tmp_path / "warm"

    def train(name: str, cache: Path, **overrides) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        out = sft.train_sft(tiny_config(data, tmp_path / name, steps=2, **overrides), tiny=True, cache_dir=cache)
        return load_file(out / LORA_FILE)

    def encoded() -> int:
        return int(re.findall(r"(\d+) images encoded", capsys.readouterr().out)[-1])

    train("first", warm, resolution=48)
    assert encoded() == 12
    at_32 = train("at-32", warm, resolution=32)
    assert encoded() == 12  # every latent has another size: all encoded again, none served stale
    assert_bit_equal(at_32, train("at-32-cold", tmp_path / "cold-1", resolution=32))
    write_coldstart(data, swap_source=1)  # one image replaced in place, the sample's id unchanged
    changed = train("changed", warm, resolution=32)
    assert encoded() == 1  # only the new image
    assert_bit_equal(changed, train("changed-cold", tmp_path / "cold-2", resolution=32))
    assert not all(torch.equal(changed[k], at_32[k]) for k in changed)


def assert_bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

"""`seminft-train plan`: its FLOPs against a count by hand, its memory against the CPU heap of the same step, its
per-block extrapolation against a direct run, and the command on tiny and FLUX.1-dev-sized configs."""

import pytest
import torch
from typer.testing import CliRunner

from seminft_bench.cli.train import app
from seminft_bench.model import plan
from seminft_bench.model.components import FLUX_DEV_TRANSFORMER, TINY_TRANSFORMER
from seminft_bench.model.config import NFTConfig, SFTConfig, save_config

FLUX_WIDTH = dict(FLUX_DEV_TRANSFORMER, num_layers=1, num_single_layers=1)
D = FLUX_DEV_TRANSFORMER["num_attention_heads"] * FLUX_DEV_TRANSFORMER["attention_head_dim"]


def forward_flops(model_config: dict, shapes: plan.Shapes) -> float:
    """FLOPs of one forward pass over all three branches (no cache, no LoRA, no gradients)."""
    semi = plan.meta_transformer(model_config, torch.bfloat16, {}, (), False)
    inputs = plan.packed_inputs(shapes, model_config, 1, torch.bfloat16)

    def step() -> None:
        with torch.no_grad():
            semi(inputs["noisy"], inputs["noisy_ids"], inputs["reference"], inputs["reference_ids"], inputs["source"],
                 inputs["source_ids"], inputs["encoder_hidden_states"], inputs["pooled_projections"], inputs["txt_ids"],
                 inputs["timestep"], inputs["guidance"])  # fmt: skip

    return plan.measure(step, semi, list(inputs.values()), torch.bfloat16).flops


@pytest.mark.parametrize("side", [16, 24])
def test_a_blocks_flops_are_two_params_tokens_plus_the_branch_attention(side):
    """Linear layers: 2 · weights · tokens (the modulations on one temb row per branch kind). Attention:
    4 · heads · head_dim · Σ queries × keys, where text and noisy queries see every key and each condition only its own."""
    shapes = plan.Shapes(text=32, latent_channels=16, latent_side=side)
    text, image = shapes.text, shapes.image
    attention = 4 * D * ((text + image) * (text + 3 * image) + 2 * image**2)
    double = 2 * 12 * D**2 * (3 * image) + 2 * 12 * D**2 * text + 2 * 6 * D**2 * 3 + attention
    single = 2 * 12 * D**2 * (text + 3 * image) + 2 * 3 * D**2 * 2 + attention
    one = forward_flops(FLUX_WIDTH, shapes)
    assert forward_flops(dict(FLUX_WIDTH, num_layers=2), shapes) - one == double
    assert forward_flops(dict(FLUX_WIDTH, num_single_layers=2), shapes) - one == single


def test_the_per_block_extrapolation_equals_a_run_of_the_whole_model():
    model = dict(TINY_TRANSFORMER, num_layers=3, num_single_layers=4)
    shapes = plan.Shapes(text=8, latent_channels=4, latent_side=16)
    config = SFTConfig(lora_rank=4, lora_alpha=4)
    for checkpointing in (True, False):
        direct = plan.sft_cost(config, model, shapes, checkpointing, "all")
        extrapolated = plan.per_block(lambda m: {"step": plan.sft_cost(config, m, shapes, checkpointing, "all")}, model)["step"]
        assert extrapolated.flops == direct.flops
        assert extrapolated.live == pytest.approx(direct.live, rel=0.02)


MEASURED = {
    "FLUX.1-dev width (1 + 1 blocks), 128², 512 text tokens": (FLUX_WIDTH, plan.Shapes(text=512, latent_channels=16, latent_side=16)),
    "tiny (2 + 2 blocks), 64²": (TINY_TRANSFORMER, plan.Shapes(text=8, latent_channels=4, latent_side=16)),
}


@pytest.mark.parametrize(("model", "checkpointing", "lora_on"), [
    *[(next(iter(MEASURED)), *variant) for variant in ((False, "all"), (True, "main"))],  # a few seconds each
    *[("tiny (2 + 2 blocks), 64²", *variant) for variant in ((False, "all"), (True, "all"), (True, "main"))],
])  # fmt: skip
def test_the_plans_step_memory_is_within_20_percent_of_the_cpu_allocators_peak(model, checkpointing, lora_on):
    """The plan (meta device) against a real float32 step of random weights, with ranks ≠ alphas."""
    model_config, shapes = MEASURED[model]
    config = SFTConfig(lora_rank=8, lora_alpha=32, gradient_checkpointing=checkpointing, lora_on=lora_on)
    predicted = plan.sft_cost(config, model_config, shapes, checkpointing, lora_on, dtype=torch.float32).live
    measured = plan.cpu_sft_step_bytes(model_config, shapes, config)
    assert predicted == pytest.approx(measured, rel=0.2)


def test_plan_command_for_tiny_configs(tmp_path):
    sft = save_config(SFTConfig(base="tiny:0", resolution=64, steps=40), tmp_path / "sft.yaml")
    result = CliRunner().invoke(app, ["plan", "--config", str(sft), "--gpu", "rtx4090"])
    assert result.exit_code == 0, result.output
    assert "SFT of tiny:0 at 64² (64 tokens a branch, 8 text)" in result.output and "40 steps" in result.output
    assert "fits RTX 4090 24 GB" in result.output
    nft = save_config(NFTConfig(base="tiny:0", resolution=64, init="base", group_online=4, micro_batch=2), tmp_path / "nft.yaml")
    for kind in ("nft", "infer"):
        result = CliRunner().invoke(app, ["plan", "--config", str(nft), "--kind", kind])
        assert result.exit_code == 0, result.output
    assert "activations of a training chunk of 2" in CliRunner().invoke(app, ["plan", "--config", str(nft), "--kind", "nft"]).output
    bad = CliRunner().invoke(app, ["plan", "--gpu", "v100"])
    assert bad.exit_code == 2 and "gpu must be one of h100" in bad.output


@pytest.mark.slow
def test_flux_dev_sft_does_not_fit_a_24_gb_card_without_checkpointing_and_says_what_would():
    config = SFTConfig(gradient_checkpointing=False)
    text = plan.render(plan.plan_sft(config, plan.GPUS["rtx4090"]))
    assert "does NOT fit RTX 4090" in text and "fits with gradient_checkpointing: true" not in text
    assert "fits with quantize_base: nf4" in text or "fits with all of them" in text
    assert "fits H100" in plan.render(plan.plan_sft(SFTConfig(), plan.GPUS["h100"]))

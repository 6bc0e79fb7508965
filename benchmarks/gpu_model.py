"""SemiNFT model figures on one GPU: SFT step time and peak memory, and 28-step inference with and without
the condition KV cache, on a transformer of FLUX.1-dev's real size with random bf16 weights (no download).

    .venv/bin/python benchmarks/gpu_model.py            # FLUX.1-dev dimensions, CUDA, bf16
    .venv/bin/python benchmarks/gpu_model.py --tiny     # the tiny test config on CPU (to debug this script)

Inputs are 512² target + reference + source, i.e. 3 × 1,024 image tokens, and 512 text tokens,
as in the paper's training. An SFT step is `sft.flow_matching_loss` (the training loop's own loss:
logit-normal σ, rectified flow on the noisy branch, LoRA rank 16 on the attention and feed-forward
projections), its backward and an AdamW step; it is timed with and without gradient checkpointing,
with ``lora_on: all`` and ``main`` (conditions once, without LoRA or gradients), and with the frozen
base stored as float8 (torchao, weight-only). Inference is 28 Euler steps of the
transformer alone (the VAE is not part of the comparison), the condition tokens computed at every
step (no cache) or once (cache). Targets (issue #11): SFT step ≤ 1.0 s, cache ≥ 2× faster.
"""

import argparse
import time

import torch
from diffusers import FluxTransformer2DModel

from seminft_bench.model import plan
from seminft_bench.model.components import FLUX_DEV_TRANSFORMER, TINY_TRANSFORMER
from seminft_bench.model.config import LORA_TARGET_MODULES, SFTConfig
from seminft_bench.model.lora import add_lora
from seminft_bench.model.sft import flow_matching_loss
from seminft_bench.model.transformer import SemiNFTTransformer

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function, device: torch.device, repeats: int) -> float:
    function()  # warm-up (kernels, allocator)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def sft_step_seconds(
    model: SemiNFTTransformer, batch: dict, lora_on: str, checkpointing: bool, device: torch.device, repeats: int
) -> tuple[float, float]:
    """Seconds per LoRA SFT step and the peak memory in GiB (0 on CPU)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    flux = model.flux
    flux.enable_gradient_checkpointing() if checkpointing else flux.disable_gradient_checkpointing()
    flux.train()
    optimizer = torch.optim.AdamW([p for p in flux.parameters() if p.requires_grad], lr=1e-4)
    config = SFTConfig(lora_on=lora_on, gradient_checkpointing=checkpointing)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0)
    dtype = flux.dtype

    def step() -> None:
        generator = torch.Generator().manual_seed(0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = flow_matching_loss(model, model, batch, config, scheduler, generator, dtype)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, device, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return seconds, peak


@torch.inference_mode()
def inference_seconds(model: SemiNFTTransformer, batch: dict, cached: bool, steps: int, device: torch.device) -> float:
    model.flux.eval()
    conditions = {key: batch[key] for key in ("reference", "reference_ids", "source", "source_ids")}
    text = {key: batch[key] for key in ("encoder_hidden_states", "pooled_projections", "txt_ids")}

    def run() -> None:
        latents, cache = batch["noisy"], None
        if cached:
            cache = model.build_condition_cache(**conditions, pooled_projections=text["pooled_projections"], guidance=batch["guidance"])
        for i in range(steps):
            t = torch.full((1,), 1 - i / steps, device=device)
            step_conditions = dict.fromkeys(conditions) if cached else conditions
            velocity = model(latents, batch["noisy_ids"], **step_conditions, **text, timestep=t, guidance=batch["guidance"], cache=cache)
            latents = latents - velocity / steps

    return timed(run, device, 1)


def quantize_float8(flux: FluxTransformer2DModel) -> None:
    """The frozen base's linear layers as float8 weight-only (what ``quantize_base: float8`` loads)."""
    from torchao.quantization import Float8WeightOnlyConfig, quantize_

    quantize_(flux, Float8WeightOnlyConfig(), filter_fn=lambda module, name: isinstance(module, torch.nn.Linear) and "blocks." in name)


def build(config: dict, device: torch.device, dtype: torch.dtype, float8: bool) -> SemiNFTTransformer:
    torch.manual_seed(0)
    with torch.device(device):  # built on the GPU directly: 12B random parameters never touch the host
        flux = FluxTransformer2DModel(**config)
    if dtype != torch.float32:
        flux = flux.to(dtype)
    if float8:
        quantize_float8(flux)
    add_lora(flux, "coldstart", rank=16, alpha=16, target_modules=LORA_TARGET_MODULES, seed=0)
    return SemiNFTTransformer(flux)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="The tiny test transformer on CPU.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=28)
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    config = TINY_TRANSFORMER if args.tiny else FLUX_DEV_TRANSFORMER
    grid, text_tokens = (4, 8) if args.tiny else (32, 512)
    model = build(config, device, dtype, float8=False)
    shapes = plan.Shapes(text_tokens, config["in_channels"] // 4, 2 * grid)  # grid × grid tokens a branch
    batch = plan.packed_inputs(shapes, config, 1, dtype, device=device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{'tiny' if args.tiny else 'FLUX.1-dev-sized'} transformer, {dtype}, on {name}: 3 x {grid * grid} image + {text_tokens} text tokens")
    card = plan.gpu_of(name)
    base, side = ("tiny:0", 8 * grid) if args.tiny else ("black-forest-labs/FLUX.1-dev", 16 * grid)
    sft_plan = plan.plan_sft(SFTConfig(base=base, resolution=side), card).figures
    print(f"  beside each figure, in brackets: `seminft-train plan` for {card.name} at {plan.UTILISATION:.0%} utilisation")
    sft_batch = plan.sft_batch(shapes, config, 1, dtype, device=device)
    for lora_on in ("all", "main"):
        for checkpointing in (False, True):
            seconds, peak = sft_step_seconds(model, sft_batch, lora_on, checkpointing, device, args.repeats)
            planned = sft_plan[f"peak {'on' if checkpointing else 'off'} {lora_on}"] / 2**30
            print(f"  SFT step, lora_on {lora_on:4}, checkpointing {'on ' if checkpointing else 'off'}: {seconds:.3f} s "
                  f"[{sft_plan['step seconds']:.3f} s at rank 16], peak {peak:.1f} GiB [{planned:.1f} GiB]")  # fmt: skip
    infer_plan = plan.plan_infer(base, side, card, {"coldstart": (16, 16)}, LORA_TARGET_MODULES, args.steps).figures
    plain = inference_seconds(model, batch, cached=False, steps=args.steps, device=device)
    cached = inference_seconds(model, batch, cached=True, steps=args.steps, device=device)
    print(f"  {args.steps}-step inference: no cache {plain:.2f} s, condition cache {cached:.2f} s "
          f"[{infer_plan['image seconds']:.2f} s]: {plain / cached:.2f}x")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    seconds, peak = sft_step_seconds(build(config, device, dtype, float8=True), sft_batch, "all", True, device, args.repeats)
    print(f"  SFT step, float8 base, lora_on all, checkpointing on: {seconds:.3f} s, peak {peak:.1f} GiB "
          f"[{sft_plan['peak float8'] / 2**30:.1f} GiB]")


if __name__ == "__main__":
    main()

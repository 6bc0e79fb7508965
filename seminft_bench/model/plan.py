"""`seminft-train plan`: the memory, FLOPs and time of a config's steps at its real size, before any download.

How it is measured, without weights or a GPU:
- The configured transformer is built on PyTorch's ``meta`` device (shapes and dtypes, no storage) with
  the LoRAs its stage adds, and one step runs on it through the model's own code: SFT's
  `sft.flow_matching_loss` and its backward; for NFT, the condition caches, the rollout's denoising
  steps and Eq. 1's training pass at one noise level; for inference, the cache and a denoising step.
- `torch.utils.flop_counter.FlopCounterMode` counts the FLOPs. `LiveBytes`, a dispatch mode, follows
  every tensor storage the step creates until it is freed; its peak is the memory of activations,
  temporaries and gradients. Attention runs as a fused kernel that keeps no score matrix
  (`torch.ops.aten._scaled_dot_product_efficient_attention`, what SDPA runs on a GPU), and linear
  layers in the compute dtype, as mixed precision's autocast runs them.
- Blocks repeat: runs with 1 + 1, 2 + 1 and 1 + 2 double + single blocks give the cost of each block,
  extrapolated to the model's own counts (`per_block`), so a plan of FLUX.1-dev takes seconds.
- Weights, LoRAs and AdamW's states are counted from the parameters. A quantised base is counted at
  its storage size (float8: 1 byte a weight; NF4: half a byte plus a float32 scale per 64), its
  activations unchanged: derived, not run.
- Time is the FLOPs over the card's datasheet dense bf16 peak times `UTILISATION`, a stated guess
  that a measured step calibrates (`benchmarks/gpu_model.py` and `gpu_nft.py` print both).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from seminft_bench.model.components import FLUX_DEV_TRANSFORMER, FLUX_SCHEDULER_CONFIG, TINY_PREFIX, TINY_TRANSFORMER
from seminft_bench.model.conditioning import image_ids
from seminft_bench.model.config import NFTConfig, SFTConfig

GIB, MIB = 2**30, 2**20
UTILISATION = 0.4
"""The share of the card's bf16 peak a FLUX LoRA step sustains (model FLOPs utilisation): a guess until measured."""
RESERVED = 1.5 * GIB
"""CUDA context, cuBLAS workspaces and the caching allocator's slack, on top of what the step holds."""
INFERENCE_STEPS = 28
"""The paper's sampling steps (§4.1)."""
KINDS = ("sft", "nft", "infer")


@dataclass(frozen=True)
class Gpu:
    name: str
    memory: int
    """Bytes usable, as nvidia-smi reports them."""
    bf16: float
    """Datasheet dense bf16 tensor-core FLOP/s."""


GPUS = {
    "h100": Gpu("H100 SXM 80 GB", 81_559 * MIB, 989.4e12),
    "h200": Gpu("H200 SXM 141 GB", 143_771 * MIB, 989.4e12),
    "a100-80g": Gpu("A100 SXM 80 GB", 81_920 * MIB, 312e12),
    "l40s": Gpu("L40S 48 GB", 46_068 * MIB, 362.05e12),
    "rtx4090": Gpu("RTX 4090 24 GB", 24_564 * MIB, 165.2e12),
}

WEIGHT_BYTES = {None: 2.0, "float8": 1.0, "nf4": 0.5 + 4 / 64}
"""Bytes per frozen weight of the blocks' linear layers: bf16; torchao's float8 weight-only; bitsandbytes' NF4 with a
float32 absmax per 64-weight block. The rest of the base stays bf16."""


# --------------------------------------------------------------------------- measuring a step


class LiveBytes(TorchDispatchMode):
    """The bytes of every tensor storage made under it that is still alive, and their peak.

    A storage is counted when an operator first returns a tensor on it and uncounted when Python frees
    it, so the peak is what the step holds at its fullest: saved activations, temporaries, gradients."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        """``existing``: tensors made before (weights, inputs); views of them are not new memory."""
        super().__init__()
        self.existing = [tensor.untyped_storage() for tensor in existing]  # held, so their ids stay theirs
        self.sizes: dict[int, int] = {id(storage): 0 for storage in self.existing}
        self.now = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._count(tensor.untyped_storage())
        return out

    def _count(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key not in self.sizes:
            self.sizes[key] = storage.nbytes()
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
            weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.now -= self.sizes.pop(key)


def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """SDPA as the memory-efficient kernel: the output and a log-sum-exp per query, never the score matrix."""
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, True, dropout_p, is_causal, scale=scale
    )[0]


@dataclass(frozen=True)
class Cost:
    flops: float
    live: float
    """Peak bytes of what the step creates (activations, temporaries, gradients)."""

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.live + other.live)

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.flops - other.flops, self.live - other.live)

    def __mul__(self, factor: float) -> Cost:
        return Cost(self.flops * factor, self.live * factor)


def measure(step: Callable[[], None], model: torch.nn.Module, inputs: list[torch.Tensor], dtype: torch.dtype) -> Cost:
    """The FLOPs and the peak live bytes of ``step`` beyond ``model``'s weights and ``inputs``, in two passes (the FLOP
    counter's module hooks hold tensors that would inflate the memory), every linear layer in ``dtype`` as
    autocast would run it (autocast has no meta device)."""
    from unittest import mock

    from torch.utils.flop_counter import FlopCounterMode

    linear = torch.nn.functional.linear

    def autocast_linear(x, weight, bias=None):
        return linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))

    with mock.patch("torch.nn.functional.scaled_dot_product_attention", fused_attention), \
            mock.patch("torch.nn.functional.linear", autocast_linear), \
            mock.patch("torch.autocast", lambda *args, **kwargs: nullcontext()):  # fmt: skip
        with FlopCounterMode(display=False) as flops:
            step()
        live = LiveBytes([*model.parameters(), *model.buffers(), *inputs])
        with live:
            step()
    return Cost(flops.get_total_flops(), live.peak)


def per_block(costs: Callable[[dict], dict[str, Cost]], model_config: dict) -> dict[str, Cost]:
    """``costs`` of the whole model from three small models. Blocks repeat, so FLOPs and peak memory are affine in
    the numbers of double and single blocks (with checkpointing too: each block keeps its inputs, and one block
    at a time is recomputed). ``costs(config)`` measures a model of that config."""
    one = costs(dict(model_config, num_layers=1, num_single_layers=1))
    double = costs(dict(model_config, num_layers=2, num_single_layers=1))
    single = costs(dict(model_config, num_layers=1, num_single_layers=2))
    extra_double, extra_single = model_config["num_layers"] - 1, model_config["num_single_layers"] - 1
    return {name: one[name] + (double[name] - one[name]) * extra_double + (single[name] - one[name]) * extra_single
            for name in one}  # fmt: skip


def allocated_peak(step: Callable[[], None]) -> int:
    """The peak of PyTorch's CPU allocator during ``step``, above what it held when ``step`` began: every allocation
    and free of tensor data, kernels' workspaces included, as the profiler records them. The CPU's counterpart of
    ``torch.cuda.max_memory_allocated``, so what checks `LiveBytes` without sharing its logic. (The process heap
    holds more, the tensors' C++ objects and autograd's nodes, a few hundred bytes each; on a GPU they live in host
    memory, not in the card's.)"""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    events = sorted((e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()  # negative for a free
        peak = max(peak, held)
    return peak


# --------------------------------------------------------------------------- the model on the meta device


def transformer_config(base: str) -> dict:
    """The transformer's config of ``base``: the tiny one, a folder's, the local HF cache's, or FLUX.1-dev's published one."""
    if base.startswith(TINY_PREFIX):
        return TINY_TRANSFORMER
    local = Path(base) / "transformer" / "config.json"
    if local.is_file():
        return _model_keys(json.loads(local.read_text()))
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(base, "transformer/config.json")
    if isinstance(cached, str):
        return _model_keys(json.loads(Path(cached).read_text()))
    if base == "black-forest-labs/FLUX.1-dev":
        return FLUX_DEV_TRANSFORMER
    raise FileNotFoundError(
        f"{base}: no transformer/config.json there or in the local Hugging Face cache; fetch only that file with "
        f"`hf download {base} transformer/config.json`"
    )


def _model_keys(config: dict) -> dict:
    return {key: value for key, value in config.items() if not key.startswith("_")}


@dataclass(frozen=True)
class Shapes:
    """One sample's sizes: text tokens, and the latent (channels, side) of each image branch at the working area."""

    text: int
    latent_channels: int
    latent_side: int

    @property
    def image(self) -> int:
        """Tokens of one image branch (2×2 latent patches)."""
        return (self.latent_side // 2) ** 2

    @classmethod
    def of(cls, base: str, resolution: int, model_config: dict) -> Shapes:
        from seminft_bench.model.caches import T5_MAX_SEQUENCE_LENGTH
        from seminft_bench.model.training import TINY_RESOLUTION

        tiny = base.startswith(TINY_PREFIX)
        side = min(resolution, TINY_RESOLUTION) // 4 if tiny else resolution // 8  # the VAE's downsampling
        return cls(8 if tiny else T5_MAX_SEQUENCE_LENGTH, model_config["in_channels"] // 4, side - side % 2)


def meta_transformer(model_config: dict, dtype: torch.dtype, adapters: dict[str, tuple[int, int]],
                     target_modules, checkpointing: bool):  # fmt: skip
    """FLUX of ``model_config`` on the meta device in ``dtype``, with float32 LoRAs ``adapters`` (name: rank, alpha)
    active and the last one trainable, wrapped for the three branches."""
    from diffusers import FluxTransformer2DModel

    from seminft_bench.model.lora import add_lora, set_trainable
    from seminft_bench.model.transformer import SemiNFTTransformer

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: a cast would warn about modules kept in float32
    try:
        with torch.device("meta"):
            flux = FluxTransformer2DModel(**model_config)
    finally:
        torch.set_default_dtype(default)
    with torch.device("meta"):
        for name, (rank, alpha) in adapters.items():
            add_lora(flux, name, rank=rank, alpha=alpha, target_modules=target_modules, seed=0)
    if adapters:
        flux.set_adapters(list(adapters))
        set_trainable(flux, list(adapters)[-1])
    if checkpointing:
        flux.enable_gradient_checkpointing()
    return SemiNFTTransformer(flux)


def sft_batch(shapes: Shapes, model_config: dict, count: int, dtype: torch.dtype, device="meta") -> dict[str, torch.Tensor]:
    """An SFT batch as `sft.load_batch` gives it: latents per role and the prompt's embeddings."""
    latent = (count, shapes.latent_channels, shapes.latent_side, shapes.latent_side)
    with torch.device(device):
        batch = {role: torch.zeros(latent) for role in ("source", "reference", "target")}
        batch["prompt_embeds"] = torch.zeros(count, shapes.text, model_config["joint_attention_dim"], dtype=dtype)
        batch["pooled_prompt_embeds"] = torch.zeros(count, model_config["pooled_projection_dim"], dtype=dtype)
        batch["text_ids"] = torch.zeros(shapes.text, 3)
    return batch


def packed_inputs(shapes: Shapes, model_config: dict, count: int, dtype: torch.dtype, device="meta") -> dict:
    """`SemiNFTTransformer`'s inputs for ``count`` samples: packed noisy, reference and source tokens with their ids,
    the text, and the guidance."""
    side = shapes.latent_side
    with torch.device(device):
        def branch(index: int) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.zeros(count, shapes.image, model_config["in_channels"], dtype=dtype), image_ids(index, side, side)

        (noisy, noisy_ids), (reference, reference_ids), (source, source_ids) = branch(0), branch(1), branch(2)
        return dict(
            noisy=noisy, noisy_ids=noisy_ids, reference=reference, reference_ids=reference_ids, source=source,
            source_ids=source_ids, txt_ids=torch.zeros(shapes.text, 3),
            encoder_hidden_states=torch.zeros(count, shapes.text, model_config["joint_attention_dim"], dtype=dtype),
            pooled_projections=torch.zeros(count, model_config["pooled_projection_dim"], dtype=dtype),
            guidance=torch.full((count,), 3.5), timestep=torch.full((count,), 0.5),
        )


def condition_cache(semi, inputs: dict, count: int = 1):
    """The condition cache of the first ``count`` samples' conditions (`SemiNFTTransformer.build_condition_cache`)."""
    return semi.build_condition_cache(
        inputs["reference"][:count], inputs["reference_ids"], inputs["source"][:count], inputs["source_ids"],
        inputs["pooled_projections"][:count], inputs["guidance"][:count],
    )  # fmt: skip


def velocity(semi, inputs: dict, cache) -> torch.Tensor:
    """One denoising step's velocity of the noisy tokens, on the cached conditions."""
    return semi(
        inputs["noisy"], inputs["noisy_ids"], None, None, None, None, inputs["encoder_hidden_states"],
        inputs["pooled_projections"], inputs["txt_ids"], inputs["timestep"], inputs["guidance"], cache=cache,
    )  # fmt: skip


# --------------------------------------------------------------------------- each kind's step


def sft_cost(config: SFTConfig, model_config: dict, shapes: Shapes, checkpointing: bool, lora_on: str,
             dtype: torch.dtype = torch.bfloat16) -> Cost:  # fmt: skip
    """One SFT step of ``config`` (its loss and backward), with the given checkpointing and ``lora_on``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from seminft_bench.model.sft import ADAPTER, flow_matching_loss

    semi = meta_transformer(model_config, dtype, {ADAPTER: (config.lora_rank, config.lora_alpha)},
                            config.lora_target_modules, checkpointing)  # fmt: skip
    batch = sft_batch(shapes, model_config, config.batch_size, dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)
    settings = replace(config, lora_on=lora_on)

    def step() -> None:
        flow_matching_loss(semi, semi, batch, settings, scheduler, torch.Generator().manual_seed(0), dtype).backward()

    return measure(step, semi, list(batch.values()), dtype)


def cpu_sft_step_bytes(model_config: dict, shapes: Shapes, config: SFTConfig) -> int:
    """The peak bytes a real float32 SFT step of random weights allocates on the CPU (`allocated_peak`; the second
    step: the first one warms the kernels' buffers). What `sft_cost` in float32 predicts."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from seminft_bench.model.components import FLUX_SCHEDULER_CONFIG
    from seminft_bench.model.lora import add_lora
    from seminft_bench.model.sft import ADAPTER, flow_matching_loss
    from seminft_bench.model.transformer import SemiNFTTransformer

    flux = FluxTransformer2DModel(**model_config)
    add_lora(flux, ADAPTER, rank=config.lora_rank, alpha=config.lora_alpha, target_modules=config.lora_target_modules, seed=0)
    if config.gradient_checkpointing:
        flux.enable_gradient_checkpointing()
    semi = SemiNFTTransformer(flux)
    batch = sft_batch(shapes, model_config, config.batch_size, torch.float32, device="cpu")
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)

    def step() -> None:
        flow_matching_loss(semi, semi, batch, config, scheduler, torch.Generator().manual_seed(0), torch.float32).backward()
        flux.zero_grad(set_to_none=True)

    step()
    return allocated_peak(step)


COLDSTART_LORA = (SFTConfig.lora_rank, SFTConfig.lora_alpha)
"""The cold-start LoRA's (rank, alpha) when its file does not say: SFT's defaults."""


def nft_adapters(config: NFTConfig, coldstart: tuple[int, int] | None) -> dict[str, tuple[int, int]]:
    """NFT's LoRAs as (rank, alpha) by adapter name: the frozen cold-start one (unless ``init: base``), then rl."""
    from seminft_bench.model.nft import COLDSTART_ADAPTER, RL_ADAPTER

    return {**({COLDSTART_ADAPTER: coldstart} if coldstart else {}), RL_ADAPTER: (config.lora_rank, config.lora_alpha)}


def nft_costs(config: NFTConfig, model_config: dict, shapes: Shapes, coldstart: tuple[int, int] | None) -> dict[str, Cost]:
    """NFT's units on the cold-start + rl policy, each pair's conditions shared by its group: a condition cache and
    a rollout step of ``group_online`` samples without gradients, the old policy's velocity of a training chunk,
    and the training pass of a chunk (the rl conditions and velocity, and their backward)."""
    adapters = nft_adapters(config, coldstart)
    chunk = min(config.micro_batch or config.group_online, config.group_online)
    dtype = torch.bfloat16

    def costs(model: dict) -> dict[str, Cost]:
        semi = meta_transformer(model, dtype, adapters, config.lora_target_modules, config.gradient_checkpointing)
        rollout, members = (packed_inputs(shapes, model, count, dtype) for count in (config.group_online, chunk))
        inputs = [*rollout.values(), *members.values()]

        def unit(step: Callable[[], object], grad: bool = False) -> Cost:
            def run() -> None:
                with nullcontext() if grad else torch.no_grad():
                    step()

            return measure(run, semi, inputs, dtype)

        def train() -> None:
            velocity(semi, members, condition_cache(semi, members)).float().pow(2).mean().backward()

        return {
            "cache": unit(lambda: condition_cache(semi, rollout)),
            "rollout step": unit(lambda: velocity(semi, rollout, condition_cache(semi, rollout))),
            "chunk velocity": unit(lambda: velocity(semi, members, condition_cache(semi, members))),
            "train": unit(train, grad=True),
        }

    return per_block(costs, model_config)


def infer_cost(model_config: dict, shapes: Shapes, loras: dict[str, tuple[int, int]], target_modules) -> dict[str, Cost]:
    """Inference on ``loras``: the condition cache, and the cache with one denoising step (no gradients)."""
    dtype = torch.bfloat16

    def costs(model: dict) -> dict[str, Cost]:
        semi = meta_transformer(model, dtype, loras, target_modules, False)
        inputs = packed_inputs(shapes, model, 1, dtype)

        def unit(step: Callable[[], object]) -> Cost:
            def run() -> None:
                with torch.no_grad():
                    step()

            return measure(run, semi, list(inputs.values()), dtype)

        return {"cache": unit(lambda: condition_cache(semi, inputs)),
                "step": unit(lambda: velocity(semi, inputs, condition_cache(semi, inputs)))}  # fmt: skip

    return per_block(costs, model_config)


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """What `render` prints: a title, sections of (label, value) rows, the peak, the card and what would fit it."""

    title: str
    sections: dict[str, list[tuple[str, str]]]
    peak: float
    gpu: Gpu
    advice: list[str]
    figures: dict[str, float]
    """The numbers behind the text, for scripts that set measurements beside them: seconds, and peaks in bytes as
    ``torch.cuda.max_memory_allocated`` counts them (without `RESERVED`)."""


def parameter_counts(model_config: dict, adapters: dict[str, tuple[int, int]], target_modules) -> tuple[int, int, int]:
    """(the blocks' frozen linear weights, the other frozen weights, the trainable LoRA) parameter counts."""
    semi = meta_transformer(model_config, torch.bfloat16, adapters, target_modules, False)
    linear = sum(module.weight.numel() for name, module in semi.flux.named_modules()
                 if isinstance(module, torch.nn.Linear) and "blocks." in name and "lora_" not in name)  # fmt: skip
    frozen = trainable = 0
    for name, parameter in semi.flux.named_parameters():
        if parameter.requires_grad:
            trainable += parameter.numel()
        elif "lora_" not in name:  # a frozen LoRA is not the base
            frozen += parameter.numel()
    return linear, frozen - linear, trainable


def weight_bytes(linear: int, other: int, quantize: str | None) -> float:
    return linear * WEIGHT_BYTES[quantize] + other * 2


def trained_bytes(trainable: int, optimizer: str = "adamw") -> float:
    """The trainable LoRA in float32, its float32 gradient, and AdamW's two moments (8-bit AdamW: a byte each)."""
    return trainable * (4 + 4 + (2 if optimizer == "adamw8bit" else 8))


def plan_sft(config: SFTConfig, gpu: Gpu) -> Plan:
    """Memory and time of ``config``'s SFT steps on ``gpu``, per process."""
    from seminft_bench.model.sft import ADAPTER

    model_config = transformer_config(config.base)
    shapes = Shapes.of(config.base, config.resolution, model_config)
    linear, other, trainable = parameter_counts(model_config, {ADAPTER: (config.lora_rank, config.lora_alpha)},
                                                config.lora_target_modules)  # fmt: skip
    variants = [(ckpt, on) for ckpt in (True, False) for on in ("all", "main")]
    costs = per_block(lambda model: {f"{ckpt} {on}": sft_cost(config, model, shapes, ckpt, on) for ckpt, on in variants},
                      model_config)  # fmt: skip
    chosen = costs[f"{config.gradient_checkpointing} {config.lora_on}"]

    def peak(quantize: str | None, cost: Cost) -> float:
        return weight_bytes(linear, other, quantize) + trained_bytes(trainable, config.optimizer) + cost.live + RESERVED

    seconds = chosen.flops / (gpu.bf16 * UTILISATION)
    sections = {
        "parameters": [("frozen base", f"{(linear + other) / 1e9:.2f} B"), ("trainable LoRA", f"{trainable / 1e6:.1f} M")],
        "memory per process": [
            (f"weights ({config.quantize_base or 'bf16'})", _gib(weight_bytes(linear, other, config.quantize_base))),
            ("LoRA, gradients, AdamW states", _gib(trained_bytes(trainable, config.optimizer))),
            *[(f"activations, checkpointing {'on' if ckpt else 'off'}, lora_on {on}", _gib(costs[f'{ckpt} {on}'].live))
              for ckpt, on in variants],  # fmt: skip
            ("CUDA context, allocator slack", _gib(RESERVED)),
            *[(f"peak with a {kind} base", _gib(peak(kind, chosen))) for kind in ("float8", "nf4") if kind != config.quantize_base],
        ],
        "compute": [
            ("FLOPs per step", f"{chosen.flops / 1e12:.1f} TFLOP"),
            (f"time per step on {gpu.name}", f"{seconds:.2f} s ({UTILISATION:.0%} of {gpu.bf16 / 1e12:.0f} TFLOP/s)"),
            (f"{config.steps:,} steps", _duration(seconds * config.steps)),
        ],
    }
    options = [("gradient_checkpointing: true", peak(config.quantize_base, costs[f"True {config.lora_on}"])),
               ("lora_on: main", peak(config.quantize_base, costs[f"{config.gradient_checkpointing} main"])),
               ("quantize_base: float8", peak("float8", chosen)), ("quantize_base: nf4", peak("nf4", chosen)),
               ("all of them", peak("nf4", costs["True main"]))]  # fmt: skip
    title = (f"SFT of {config.base} at {config.resolution}² ({shapes.image} tokens a branch, {shapes.text} text), "
             f"batch {config.batch_size}, LoRA rank {config.lora_rank}")  # fmt: skip
    figures = {"step seconds": seconds, "peak float8": peak("float8", costs["True all"]) - RESERVED,
               **{f"peak {'on' if ckpt else 'off'} {on}": peak(config.quantize_base, costs[f"{ckpt} {on}"]) - RESERVED
                  for ckpt, on in variants}}  # fmt: skip
    return Plan(title, sections, peak(config.quantize_base, chosen), gpu, _fitting(options, gpu), figures)


def plan_nft(config: NFTConfig, gpu: Gpu, processes: int = 1) -> Plan:
    """Memory and time of ``config``'s NFT optimizer steps on ``gpu``, per process (``processes`` share the groups)."""
    from seminft_bench.model.lora import read_record

    model_config = transformer_config(config.base)
    shapes = Shapes.of(config.base, config.resolution, model_config)
    record = read_record(config.coldstart_lora) if config.init == "coldstart" and config.coldstart_lora else None
    coldstart = (record.peft["r"], record.peft["lora_alpha"]) if record else COLDSTART_LORA if config.init == "coldstart" else None
    units = nft_costs(config, model_config, shapes, coldstart)
    chunk = min(config.micro_batch or config.group_online, config.group_online)
    chunks = -(-config.group_online // chunk)
    offline = config.group_offline if config.offline_samples else 0
    levels = config.rollout_steps
    cache = units["cache"]
    rollout = cache + (units["rollout step"] - cache) * levels  # each unit measured with the cache it runs on
    per_chunk = cache + (units["chunk velocity"] - cache + units["train"]) * levels  # old's velocity, rl's pass
    training, anchors = per_chunk * chunks, per_chunk * (offline / chunk)
    group = rollout.flops + training.flops + anchors.flops
    groups = config.groups_per_step / processes
    seconds = group * groups / (gpu.bf16 * UTILISATION)

    linear, other, trainable = parameter_counts(model_config, nft_adapters(config, coldstart), config.lora_target_modules)
    coldstart_size = trainable * coldstart[0] // config.lora_rank if coldstart else 0  # a LoRA's size is linear in its rank
    frozen_loras = 4 * (coldstart_size + trainable)  # the cold-start LoRA and old, float32
    peak = weight_bytes(linear, other, None) + frozen_loras + trained_bytes(trainable) + units["train"].live + RESERVED
    sections = {
        "parameters": [("frozen base", f"{(linear + other) / 1e9:.2f} B"), ("trainable rl LoRA", f"{trainable / 1e6:.1f} M")],
        "memory per process": [
            ("weights (bf16)", _gib(weight_bytes(linear, other, None))),
            ("cold-start and old LoRAs (frozen)", _gib(frozen_loras)),
            ("rl LoRA, gradients, AdamW states", _gib(trained_bytes(trainable))),
            (f"activations of a training chunk of {chunk}", _gib(units["train"].live)),
            ("CUDA context, allocator slack", _gib(RESERVED)),
        ],
        "compute per group": [
            (f"rollout ({config.group_online} samples × {levels} steps)", f"{rollout.flops / 1e12:.1f} TFLOP"),
            (f"training ({config.group_online} + {offline} members × {levels} levels)",
             f"{(training.flops + anchors.flops) / 1e12:.1f} TFLOP"),  # fmt: skip
        ],
        "compute per optimizer step": [
            (f"{groups:g} groups a process", f"{group * groups / 1e15:.2f} PFLOP"),
            (f"time on {gpu.name}", f"{_duration(seconds)} ({UTILISATION:.0%} of {gpu.bf16 / 1e12:.0f} TFLOP/s; "
                                    "the VAE and the reward model not counted)"),  # fmt: skip
            (f"{config.steps:,} steps", _duration(seconds * config.steps)),
        ],
    }
    options = [] if chunk == 1 else [("micro_batch: 1", peak - units["train"].live + units["train"].live / chunk)]
    title = (f"NFT of {config.base} at {config.resolution}² ({shapes.image} tokens a branch), G = {config.group_online} + "
             f"{offline}, T = {levels}, {config.groups_per_step} groups a step over {processes} process(es)")  # fmt: skip
    figures = {"group seconds": group / (gpu.bf16 * UTILISATION), "peak": peak - RESERVED}
    return Plan(title, sections, peak, gpu, _fitting(options, gpu), figures)


def plan_infer(base: str, resolution: int, gpu: Gpu, loras: dict[str, tuple[int, int]], target_modules,
               steps: int = INFERENCE_STEPS) -> Plan:  # fmt: skip
    """Memory and time of one image with ``loras`` stacked, ``steps`` denoising steps on the condition cache."""
    model_config = transformer_config(base)
    shapes = Shapes.of(base, resolution, model_config)
    units = infer_cost(model_config, shapes, loras, target_modules)
    linear, other, trainable = parameter_counts(model_config, loras, target_modules)
    step = units["step"] - units["cache"]
    flops = units["cache"].flops + step.flops * steps
    peak = weight_bytes(linear, other, None) + 4 * trainable + units["step"].live + RESERVED
    seconds = flops / (gpu.bf16 * UTILISATION)
    sections = {
        "memory": [("weights (bf16)", _gib(weight_bytes(linear, other, None))), ("LoRAs (float32)", _gib(4 * trainable)),
                   ("condition cache and one step", _gib(units["step"].live)), ("CUDA context, allocator slack", _gib(RESERVED))],
        "compute": [("condition cache", f"{units['cache'].flops / 1e12:.1f} TFLOP"),
                    ("a denoising step", f"{step.flops / 1e12:.1f} TFLOP"),
                    (f"an image ({steps} steps) on {gpu.name}", f"{seconds:.1f} s ({UTILISATION:.0%} of {gpu.bf16 / 1e12:.0f} TFLOP/s, transformer only)")],
    }  # fmt: skip
    figures = {"image seconds": seconds, "peak": peak - RESERVED}
    return Plan(f"inference of {base} at {resolution}² ({shapes.image} tokens a branch), {len(loras)} LoRA(s)",
                sections, peak, gpu, [], figures)


def _fitting(options: list[tuple[str, float]], gpu: Gpu) -> list[str]:
    return [f"{name} ({_gib(value)})" for name, value in options if value <= gpu.memory]


def render(plan: Plan) -> str:
    """The plan as aligned text, ending with whether it fits the card and, if not, what would."""
    width = max(len(label) for rows in plan.sections.values() for label, _ in rows)
    lines = [plan.title]
    for name, rows in plan.sections.items():
        lines += ["", name] + [f"  {label:<{width}}  {value}" for label, value in rows]
    fits = plan.peak <= plan.gpu.memory
    lines += ["", f"peak {_gib(plan.peak)}: {'fits' if fits else 'does NOT fit'} {plan.gpu.name} ({_gib(plan.gpu.memory)})"]
    if not fits:
        lines += [f"  fits with {option}" for option in plan.advice] or ["  no option here makes it fit: a larger card"]
    return "\n".join(lines)


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.2f} s"


def gpu_of(device_name: str) -> Gpu:
    """The card of ``torch.cuda.get_device_name()`` (H100 when it is none of ours)."""
    name = device_name.lower().replace(" ", "")
    return next((gpu for key, gpu in GPUS.items() if key.split("-")[0] in name), GPUS["h100"])


def plan_config(kind: str, config_file: str | None, gpu: str, processes: int = 1) -> Plan:
    """The plan of ``kind`` for the config in ``config_file`` (the defaults without one) on the card named ``gpu``."""
    from seminft_bench.model.config import ConfigError, load_config

    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if gpu not in GPUS:
        raise ConfigError(f"gpu must be one of {', '.join(GPUS)}, got {gpu!r}")
    card = GPUS[gpu]
    config_class = NFTConfig if kind == "nft" or (kind == "infer" and _is_nft(config_file)) else SFTConfig
    config = load_config(config_file, config_class) if config_file else config_class()
    if kind == "sft":
        return plan_sft(config, card)
    if kind == "nft":
        return plan_nft(config, card, processes)
    loras = {"coldstart": COLDSTART_LORA} if isinstance(config, NFTConfig) else {}
    loras["lora"] = (config.lora_rank, config.lora_alpha)
    return plan_infer(config.base, config.resolution, card, loras, config.lora_target_modules)


def _is_nft(config_file: str | None) -> bool:
    """Whether a config file is NFT's (it names keys only NFT has)."""
    import yaml

    data = yaml.safe_load(Path(config_file).read_text()) if config_file else None
    return isinstance(data, dict) and bool(set(data) & {"groups_per_step", "group_online", "coldstart_lora", "reward"})

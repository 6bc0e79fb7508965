"""Branch attention as unmasked per-branch calls (the code) against one call with the branch mask (the
previous path), at FLUX.1-dev's width on CPU, same run.

    .venv/bin/python benchmarks/bench_attention.py                        # 512² and 1024², one repetition each
    .venv/bin/python benchmarks/bench_attention.py --sizes 512 --repeats 3

One double-stream and one single-stream block of FLUX.1-dev's transformer (hidden 3072, 24 heads × 128,
joint_attention_dim 4096; random weights, no download) in bf16, which this kind of CPU (avx512_bf16)
multiplies several times faster than float32, with a rank-16 LoRA on the training targets. Inputs are
512 text tokens and 1,024 (512²) or 4,096 (1024²) tokens per image branch (noisy, reference, source).

Timed, masked then split for each row: attention alone (one block's queries, keys and values, 24 heads),
the forward without a cache (training's, and inference without the cache), its backward into the LoRA
(a training step without the optimizer), and building the condition cache. The forward with the cache
is not timed: the main queries against their own and the cached keys never had a mask. "masked" swaps
the processor's per-branch calls for one `dispatch_attention_fn` call over every row with
`branch_attention_mask`, as the code did before; the mask is built once per shape, as it was once per
forward. Each figure is the fastest of `--repeats` runs, masked and split alternating.
"""

import argparse
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from unittest import mock

import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn

from seminft_bench.model import transformer
from seminft_bench.model.components import FLUX_DEV_TRANSFORMER
from seminft_bench.model.conditioning import branch_attention_mask, image_ids
from seminft_bench.model.config import LORA_TARGET_MODULES
from seminft_bench.model.lora import add_lora
from seminft_bench.model.transformer import KeyValue, SemiNFTTransformer

TEXT_TOKENS = 512
DTYPE = torch.bfloat16


@functools.cache
def _mask(n_main: int, condition_sizes: tuple[int, ...]) -> torch.Tensor:
    return branch_attention_mask(0, n_main, *condition_sizes)[None, None]


def masked_branch_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    condition_sizes: Sequence[int],
    condition_kv: KeyValue | None,
    backend: object,
) -> torch.Tensor:
    """The previous path: every query row against every key, the mask throwing the cross-branch scores away."""
    assert condition_kv is None, "the cached forward never had a mask"
    mask = _mask(query.shape[1] - sum(condition_sizes), tuple(condition_sizes))
    return dispatch_attention_fn(query, key, value, attn_mask=mask, backend=backend)


@contextmanager
def masked() -> Iterator[None]:
    with mock.patch.object(transformer, "_branch_attention", masked_branch_attention):
        yield


def build() -> SemiNFTTransformer:
    """One double- and one single-stream block of FLUX.1-dev, random bf16 weights, a rank-16 LoRA."""
    torch.manual_seed(0)
    flux = FluxTransformer2DModel(**{**FLUX_DEV_TRANSFORMER, "num_layers": 1, "num_single_layers": 1}).to(DTYPE)
    add_lora(flux, "coldstart", rank=16, alpha=16, target_modules=LORA_TARGET_MODULES, seed=0)
    return SemiNFTTransformer(flux)


def inputs(image_tokens: int) -> dict:
    """Keyword arguments of `SemiNFTTransformer.forward`: three square branches of `image_tokens` tokens each."""
    config = FLUX_DEV_TRANSFORMER
    latent = 2 * int(image_tokens**0.5)  # image_ids takes the latent size; packing halves it
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(DTYPE)

    branches = {}
    for i, name in enumerate(("noisy", "reference", "source")):
        branches[name] = randn(1, image_tokens, config["in_channels"])
        branches[f"{name}_ids"] = image_ids(i, latent, latent)
    return dict(
        **branches,
        encoder_hidden_states=randn(1, TEXT_TOKENS, config["joint_attention_dim"]),
        pooled_projections=randn(1, config["pooled_projection_dim"]),
        txt_ids=torch.zeros(TEXT_TOKENS, 3),
        timestep=torch.full((1,), 0.7),
        guidance=torch.full((1,), 3.5),
    )


def workloads(model: SemiNFTTransformer, image_tokens: int) -> dict[str, Callable[[], object]]:
    """What is timed at one size, by name."""
    kwargs = inputs(image_tokens)
    heads, head_dim = FLUX_DEV_TRANSFORMER["num_attention_heads"], FLUX_DEV_TRANSFORMER["attention_head_dim"]
    generator = torch.Generator().manual_seed(1)
    qkv = [
        torch.randn(1, TEXT_TOKENS + 3 * image_tokens, heads, head_dim, generator=generator).to(DTYPE)
        for _ in range(3)
    ]
    conditions = {name: kwargs[name] for name in ("reference", "reference_ids", "source", "source_ids")}

    def attention() -> torch.Tensor:
        return transformer._branch_attention(*qkv, (image_tokens, image_tokens), None, None)

    @torch.no_grad()
    def forward() -> torch.Tensor:
        return model(**kwargs)

    def forward_backward() -> None:
        model(**kwargs).float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def cache_build() -> transformer.ConditionCache:
        return model.build_condition_cache(
            **conditions, pooled_projections=kwargs["pooled_projections"], guidance=kwargs["guidance"]
        )

    return {
        "attention alone (1 call)": attention,
        "forward": forward,
        "forward + backward": forward_backward,
        "cache build": cache_build,
    }


def seconds(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def compare(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Seconds masked and split, the fastest of `repeats` runs each: the two alternate so that the
    shared machine's load falls on both alike, and a slowdown only ever adds."""
    before, after = [], []
    for _ in range(repeats):
        with masked():
            before.append(seconds(function))
        after.append(seconds(function))
    return min(before), min(after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="image side in pixels (16 per token)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    model = build()
    for function in workloads(model, 64).values():  # warm-up: kernels and allocator, on small inputs
        compare(function, 1)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {DTYPE}, load average {os.getloadavg()[0]:.1f}")
    print("| size | tokens (text + 3 × image) | measured | masked s | split s | masked / split |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        image_tokens = (size // 16) ** 2
        for name, function in workloads(model, image_tokens).items():
            before, after = compare(function, args.repeats)
            tokens = f"{TEXT_TOKENS} + 3 × {image_tokens}"
            print(f"| {size}² | {tokens} | {name} | {before:.2f} | {after:.2f} | {before / after:.2f}× |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

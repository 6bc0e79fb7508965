"""SemiNFTTransformer on a tiny random FLUX: faithful to diffusers, branch-isolated, cacheable."""

import copy
import contextlib
from collections.abc import Callable, Iterator
from unittest import mock

import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
from peft import LoraConfig

from seminft_bench.model.components import TINY_TRANSFORMER
from seminft_bench.model.conditioning import branch_attention_mask, image_ids, pack_latents
from seminft_bench.model import transformer
from seminft_bench.model.transformer import SemiNFTTransformer

LATENT_CHANNELS = 4  # packed: 16 = FLUX in_channels
TEXT_TOKENS = 5


def tiny_flux(guidance_embeds: bool = True) -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(**{**TINY_TRANSFORMER, "guidance_embeds": guidance_embeds})


def packed(branch: int, height: int, width: int, seed: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random packed latent tokens of a `height`×`width` latent and their position ids."""
    latents = torch.randn(batch, LATENT_CHANNELS, height, width, generator=torch.Generator().manual_seed(seed))
    return pack_latents(latents), image_ids(branch, height, width)


def inputs(noisy=(8, 8), reference=(8, 8), source=(8, 8), t=0.7, guidance=True, seed=0, batch=1, pairs=1) -> dict:
    """Keyword arguments of `SemiNFTTransformer.forward` for random branches of the given latent sizes,
    `pairs` (1, or `batch`) reference/source pairs."""
    generator = torch.Generator().manual_seed(seed + 100)
    noisy_tokens, noisy_ids = packed(0, *noisy, seed, batch)
    reference_tokens, reference_ids = packed(1, *reference, seed + 1, pairs)
    source_tokens, source_ids = packed(2, *source, seed + 2, pairs)
    return dict(
        noisy=noisy_tokens,
        noisy_ids=noisy_ids,
        reference=reference_tokens,
        reference_ids=reference_ids,
        source=source_tokens,
        source_ids=source_ids,
        encoder_hidden_states=torch.randn(1, TEXT_TOKENS, 32, generator=generator).expand(batch, -1, -1),
        pooled_projections=torch.randn(1, 32, generator=generator).expand(batch, -1),
        txt_ids=torch.zeros(TEXT_TOKENS, 3),
        timestep=torch.full((batch,), t),
        guidance=torch.full((batch,), 3.5) if guidance else None,
    )


def cached_forward(model: SemiNFTTransformer, kwargs: dict) -> torch.Tensor:
    """The forward through a cache built from the conditions (one pair shared by the batch, or one per sample)."""
    pairs = kwargs["reference"].shape[0]
    cache = model.build_condition_cache(
        kwargs["reference"],
        kwargs["reference_ids"],
        kwargs["source"],
        kwargs["source_ids"],
        kwargs["pooled_projections"][:pairs],
        None if kwargs["guidance"] is None else kwargs["guidance"][:pairs],
    )
    return model(**{**kwargs, "reference": None, "source": None}, cache=cache)


def plain_flux(flux: FluxTransformer2DModel, kwargs: dict, image: list[str], attention_mask=None) -> torch.Tensor:
    """diffusers' own forward over the concatenated `image` branches."""
    out = flux(
        hidden_states=torch.cat([kwargs[name] for name in image], dim=1),
        encoder_hidden_states=kwargs["encoder_hidden_states"],
        pooled_projections=kwargs["pooled_projections"],
        timestep=kwargs["timestep"],
        img_ids=torch.cat([kwargs[f"{name}_ids"] for name in image], dim=0),
        txt_ids=kwargs["txt_ids"],
        guidance=kwargs["guidance"],
        joint_attention_kwargs=None if attention_mask is None else {"attention_mask": attention_mask},
    ).sample
    return out[:, : kwargs["noisy"].shape[1]]


@pytest.mark.parametrize("guidance", [True, False])
@torch.no_grad()
def test_without_conditions_equals_diffusers_flux(guidance):
    flux = tiny_flux(guidance_embeds=guidance)
    plain = copy.deepcopy(flux)
    model = SemiNFTTransformer(flux)
    kwargs = inputs(guidance=guidance)
    for name in ("reference", "source"):
        kwargs[name] = kwargs[name][:, :0]
        kwargs[f"{name}_ids"] = kwargs[f"{name}_ids"][:0]
    expected = plain_flux(plain, kwargs, ["noisy"])
    torch.testing.assert_close(model(**kwargs), expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_current_t_modulation_equals_diffusers_flux_with_branch_mask():
    flux = tiny_flux()
    plain = copy.deepcopy(flux)
    model = SemiNFTTransformer(flux)
    kwargs = inputs(noisy=(6, 4), reference=(4, 8), source=(6, 4))
    n_noisy, n_reference, n_source = (kwargs[name].shape[1] for name in ("noisy", "reference", "source"))
    mask = branch_attention_mask(TEXT_TOKENS, n_noisy, n_reference, n_source)[None, None]
    expected = plain_flux(plain, kwargs, ["noisy", "reference", "source"], attention_mask=mask)
    unmasked = plain_flux(plain, kwargs, ["noisy", "reference", "source"])
    actual = model(**kwargs, condition_timestep=None)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert (actual - unmasked).abs().max() > 1e-3  # the mask matters


def condition_projections(model: SemiNFTTransformer, kwargs: dict, **options) -> list[torch.Tensor]:
    """Key and value projections of the condition tokens (the last ones) in every block."""
    n_conditions = kwargs["reference"].shape[1] + kwargs["source"].shape[1]
    captured = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, out: captured.append(out[:, -n_conditions:]))
        for name, module in model.flux.named_modules()
        if name.endswith(("attn.to_k", "attn.to_v"))
    ]
    try:
        model(**kwargs, **options)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(captured) == 2 * 4
    return captured


@torch.no_grad()
def test_condition_keys_values_ignore_noisy_latent_text_and_timestep():
    model = SemiNFTTransformer(tiny_flux())
    first = inputs(t=0.9, seed=0)
    second = {**inputs(t=0.2, seed=7), **{k: first[k] for k in ("reference", "source", "pooled_projections")}}
    assert not torch.equal(first["noisy"], second["noisy"])
    assert not torch.equal(first["encoder_hidden_states"], second["encoder_hidden_states"])
    for a, b in zip(condition_projections(model, first), condition_projections(model, second)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)

    # With the current t modulating the conditions (ablation), a new t changes them.
    same_noise_later = {**first, "timestep": second["timestep"]}
    ablated_first = condition_projections(model, first, condition_timestep=None)
    ablated_later = condition_projections(model, same_noise_later, condition_timestep=None)
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(ablated_first, ablated_later))


@torch.no_grad()
def test_fixed_condition_timestep_is_the_ablation_at_that_t():
    model = SemiNFTTransformer(tiny_flux())
    late = inputs(t=0.8)
    at_zero = {**late, "timestep": torch.zeros(1)}
    fixed = condition_projections(model, late, condition_timestep=0.0)
    current_t_at_zero = condition_projections(model, at_zero, condition_timestep=None)
    for a, b in zip(fixed, current_t_at_zero):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@torch.no_grad()
def test_output_depends_on_reference_and_source():
    model = SemiNFTTransformer(tiny_flux())
    kwargs = inputs()
    out = model(**kwargs)
    for name, branch in (("reference", 1), ("source", 2)):
        other, _ = packed(branch, 8, 8, seed=42)
        assert (model(**{**kwargs, name: other}) - out).abs().max() > 1e-4


@pytest.mark.parametrize("guidance", [True, False])
@torch.no_grad()
def test_condition_cache_matches_full_forward(guidance):
    model = SemiNFTTransformer(tiny_flux(guidance_embeds=guidance))
    for t in (1.0, 0.6, 0.25, 0.0):
        kwargs = inputs(t=t, guidance=guidance, seed=int(t * 10))
        torch.testing.assert_close(cached_forward(model, kwargs), model(**kwargs), atol=1e-5, rtol=0)


@torch.no_grad()
def test_condition_cache_is_shared_across_a_batch():
    model = SemiNFTTransformer(tiny_flux())
    kwargs = inputs(batch=3)
    repeated = {name: kwargs[name].expand(3, -1, -1) for name in ("reference", "source")}
    full = model(**{**kwargs, **repeated})
    torch.testing.assert_close(cached_forward(model, kwargs), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_cache_refuses_another_condition_timestep():
    model = SemiNFTTransformer(tiny_flux())
    kwargs = inputs()
    conditions = [kwargs[name] for name in ("reference", "reference_ids", "source", "source_ids")]
    cache = model.build_condition_cache(*conditions, kwargs["pooled_projections"], kwargs["guidance"])
    for condition_timestep in (None, 0.5):
        with pytest.raises(ValueError, match="condition_timestep"):
            model(**kwargs, condition_timestep=condition_timestep, cache=cache)
    with pytest.raises(ValueError, match="without a cache"):
        model.build_condition_cache(
            *conditions, kwargs["pooled_projections"], kwargs["guidance"], condition_timestep=None
        )


@torch.no_grad()
def test_non_square_branches_of_different_sizes():
    model = SemiNFTTransformer(tiny_flux())
    kwargs = inputs(noisy=(12, 8), reference=(8, 16), source=(12, 8))  # token grids 6×4, 4×8, 6×4
    out = model(**kwargs)
    assert out.shape == (1, 24, 4 * LATENT_CHANNELS)
    torch.testing.assert_close(cached_forward(model, kwargs), out, atol=1e-5, rtol=0)
    # The reference's own grid matters: the same tokens laid out 8×4 instead of 4×8 condition differently.
    transposed_ids = image_ids(1, 16, 8)
    assert (model(**{**kwargs, "reference_ids": transposed_ids}) - out).abs().max() > 1e-5


@torch.no_grad()
def test_lora_on_flux_is_used_and_cache_still_exact():
    model = SemiNFTTransformer(tiny_flux())
    kwargs = inputs()
    before = model(**kwargs)
    model.flux.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_mlp", "ff.net.2"])
    )
    lora_b = [p for name, p in model.flux.named_parameters() if "lora_B" in name]
    assert lora_b
    generator = torch.Generator().manual_seed(3)
    for parameter in lora_b:
        parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    after = model(**kwargs)
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(cached_forward(model, kwargs), after, atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = SemiNFTTransformer(tiny_flux())
    kwargs = inputs()

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        model(**kwargs).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    model.flux.enable_gradient_checkpointing()
    for a, b in zip(plain, gradients(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- branch attention against its mask

BRANCH_SIZES = {
    "non-square, mismatched": dict(noisy=(12, 8), reference=(8, 16), source=(6, 10)),  # 6×4, 4×8, 3×5 tokens
    "no source": dict(noisy=(8, 4), reference=(4, 8), source=(0, 0)),
}
ATOL, RTOL = 1e-5, 1e-4  # float32 rounding of reordered reductions
INPUT_LEAVES = ("noisy", "reference", "source", "encoder_hidden_states", "pooled_projections")


@contextlib.contextmanager
def masked_attention(leak: tuple[str, str] | None = None) -> Iterator[None]:
    """Attention as the definition has it, in place of the processor's per-branch calls: one SDPA
    call over `[main | reference | source]` with `branch_attention_mask`. `leak` = (rows, columns),
    branch names among main/reference/source, also lets those rows attend those columns."""

    def attention(query, key, value, condition_sizes, condition_kv, backend):
        assert condition_kv is None, "the definition is the forward without a cache"
        n_main = query.shape[1] - sum(condition_sizes)
        mask = branch_attention_mask(0, n_main, *condition_sizes)
        if leak is not None:
            bounds = torch.tensor([0, n_main, *condition_sizes]).cumsum(0).tolist()
            spans = {name: slice(a, b) for name, a, b in zip(("main", "reference", "source"), bounds, bounds[1:])}
            mask[spans[leak[0]], spans[leak[1]]] = True
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)

    with mock.patch.object(transformer, "_branch_attention", attention):
        yield


def full_forward(model: SemiNFTTransformer, kwargs: dict) -> torch.Tensor:
    return model(**kwargs)


def output_and_gradients(model: SemiNFTTransformer, kwargs: dict, forward: Callable) -> list[torch.Tensor]:
    """The output, then the gradients of a fixed random projection of it w.r.t. the inputs and every
    trainable parameter (all weights, or only the LoRA when there is one)."""
    leaves = {name: kwargs[name].detach().clone().requires_grad_() for name in INPUT_LEAVES}
    model.zero_grad(set_to_none=True)
    out = forward(model, {**kwargs, **leaves})
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
    gradients = [leaf.grad for leaf in leaves.values()] + [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in gradients)
    return [out.detach(), *gradients]


def with_random_lora(model: SemiNFTTransformer) -> SemiNFTTransformer:
    model.flux.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_mlp", "ff.net.2"])
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.flux.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("sizes", BRANCH_SIZES.values(), ids=BRANCH_SIZES.keys())
@pytest.mark.parametrize("trainable", ["weights", "lora"])
@pytest.mark.parametrize("cache", [False, True], ids=["cache off", "cache on"])
def test_branch_attention_equals_masked_definition_with_gradients(sizes, trainable, cache):
    model = SemiNFTTransformer(tiny_flux())
    if trainable == "lora":
        model = with_random_lora(model)
        assert not any(p.requires_grad for name, p in model.named_parameters() if "lora_" not in name)
    kwargs = inputs(**sizes, batch=2, pairs=2)
    with masked_attention():
        expected = output_and_gradients(model, kwargs, full_forward)
    actual = output_and_gradients(model, kwargs, cached_forward if cache else full_forward)
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("leak", [("reference", "source"), ("source", "reference"), ("reference", "main"), ("source", "main")])
@torch.no_grad()
def test_masked_definition_tells_a_leaking_branch_apart(leak):
    """Had the split let `leak[0]` queries read `leak[1]` keys, the comparison above would fail on the
    output alone, even at ten times its tolerance."""
    model = SemiNFTTransformer(tiny_flux())
    kwargs = inputs(**BRANCH_SIZES["non-square, mismatched"], batch=2, pairs=2)
    with masked_attention(leak):
        leaking = model(**kwargs)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(model(**kwargs), leaking, atol=10 * ATOL, rtol=10 * RTOL)


@torch.no_grad()
def test_attention_is_unmasked_one_call_per_branch_on_the_set_backend(monkeypatch):
    model = SemiNFTTransformer(tiny_flux())
    model.flux.set_attention_backend("native")
    kwargs = inputs(**BRANCH_SIZES["non-square, mismatched"], batch=2, pairs=2)
    n_main, n_reference, n_source = TEXT_TOKENS + 24, 32, 15
    calls = []

    def spy(query, key, value, attn_mask=None, **options):
        calls.append((query.shape[1], key.shape[1], attn_mask, options["backend"]))
        return dispatch_attention_fn(query, key, value, attn_mask=attn_mask, **options)

    monkeypatch.setattr(transformer, "dispatch_attention_fn", spy)
    native = AttentionBackendName.NATIVE
    n_all = n_main + n_reference + n_source
    per_branch = [(n_reference, n_reference, None, native), (n_source, n_source, None, native)]
    model(**kwargs)
    assert calls == [(n_main, n_all, None, native), *per_branch] * 4
    calls.clear()
    cached_forward(model, kwargs)  # conditions alone once, then main queries against own + cached keys
    assert calls == per_branch * 4 + [(n_main, n_all, None, native)] * 4

"""FLUX forward for SemiNFT: per-branch modulation, branch attention and the condition KV cache.

The sequence is `[text | noisy | reference | source]` (see `conditioning`). diffusers' FLUX
blocks modulate all image tokens with one `temb`; here the condition tokens (reference and
source) get a `temb` of their own, by default that of t = 0 with the same guidance and pooled
text embedding, as OminiControl does. Condition tokens attend only their own branch
(`conditioning.branch_attention_mask`), so their hidden states, keys and values in every block
depend neither on the noisy latent, nor on the text, nor on the denoising step:
`build_condition_cache` computes them once and every step then runs only text + noisy tokens
against them.

That mask is never built here: attention runs as one unmasked call per branch (main queries
against every key, each condition against its own keys), which computes no score the mask
would discard and leaves SDPA free to pick its flash kernels, or whichever backend diffusers'
`attention_backend` / `set_attention_backend` selects.

The block forwards below reuse the blocks' own submodules (norms, projections, feed-forwards),
so weights are shared with the wrapped `FluxTransformer2DModel` and PEFT LoRA layers on it
are used as they are.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

KeyValue = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ConditionCache:
    """Keys and values `[B, N_condition, heads, head_dim]` (after RoPE) of the condition tokens,
    one pair per block, double-stream blocks first.

    Valid for one (reference, source, LoRA state, pooled text embedding, guidance,
    condition timestep): build a new one when any of them changes.
    """

    kv: list[KeyValue]
    condition_timestep: float


class BranchAttnProcessor:
    """FLUX joint attention over SemiNFT's branches through diffusers' attention dispatch.

    The call's sequence is the main branch (text + noisy, possibly empty) followed by condition
    branches of `condition_sizes` tokens. `condition_kv` appends cached condition keys/values to
    those the main branch attends; `kv_out`, when given, collects this call's keys/values (to
    build a `ConditionCache`). Without conditions it computes what diffusers' `FluxAttnProcessor`
    does without a mask.
    """

    _attention_backend = None

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: KeyValue | None = None,
        condition_sizes: Sequence[int] = (),
        condition_kv: KeyValue | None = None,
        kv_out: list[KeyValue] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None:
            raise ValueError("BranchAttnProcessor takes no attention_mask: the branch structure is its condition_sizes")
        query, key, value = _joint_projections(attn, hidden_states, encoder_hidden_states)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if kv_out is not None:
            kv_out.append((key, value))

        out = _branch_attention(query, key, value, condition_sizes, condition_kv, self._attention_backend)
        out = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        text, image = out.split_with_sizes([encoder_hidden_states.shape[1], hidden_states.shape[1]], dim=1)
        return attn.to_out[1](attn.to_out[0](image)), attn.to_add_out(text)


def _branch_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    condition_sizes: Sequence[int],
    condition_kv: KeyValue | None,
    backend: AttentionBackendName | None,
) -> torch.Tensor:
    """`branch_attention_mask`'s attention as unmasked calls, one per non-empty branch.

    `[B, L, heads, head_dim]` tensors whose last `sum(condition_sizes)` tokens are condition
    branches: main rows attend every key (and `condition_kv`), each condition branch only its
    own keys. Equal to the masked call up to float rounding, without computing the scores the
    mask discards (condition queries against other branches' keys); a branch of no tokens (no
    reference or source, or no main rows while building a cache) makes no call.
    """
    n_main = query.shape[1] - sum(condition_sizes)
    main_key, main_value = key, value
    if condition_kv is not None:
        batch = key.shape[0]
        main_key = torch.cat([key, condition_kv[0].expand(batch, -1, -1, -1)], dim=1)
        main_value = torch.cat([value, condition_kv[1].expand(batch, -1, -1, -1)], dim=1)

    calls = [(query[:, :n_main], main_key, main_value)]
    start = n_main
    for size in condition_sizes:
        own = slice(start, start + size)
        calls.append((query[:, own], key[:, own], value[:, own]))
        start += size
    return torch.cat(
        [dispatch_attention_fn(q, k, v, backend=backend) for q, k, v in calls if q.shape[1]], dim=1
    )


def _heads(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(-1, (-1, attn.head_dim))


def _joint_projections(
    attn: torch.nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values `[B, L, heads, head_dim]` of `[text | image]`, QK-normed."""
    query = attn.norm_q(_heads(attn, attn.to_q(hidden_states)))
    key = attn.norm_k(_heads(attn, attn.to_k(hidden_states)))
    value = _heads(attn, attn.to_v(hidden_states))
    if encoder_hidden_states is not None:
        text_query = attn.norm_added_q(_heads(attn, attn.add_q_proj(encoder_hidden_states)))
        text_key = attn.norm_added_k(_heads(attn, attn.add_k_proj(encoder_hidden_states)))
        text_value = _heads(attn, attn.add_v_proj(encoder_hidden_states))
        query = torch.cat([text_query, query], dim=1)
        key = torch.cat([text_key, key], dim=1)
        value = torch.cat([text_value, value], dim=1)
    return query, key, value


def _clip_fp16(x: torch.Tensor) -> torch.Tensor:
    """FLUX keeps fp16 activations finite after its residual additions."""
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x


def _double_stream_residuals(
    x: torch.Tensor,
    attn_out: torch.Tensor,
    norm: torch.nn.Module,
    ff: torch.nn.Module,
    gate_msa: torch.Tensor,
    shift_mlp: torch.Tensor,
    scale_mlp: torch.Tensor,
    gate_mlp: torch.Tensor,
) -> torch.Tensor:
    """The gated attention and feed-forward residuals of one stream of a double-stream block."""
    x = x + gate_msa[:, None] * attn_out
    ff_in = norm(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    return x + gate_mlp[:, None] * ff(ff_in)


def _double_stream_block(
    block: FluxTransformerBlock,
    text: torch.Tensor,
    noisy: torch.Tensor,
    conditions: torch.Tensor,
    temb: torch.Tensor,
    condition_temb: torch.Tensor,
    rotary: KeyValue,
    attention_kwargs: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`FluxTransformerBlock.forward` with the image stream split in two: noisy tokens are
    modulated (`norm1`, and the `norm2`/`ff` shift, scale and gates) by `temb`, condition tokens
    by `condition_temb`; text keeps `temb` with its own `norm1_context`/`ff_context`."""
    normed_text, *text_modulation = block.norm1_context(text, emb=temb)
    normed_noisy, *noisy_modulation = block.norm1(noisy, emb=temb)
    normed_conditions, *condition_modulation = block.norm1(conditions, emb=condition_temb)

    image_out, text_out = block.attn(
        hidden_states=torch.cat([normed_noisy, normed_conditions], dim=1),
        encoder_hidden_states=normed_text,
        image_rotary_emb=rotary,
        **attention_kwargs,
    )
    noisy_out, conditions_out = image_out.split_with_sizes([noisy.shape[1], conditions.shape[1]], dim=1)

    noisy = _double_stream_residuals(noisy, noisy_out, block.norm2, block.ff, *noisy_modulation)
    conditions = _double_stream_residuals(conditions, conditions_out, block.norm2, block.ff, *condition_modulation)
    text = _double_stream_residuals(text, text_out, block.norm2_context, block.ff_context, *text_modulation)
    return _clip_fp16(text), noisy, conditions


def _single_stream_block(
    block: FluxSingleTransformerBlock,
    text: torch.Tensor,
    noisy: torch.Tensor,
    conditions: torch.Tensor,
    temb: torch.Tensor,
    condition_temb: torch.Tensor,
    rotary: KeyValue,
    attention_kwargs: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`FluxSingleTransformerBlock.forward` over `[text | noisy | conditions]`: the main branch
    is modulated (`norm` shift/scale and the `proj_out` gate) by `temb`, conditions by
    `condition_temb`; attention and MLP are shared, as in the block."""
    main = torch.cat([text, noisy], dim=1)
    normed_main, gate_main = block.norm(main, emb=temb)
    normed_conditions, gate_conditions = block.norm(conditions, emb=condition_temb)
    normed = torch.cat([normed_main, normed_conditions], dim=1)

    attn_out = block.attn(hidden_states=normed, image_rotary_emb=rotary, **attention_kwargs)
    out = block.proj_out(torch.cat([attn_out, block.act_mlp(block.proj_mlp(normed))], dim=2))
    main_out, conditions_out = out.split_with_sizes([main.shape[1], conditions.shape[1]], dim=1)

    main = _clip_fp16(main + gate_main[:, None] * main_out)
    conditions = _clip_fp16(conditions + gate_conditions[:, None] * conditions_out)
    text, noisy = main.split_with_sizes([text.shape[1], noisy.shape[1]], dim=1)
    return text, noisy, conditions


class SemiNFTTransformer(torch.nn.Module):
    """A `FluxTransformer2DModel` (`.flux`, shared, not copied) run on SemiNFT's three image
    branches with branch attention, per-branch modulation and an optional condition KV cache.

    Installs `BranchAttnProcessor` on every attention layer of `.flux`; called directly,
    `.flux` still computes plain FLUX (no condition branches are passed there).
    """

    def __init__(self, flux: FluxTransformer2DModel):
        super().__init__()
        self.flux = flux
        flux.set_attn_processor(BranchAttnProcessor())

    def forward(
        self,
        noisy: torch.Tensor,
        noisy_ids: torch.Tensor,
        reference: torch.Tensor | None,
        reference_ids: torch.Tensor | None,
        source: torch.Tensor | None,
        source_ids: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        txt_ids: torch.Tensor,
        timestep: torch.Tensor,
        guidance: torch.Tensor | None = None,
        *,
        condition_timestep: float | None = 0.0,
        cache: ConditionCache | None = None,
    ) -> torch.Tensor:
        """Velocity `[B, N_noisy, C_out]` for the packed noisy tokens.

        `timestep` `[B]` is t in [0, 1] and `guidance` `[B]` the guidance scale, as FluxPipeline
        passes them (FLUX scales both by 1000). `condition_timestep` is the t at which the
        condition tokens are modulated; None modulates them with `timestep` (ablation). With
        `cache` (built at the same `condition_timestep`), `reference` and `source` are not
        read and only the text and noisy tokens are computed.
        """
        flux = self.flux
        noisy = flux.x_embedder(noisy)
        text = flux.context_embedder(encoder_hidden_states)
        temb = self._time_embedding(timestep, guidance, pooled_projections, noisy.dtype)

        if cache is None:
            conditions = flux.x_embedder(torch.cat([reference, source], dim=1))
            condition_temb = temb
            if condition_timestep is not None:
                condition_t = torch.full_like(timestep, condition_timestep)
                condition_temb = self._time_embedding(condition_t, guidance, pooled_projections, conditions.dtype)
            ids = torch.cat([txt_ids, noisy_ids, reference_ids, source_ids], dim=0)
            attention = [{"condition_sizes": (reference.shape[1], source.shape[1])}] * self._num_blocks
        else:
            if cache.condition_timestep != condition_timestep:
                raise ValueError(
                    f"the cache holds conditions modulated at t={cache.condition_timestep}, "
                    f"but condition_timestep={condition_timestep} was asked for"
                )
            conditions = noisy[:, :0]
            condition_temb = temb
            ids = torch.cat([txt_ids, noisy_ids], dim=0)
            attention = [{"condition_kv": kv} for kv in cache.kv]

        checkpoint = torch.is_grad_enabled() and flux.gradient_checkpointing
        noisy = self._run_blocks(
            text, noisy, conditions, temb, condition_temb, flux.pos_embed(ids), attention, checkpoint
        )
        return flux.proj_out(flux.norm_out(noisy, temb))

    def build_condition_cache(
        self,
        reference: torch.Tensor,
        reference_ids: torch.Tensor,
        source: torch.Tensor,
        source_ids: torch.Tensor,
        pooled_projections: torch.Tensor,
        guidance: torch.Tensor | None = None,
        condition_timestep: float = 0.0,
    ) -> ConditionCache:
        """One pass over the condition tokens alone, keeping their keys and values in every block.

        Exact without text and noisy tokens: condition rows attend only their own branch.
        """
        if condition_timestep is None:
            raise ValueError(
                "condition_timestep=None modulates the conditions with the current t, so their keys and "
                "values change every step: run forward without a cache"
            )
        conditions = self.flux.x_embedder(torch.cat([reference, source], dim=1))
        condition_t = torch.full(conditions.shape[:1], condition_timestep, device=conditions.device)
        condition_temb = self._time_embedding(condition_t, guidance, pooled_projections, conditions.dtype)
        kv: list[KeyValue] = []
        attention = [{"condition_sizes": (reference.shape[1], source.shape[1]), "kv_out": kv}] * self._num_blocks
        rotary = self.flux.pos_embed(torch.cat([reference_ids, source_ids], dim=0))
        empty = conditions[:, :0]
        self._run_blocks(empty, empty, conditions, condition_temb, condition_temb, rotary, attention, False)
        return ConditionCache(kv=kv, condition_timestep=condition_timestep)

    @property
    def _num_blocks(self) -> int:
        return len(self.flux.transformer_blocks) + len(self.flux.single_transformer_blocks)

    def _time_embedding(
        self, timestep: torch.Tensor, guidance: torch.Tensor | None, pooled: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """FLUX's `temb`, scaling t and guidance by 1000 as `FluxTransformer2DModel.forward` does."""
        timestep = timestep.to(dtype) * 1000
        if guidance is None:
            return self.flux.time_text_embed(timestep, pooled)
        return self.flux.time_text_embed(timestep, guidance.to(dtype) * 1000, pooled)

    def _run_blocks(
        self,
        text: torch.Tensor,
        noisy: torch.Tensor,
        conditions: torch.Tensor,
        temb: torch.Tensor,
        condition_temb: torch.Tensor,
        rotary: KeyValue,
        attention: list[dict[str, Any]],
        checkpoint: bool,
    ) -> torch.Tensor:
        """All double-stream then single-stream blocks; `attention[i]` goes to block i's processor."""
        blocks: list[tuple[Callable, torch.nn.Module]] = [
            *((_double_stream_block, block) for block in self.flux.transformer_blocks),
            *((_single_stream_block, block) for block in self.flux.single_transformer_blocks),
        ]
        for (block_forward, block), attention_kwargs in zip(blocks, attention, strict=True):
            args = (block, text, noisy, conditions, temb, condition_temb, rotary, attention_kwargs)
            if checkpoint:
                text, noisy, conditions = self.flux._gradient_checkpointing_func(block_forward, *args)
            else:
                text, noisy, conditions = block_forward(*args)
        return noisy

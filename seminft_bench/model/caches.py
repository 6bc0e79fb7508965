"""On-disk caches that keep the text encoders and the VAE encoder out of the training loop.

- Prompt embeddings: SemiNFT uses one task description for every sample (paper §3.5), so
  its T5 and CLIP embeddings are computed once per text encoders and read back from disk,
  keyed by the text and the encoders' identity; the text encoders (about 10 GB for FLUX) are
  loaded only when the cache misses.
- VAE latents: keyed by all that shapes them (the image file's hash, the working size and the
  resize rule) in a folder named after the VAE's identity, never by step or loader index, so a
  shuffled loader always gets each sample's own latents (diffusers' FLUX LoRA scripts cache them
  by position and mis-pair them when the loader shuffles), and a changed image or setting is
  encoded again while everything else is reused.

Every file is a safetensors file written atomically: a killed job leaves either the
whole file or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from seminft_bench.errors import MissingWeightsError
from seminft_bench.fileio import atomic_write_bytes
from seminft_bench.model.components import DEFAULT_BASE, how_to_provide, locate_weights

T5_MAX_SEQUENCE_LENGTH = 512
"""FLUX.1-dev's T5 prompt length (`FluxPipeline`'s default)."""

TEXT_ENCODER_SUBFOLDERS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


@dataclass
class PromptEmbeddings:
    """A prompt encoded as FLUX's transformer consumes it."""

    prompt_embeds: torch.Tensor
    """T5 token embeddings, ``[1, L, D]``."""
    pooled_prompt_embeds: torch.Tensor
    """CLIP pooled embedding, ``[1, D]``."""
    text_ids: torch.Tensor
    """Position ids of the text tokens, ``[L, 3]``, all zeros as in FLUX."""

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> PromptEmbeddings:
        """Embeddings on ``device`` and in ``dtype``; ``text_ids`` keep their dtype, as `FluxPipeline` passes them."""
        return PromptEmbeddings(
            self.prompt_embeds.to(device=device, dtype=dtype),
            self.pooled_prompt_embeds.to(device=device, dtype=dtype),
            self.text_ids.to(device=device),
        )


def prompt_embeddings(
    prompt: str,
    encoders: str,
    cache_dir: str | os.PathLike,
    *,
    encode: Callable[[str], PromptEmbeddings],
    max_sequence_length: int = T5_MAX_SEQUENCE_LENGTH,
) -> PromptEmbeddings:
    """The embeddings of ``prompt`` by the text encoders ``encoders`` (their identity, `text_encoders_identity`),
    computed with ``encode`` only if ``cache_dir`` lacks them.

    The cache key (`prompt_key`) is a hash of (encoders, prompt, max_sequence_length); ``encode`` must
    pad to ``max_sequence_length`` tokens, which is checked, so a key never holds embeddings of another
    length. Tensors come back on the CPU.
    """
    path = Path(cache_dir) / f"{prompt_key(prompt, encoders, max_sequence_length)}.safetensors"
    if path.exists():
        return PromptEmbeddings(**load_file(path))
    embeddings = encode(prompt)
    _check_prompt_shapes(embeddings, max_sequence_length)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in vars(embeddings).items()}
    metadata = {"encoders": encoders, "prompt": prompt, "max_sequence_length": str(max_sequence_length)}
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return PromptEmbeddings(**tensors)


def prompt_key(prompt: str, encoders: str, max_sequence_length: int = T5_MAX_SEQUENCE_LENGTH) -> str:
    """What a prompt's cached embeddings are keyed by: the text, the encoders' identity and the padded length."""
    return _digest({"encoders": encoders, "prompt": prompt, "max_sequence_length": max_sequence_length})


@dataclass
class PromptEncoder:
    """Prompt text to FLUX's embeddings, each prompt encoded once per machine (and once per process).

    ``identity`` names the text encoders (`text_encoders_identity`, or ``tiny:SEED`` for the tiny
    stand-ins); with a ``cache_dir`` the embeddings are kept on disk under `prompt_key`.
    """

    identity: str
    encode: Callable[[str], PromptEmbeddings]
    cache_dir: Path | None = None
    max_sequence_length: int = T5_MAX_SEQUENCE_LENGTH

    def __post_init__(self) -> None:
        self._memo: dict[str, PromptEmbeddings] = {}

    @classmethod
    def flux(
        cls, base: str, cache_dir: str | os.PathLike, device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> PromptEncoder:
        """FLUX's CLIP and T5 of ``base``, loaded only when a prompt is not in ``cache_dir`` yet."""
        return cls(text_encoders_identity(base), encode_with_flux_text_encoders(base, device, dtype), Path(cache_dir))

    @classmethod
    def tiny(cls, seed: int = 0) -> PromptEncoder:
        """The tiny components' stand-in embeddings (`tiny_prompt_embeddings`), computed, never stored."""
        return cls(f"tiny:{seed}", lambda prompt: tiny_prompt_embeddings(prompt, seed))

    def key(self, prompt: str) -> str:
        return prompt_key(prompt, self.identity, self.max_sequence_length)

    def __call__(self, prompt: str) -> PromptEmbeddings:
        if prompt not in self._memo:
            if self.cache_dir is None:
                self._memo[prompt] = self.encode(prompt)
            else:
                self._memo[prompt] = prompt_embeddings(
                    prompt, self.identity, self.cache_dir, encode=self.encode, max_sequence_length=self.max_sequence_length
                )
        return self._memo[prompt]


SMALL_FILE = 64 << 20
"""Files up to this size are identified by their content's hash, larger ones more cheaply."""


def text_encoders_identity(base: str | os.PathLike) -> str:
    """A short hash of ``base``'s text encoders and tokenizers as files, without loading them.

    Small files (configs, vocabularies) count by content; large weight files by their name in the
    Hugging Face cache (a blob is named by its content's hash), else by size and modification time.
    A changed encoder thus gets new prompt embeddings, and a file copied elsewhere at worst one
    needless encoding. Raises `MissingWeightsError` when they are not on disk.
    """
    folder = text_encoders_folder(os.fspath(base))
    digest = hashlib.sha256()
    for name in TEXT_ENCODER_SUBFOLDERS:
        for path in sorted(p for p in (folder / name).rglob("*") if p.is_file()):
            digest.update(f"{path.relative_to(folder)}\0{_file_fingerprint(path)}\0".encode())
    return digest.hexdigest()[:16]


def text_encoders_folder(base: str) -> Path:
    """The model folder of ``base``, checked to hold FLUX's text encoders and tokenizers (`MissingWeightsError` if not)."""
    folder = locate_weights(base)
    missing = [name for name in TEXT_ENCODER_SUBFOLDERS if not (folder / name).is_dir()]
    if missing:
        raise MissingWeightsError(
            f"text encoders of {base!r} not found: {folder} lacks {', '.join(f'{name}/' for name in missing)}. "
            f"{how_to_provide(base)}"
        )
    return folder


def _file_fingerprint(path: Path) -> str:
    resolved = path.resolve()
    stat = resolved.stat()
    if stat.st_size <= SMALL_FILE:
        return hashlib.sha256(resolved.read_bytes()).hexdigest()
    if resolved.parent.name == "blobs":
        return resolved.name
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _check_prompt_shapes(embeddings: PromptEmbeddings, length: int) -> None:
    tokens = embeddings.prompt_embeds
    if tokens.ndim != 3 or tokens.shape[:2] != (1, length) or embeddings.pooled_prompt_embeds.shape[0] != 1:
        raise ValueError(
            f"encode returned prompt_embeds {tuple(tokens.shape)} and pooled_prompt_embeds "
            f"{tuple(embeddings.pooled_prompt_embeds.shape)}; expected [1, {length}, D] and [1, D] "
            "(pass the max_sequence_length the encoder pads to)"
        )
    if embeddings.text_ids.shape != (length, 3):
        raise ValueError(f"encode returned text_ids {tuple(embeddings.text_ids.shape)}; expected [{length}, 3]")


def encode_with_flux_text_encoders(
    base: str | os.PathLike = DEFAULT_BASE,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    max_sequence_length: int = T5_MAX_SEQUENCE_LENGTH,
) -> Callable[[str], PromptEmbeddings]:
    """An ``encode`` for `prompt_embeddings` that runs FLUX's CLIP and T5 through `FluxPipeline.encode_prompt`.

    The text encoders are loaded on the first call, not here, so a run whose prompt is
    already cached never loads them. That first call raises
    `MissingWeightsError` when they are absent. Device and dtype default as in
    `components.load_components`.
    """
    pipeline = None

    def encode(prompt: str) -> PromptEmbeddings:
        nonlocal pipeline
        if pipeline is None:
            pipeline = _load_text_encoders(os.fspath(base), device, dtype)
        with torch.no_grad():
            prompt_embeds, pooled_prompt_embeds, text_ids = pipeline.encode_prompt(
                prompt, device=pipeline.text_encoder.device, max_sequence_length=max_sequence_length
            )
        return PromptEmbeddings(prompt_embeds, pooled_prompt_embeds, text_ids)

    return encode


def _load_text_encoders(base: str, device: str | torch.device | None, dtype: torch.dtype | None):
    from diffusers import FluxPipeline

    folder = text_encoders_folder(base)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        pipeline = FluxPipeline.from_pretrained(
            folder, transformer=None, vae=None, dtype=dtype, local_files_only=True
        )
    except OSError as error:
        raise MissingWeightsError(
            f"text encoders of {base!r} at {folder} are incomplete ({error}). {how_to_provide(base)}"
        ) from error
    return pipeline.to(device)


def tiny_prompt_embeddings(prompt: str, seed: int = 0, dim: int = 32, length: int = 8) -> PromptEmbeddings:
    """Deterministic stand-in embeddings for the tiny components: a hash of (prompt, seed) seeds them.

    Different prompts give different embeddings, so tests can tell prompts apart; ``dim``
    matches the tiny transformer's ``joint_attention_dim`` and ``pooled_projection_dim``.
    """
    generator = torch.Generator().manual_seed(int(_digest({"prompt": prompt, "seed": seed}), 16) % 2**63)
    return PromptEmbeddings(
        prompt_embeds=torch.randn(1, length, dim, generator=generator),
        pooled_prompt_embeds=torch.randn(1, dim, generator=generator),
        text_ids=torch.zeros(length, 3),
    )


def vae_identity(vae: torch.nn.Module) -> str:
    """A short hash of the VAE's class, config and every weight: two VAEs share it only if they encode alike.

    Private config entries (``_name_or_path``, ``_diffusers_version``) are left out, so the
    same weights loaded from another folder keep their identity. Hashing all weights takes
    well under a second for FLUX's VAE (84 M parameters), once per run.
    """
    digest = hashlib.sha256(type(vae).__name__.encode())
    config = {key: value for key, value in dict(getattr(vae, "config", {})).items() if not key.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in vae.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def image_digest(data: bytes) -> str:
    """The SHA-256 of an image file's bytes: what its latents are keyed by, so a replaced image is encoded again."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LatentKey:
    """All that shapes an image's latents besides the VAE: the image's bytes, the size it is resized to, and how."""

    image: str
    """`image_digest` of the file's bytes."""
    size: tuple[int, int]
    """(width, height) it is resized to before encoding."""
    resize: str
    """The resize rule (`pipeline.RESIZE_RULE`)."""

    def fields(self) -> dict[str, str]:
        return {"image": self.image, "size": f"{self.size[0]}x{self.size[1]}", "resize": self.resize}


class LatentCache:
    """VAE latents on disk, one safetensors file per `LatentKey` under ``folder/vae_identity/``.

    File names are hashes of the key; the file also records the key and `get` checks it, so a file can
    never be served for another image, size or rule. A setting or an image that changes makes a new
    key, which is encoded anew; every other entry stays. Processes may share a cache: writes are
    atomic, so a reader sees a whole file or none.
    """

    def __init__(self, folder: str | os.PathLike, vae_identity: str):
        if not re.fullmatch(r"[0-9A-Za-z_.-]+", vae_identity):
            raise ValueError(f"vae_identity must be a file-name-safe string as vae_identity(vae) gives, got {vae_identity!r}")
        self.folder = Path(folder) / vae_identity

    def path(self, key: LatentKey) -> Path:
        return self.folder / f"{_digest(key.fields())}.safetensors"

    def __contains__(self, key: LatentKey) -> bool:
        """Whether ``key`` is cached, without reading it (a rerun checks every image of a set this way)."""
        return self.path(key).exists()

    def get(self, key: LatentKey) -> torch.Tensor | None:
        """The cached latents (on the CPU), or None when ``key`` is not cached."""
        path = self.path(key)
        if not path.exists():
            return None
        with safe_open(path, framework="pt") as file:
            stored = file.metadata() or {}
            if {name: stored.get(name) for name in key.fields()} != key.fields():
                raise RuntimeError(f"{path} holds latents of {stored} instead of {key.fields()}")
            return file.get_tensor("latents")

    def put(self, key: LatentKey, latents: torch.Tensor) -> None:
        data = save({"latents": latents.detach().cpu().contiguous()}, metadata=key.fields())
        atomic_write_bytes(self.path(key), data)


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]

"""SemiNFT inference: regrade a source photo like a reference with FLUX and the structured-mask conditioning.

`SemiNFTPipeline` works at a fixed pixel area (aspect kept, sides in multiples of the
latent patch), encodes source and reference with the VAE, packs them as the condition
branches (`conditioning`), and integrates FLUX's rectified flow from noise to the target
with the Euler scheduler and FLUX's resolution-dependent shift. With the condition cache
(default) the condition tokens' keys and values are computed once per image pair, and
every step runs only the text and noisy tokens against them. The result is resized back to
the source's exact size. The prompt is the cold-start set's unified task description; its
embeddings come from an on-disk cache, so the text encoders load at most once per machine.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seminft_bench.errors import first_few
from seminft_bench.imaging import ImageSource, read_image, to_array
from seminft_bench.model.caches import PromptEmbeddings
from seminft_bench.model.components import DEFAULT_BASE, FluxComponents
from seminft_bench.model.conditioning import image_ids, pack_latents, unpack_latents
from seminft_bench.model.lora import LORA_FILE, LoraMismatchError, trained_on
from seminft_bench.model.transformer import ConditionCache, SemiNFTTransformer
from seminft_bench.pipelines.quadruplets import TASK_PROMPT

DEFAULT_PIXEL_AREA = 512 * 512
"""The paper trains and evaluates at 512² (§4); other aspect ratios keep this area."""
TINY_PIXEL_AREA = 64 * 64


class SemiNFTPipeline:
    """FLUX + the SemiNFT conditioning, ready to call: ``pipe(source, reference) -> PIL.Image``."""

    def __init__(
        self,
        components: FluxComponents,
        prompt: PromptEmbeddings,
        *,
        device: str | torch.device | None = None,
        pixel_area: int = DEFAULT_PIXEL_AREA,
        condition_timestep: float | None = 0.0,
        prompt_text: str = TASK_PROMPT,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.components = components
        self.transformer = SemiNFTTransformer(components.transformer.to(self.device))
        self.dtype = components.transformer.dtype
        """The transformer's compute dtype, read once: diffusers' ``.dtype`` walks every module on each call."""
        components.vae.to(self.device)
        self.prompt = prompt
        self.prompt_text = prompt_text
        self.pixel_area = pixel_area
        self.condition_timestep = condition_timestep
        self.lora_files: dict[str, Path] = {}
        self.lora_on: dict[str, str] = {}
        """Per adapter, the tokens it was trained on (``all``, or ``main``: the condition pass runs without it)."""
        self.active_adapters: tuple[list[str], list[float] | None] = ([], None)

    # ------------------------------------------------------------------ construction

    @classmethod
    def tiny(cls, seed: int = 0, *, device: str | None = "cpu", pixel_area: int = TINY_PIXEL_AREA) -> SemiNFTPipeline:
        """The same pipeline on tiny random components (transformer, VAE, prompt embeddings): tests and CPU demos."""
        from seminft_bench.model.caches import tiny_prompt_embeddings
        from seminft_bench.model.components import tiny_components

        components = tiny_components(seed)
        prompt = tiny_prompt_embeddings(TASK_PROMPT, seed)
        return cls(components, prompt, device=device, pixel_area=pixel_area)

    @classmethod
    def from_pretrained(
        cls,
        base: str | os.PathLike = DEFAULT_BASE,
        lora: Sequence[str | os.PathLike] = (),
        *,
        adapter_names: Sequence[str] | None = None,
        adapter_weights: Sequence[float] | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        cache_dir: str | os.PathLike | None = None,
        pixel_area: int = DEFAULT_PIXEL_AREA,
    ) -> SemiNFTPipeline:
        """FLUX.1-dev (a folder, or a hub id already in the local Hugging Face cache; ``tiny:SEED`` for the tiny
        random model) with the LoRAs in ``lora`` (diffusers format), named ``adapter_names`` (default
        ``coldstart``, ``rl``, then ``lora2``…) and weighted ``adapter_weights`` (default 1 each).

        Raises `MissingWeightsError` naming what is missing. The prompt embeddings are computed once with
        FLUX's text encoders and then read from ``cache_dir`` (default: beside the VAE-latent cache).
        """
        from seminft_bench.model.caches import encode_with_flux_text_encoders, prompt_embeddings
        from seminft_bench.model.components import load_components

        base = os.fspath(base)
        if base.startswith("tiny:"):
            pipe = cls.tiny(int(base.split(":", 1)[1]), device=device or "cpu")
        else:
            components = load_components(base, device=device, dtype=dtype)
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            embeddings = prompt_embeddings(
                TASK_PROMPT, base, cache_dir or default_cache_dir(),
                encode=encode_with_flux_text_encoders(base, device, components.transformer.dtype),
            )
            pipe = cls(components, embeddings, device=device, pixel_area=pixel_area)
        names = list(adapter_names or [])
        for i, path in enumerate(lora):
            name = names[i] if i < len(names) else ("coldstart", "rl")[i] if i < 2 else f"lora{i}"
            pipe.load_lora_weights(path, adapter_name=name)
        if lora:
            pipe.set_adapters(list(pipe.lora_files), adapter_weights)
        return pipe

    # ------------------------------------------------------------------ LoRA

    def load_lora_weights(self, path: str | os.PathLike, adapter_name: str = "default") -> None:
        """A diffusers-format LoRA (a folder with ``pytorch_lora_weights.safetensors``, or that file) as ``adapter_name``.

        Every layer and shape is checked against this transformer first: a LoRA trained for another
        model fails here, naming the first layers that do not fit, instead of loading half of it.
        A LoRA that `seminft-train` trained with ``lora_on: main`` (its ``seminft_lora.json`` says
        so) is left out of the condition pass, as in training.
        """
        from diffusers import FluxPipeline

        path = Path(path)
        state_dict = FluxPipeline.lora_state_dict(str(path))
        state_dict = state_dict[0] if isinstance(state_dict, tuple) else state_dict
        state_dict = {key.removeprefix("transformer."): value for key, value in state_dict.items()}
        check_lora_fits(state_dict, self.components.transformer, path)
        lora_on = trained_on(path)
        self.components.transformer.load_lora_adapter(state_dict, adapter_name=adapter_name, prefix=None)
        self.lora_files[adapter_name] = path
        self.lora_on[adapter_name] = lora_on
        self.active_adapters = (self.components.transformer.active_adapters(), None)

    def set_adapters(self, names: Sequence[str], weights: Sequence[float] | None = None) -> None:
        """Activate the adapters ``names`` with ``weights`` (default 1 each), as diffusers' ``set_adapters``."""
        weights = list(weights) if weights is not None else None
        self.components.transformer.set_adapters(list(names), weights)
        self.active_adapters = (list(names), weights)

    @contextmanager
    def condition_pass(self) -> Iterator[None]:
        """The adapters of the condition tokens' pass: the active ones, less those trained with ``lora_on: main``."""
        flux = self.components.transformer
        names, weights = self.active_adapters
        kept = [(name, 1.0 if weights is None else weight) for name, weight in zip(names, weights or names)
                if self.lora_on.get(name, "all") == "all"]
        if len(kept) == len(names):
            yield
            return
        if kept:
            flux.set_adapters([name for name, _ in kept], [weight for _, weight in kept])
        else:
            flux.disable_adapters()
        try:
            yield
        finally:
            if not kept:
                flux.enable_adapters()
            flux.set_adapters(list(names), weights)

    # ------------------------------------------------------------------ inference

    def __call__(
        self,
        source: ImageSource,
        reference: ImageSource,
        prompt: str | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.5,
        generator: torch.Generator | None = None,
        use_condition_cache: bool = True,
    ) -> Image.Image:
        """``source`` regraded like ``reference``, as an RGB image of exactly the source's size."""
        if prompt is not None and prompt != self.prompt_text:
            raise ValueError("this pipeline holds the embeddings of its unified prompt only; build one with the prompt wanted")
        source_image = read_image(source)
        latents = self.denoise(source_image, reference, num_inference_steps, guidance_scale, generator, use_condition_cache)
        with torch.inference_mode():
            image = self.components.decode(latents)
        return _to_pil(image[0]).resize(source_image.size, Image.Resampling.LANCZOS)

    @torch.inference_mode()
    def denoise(
        self,
        source: ImageSource,
        reference: ImageSource,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.5,
        generator: torch.Generator | None = None,
        use_condition_cache: bool = True,
    ) -> torch.Tensor:
        """The target's VAE latents ``[1, C, h, w]`` after the whole flow, before decoding."""
        return self.denoise_latents(
            self._encode(read_image(source)), self._encode(read_image(reference)), num_inference_steps,
            guidance_scale, generator, use_condition_cache,
        )

    @torch.inference_mode()
    def denoise_latents(
        self,
        source_latents: torch.Tensor,
        reference_latents: torch.Tensor,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.5,
        generator: torch.Generator | None = None,
        use_condition_cache: bool = True,
        num_samples: int = 1,
    ) -> torch.Tensor:
        """`denoise` from the VAE latents of source and reference (as training caches them).

        ``num_samples`` > 1 (one pair only) draws that many samples from fresh noise in one batch, the
        conditions computed once for all of them: a group of RL rollouts.
        """
        source_latents = source_latents.to(self.device, self.components.vae.dtype)
        reference_latents = reference_latents.to(self.device, self.components.vae.dtype)
        pairs, channels, height, width = source_latents.shape
        if num_samples > 1 and pairs != 1:
            raise ValueError(f"num_samples={num_samples} draws samples of one pair, got {pairs}")
        batch = pairs * num_samples
        conditions = self._condition_tokens(source_latents, reference_latents)
        noise = torch.randn(
            (batch, channels, height, width), generator=generator, device=generator.device if generator else "cpu"
        )
        latents = pack_latents(noise.to(self.device, conditions["source"].dtype))
        noisy_ids = image_ids(0, height, width, device=self.device)
        text = self._text_inputs(batch)
        guidance = self._guidance(guidance_scale, batch)
        # A LoRA trained on the main branch only never touches the conditions: they then always go
        # through the cache, built once (cache on) or at every step (cache off, same numbers).
        # The cache of one pair serves every sample of it.
        per_step_cache = not use_condition_cache and set(self.lora_on.values()) & {"main"}
        pair_text, pair_guidance = self._text_inputs(pairs), self._guidance(guidance_scale, pairs)
        cache = self.condition_cache(conditions, pair_text, pair_guidance) if use_condition_cache else None
        if not use_condition_cache and not per_step_cache and num_samples > 1:
            conditions = {k: v.expand(batch, -1, -1) if v.ndim == 3 else v for k, v in conditions.items()}
        scheduler = self._scheduler(num_inference_steps, latents.shape[1])
        for t in scheduler.timesteps:
            timestep = (t / 1000).expand(batch).to(latents.dtype)
            if per_step_cache:
                cache = self.condition_cache(conditions, pair_text, pair_guidance)
            velocity = self.transformer(
                latents, noisy_ids, **(dict.fromkeys(conditions) if cache else conditions), **text,
                timestep=timestep, guidance=guidance, condition_timestep=self.condition_timestep, cache=cache,
            )
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        return unpack_latents(latents, height, width)

    def condition_cache(self, conditions: dict, text: dict, guidance: torch.Tensor | None) -> ConditionCache:
        """The condition tokens' keys and values in every block, under the condition pass's adapters."""
        with self.condition_pass():
            return self.transformer.build_condition_cache(
                **conditions, pooled_projections=text["pooled_projections"], guidance=guidance,
                condition_timestep=self.condition_timestep,
            )

    def work_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) with the pixel area, the aspect ratio of ``size`` and sides in multiples of the patch."""
        multiple = 2 * self.components.vae_scale_factor
        width, height = size
        scale = (self.pixel_area / (width * height)) ** 0.5
        return tuple(max(multiple, int(round(side * scale / multiple)) * multiple) for side in (width, height))

    def _encode(self, image: Image.Image) -> torch.Tensor:
        resized = image.resize(self.work_size(image.size), Image.Resampling.LANCZOS)
        pixels = torch.from_numpy(to_array(resized, np.float32)).permute(2, 0, 1)[None]
        return self.components.encode(pixels.to(self.device, self.components.vae.dtype))

    def _condition_tokens(self, source_latents: torch.Tensor, reference_latents: torch.Tensor) -> dict[str, torch.Tensor]:
        (_, _, sh, sw), (_, _, rh, rw) = source_latents.shape, reference_latents.shape
        dtype = self.dtype
        return {
            "reference": pack_latents(reference_latents).to(dtype),
            "reference_ids": image_ids(1, rh, rw, device=self.device),
            "source": pack_latents(source_latents).to(dtype),
            "source_ids": image_ids(2, sh, sw, device=self.device),
        }

    def _text_inputs(self, batch: int) -> dict[str, torch.Tensor]:
        dtype = self.dtype
        return {
            "encoder_hidden_states": self.prompt.prompt_embeds.to(self.device, dtype).expand(batch, -1, -1),
            "pooled_projections": self.prompt.pooled_prompt_embeds.to(self.device, dtype).expand(batch, -1),
            "txt_ids": self.prompt.text_ids.to(self.device),
        }

    def _guidance(self, scale: float, batch: int) -> torch.Tensor | None:
        if not self.components.transformer.config.guidance_embeds:
            return None
        return torch.full((batch,), scale, device=self.device, dtype=torch.float32)

    def _scheduler(self, steps: int, image_seq_len: int):
        """A fresh copy of FLUX's Euler flow scheduler, shifted for this many image tokens as FluxPipeline does."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = type(self.components.scheduler).from_config(self.components.scheduler.config)
        config = scheduler.config
        mu = calculate_shift(
            image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5), config.get("max_shift", 1.15),
        )
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device=self.device)
        scheduler.set_begin_index(0)
        return scheduler

    def lora_hashes(self) -> dict[str, str]:
        """SHA-256 of each loaded LoRA file, by adapter name (what a benchmark cell is keyed by)."""
        return {name: file_sha256(_weights_file(path)) for name, path in self.lora_files.items()}


def check_lora_fits(state_dict: dict[str, torch.Tensor], transformer: torch.nn.Module, path: Path) -> None:
    """Every ``X.lora_A/B.weight`` names a linear layer X of ``transformer`` with matching shapes."""
    modules = dict(transformer.named_modules())
    problems = []
    for key, tensor in state_dict.items():
        for part, axis, attribute in ((".lora_A.weight", 1, "in_features"), (".lora_B.weight", 0, "out_features")):
            if key.endswith(part):
                layer = modules.get(key.removesuffix(part))
                layer = getattr(layer, "base_layer", layer)  # a layer that already holds a LoRA wraps the linear one
                if not isinstance(layer, torch.nn.Linear):
                    problems.append(f"{key}: no such linear layer")
                elif tensor.shape[axis] != getattr(layer, attribute):
                    problems.append(f"{key}: {tuple(tensor.shape)} does not fit {attribute}={getattr(layer, attribute)}")
    if not state_dict or problems:
        shown = first_few(problems, 3) or "no LoRA layers in the file"
        raise LoraMismatchError(f"{path} is not a LoRA for this FLUX transformer: {shown}")


def _weights_file(path: Path) -> Path:
    return path / LORA_FILE if path.is_dir() else path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/seminft-bench/model`` (prompt embeddings and VAE latents)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seminft-bench" / "model"


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)

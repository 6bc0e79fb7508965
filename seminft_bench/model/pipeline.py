"""SemiNFT inference: regrade a source photo like a reference with FLUX and the structured-mask conditioning.

`SemiNFTPipeline` works at a fixed pixel area (aspect kept, sides in multiples of the latent
patch: `RESIZE_RULE`), encodes source and reference with the VAE, packs them as the condition
branches (`conditioning`), and integrates FLUX's rectified flow from noise to the target with the
Euler scheduler and FLUX's resolution-dependent shift. With the condition cache (default) the
condition tokens' keys and values are computed once per image pair, and every step runs only the
text and noisy tokens against them. The result is resized back to the source's exact size. The
prompt's embeddings come from an on-disk cache, so the text encoders load at most once per machine.

A LoRA trained by `seminft-train` carries the settings it was trained under (`lora.LoraRecord`):
loading it restores them here (condition timestep, working area, prompt), checks that it belongs to
this base, and refuses LoRAs stacked with it that were trained otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seminft_bench.errors import first_few
from seminft_bench.imaging import ImageSource, read_image, to_array
from seminft_bench.model.caches import PromptEmbeddings, PromptEncoder
from seminft_bench.model.components import DEFAULT_BASE, FluxComponents, base_identity
from seminft_bench.model.conditioning import image_ids, pack_latents, unpack_latents
from seminft_bench.model.lora import (
    LoraMismatchError,
    LoraRecord,
    check_compatible,
    inject_lora,
    loaded_lora_config,
    lora_file,
    lora_fingerprint,
    read_record,
    transformer_part,
)
from seminft_bench.model.transformer import ConditionCache, SemiNFTTransformer
from seminft_bench.pipelines.quadruplets import TASK_PROMPT

DEFAULT_PIXEL_AREA = 512 * 512
"""The working area when nothing says otherwise. The paper gives no resolution; 512² is OminiControl's
and DiffusionNFT's training size, and a trained LoRA brings its own (`lora.LoraRecord.pixel_area`)."""
TINY_PIXEL_AREA = 64 * 64
RESIZE_RULE = "area-aspect-lanczos"
"""How an image reaches the working size: the pixel area kept, the aspect kept, sides rounded to multiples
of the latent patch (`SemiNFTPipeline.work_size`), Lanczos resampling. Recorded with every LoRA and keyed
into the latent cache: a change of rule must change this name."""
CONDITIONS = ("reference", "reference_ids", "source", "source_ids")


class SemiNFTPipeline:
    """FLUX + the SemiNFT conditioning, ready to call: ``pipe(source, reference) -> PIL.Image``."""

    def __init__(
        self,
        components: FluxComponents,
        prompts: PromptEncoder,
        *,
        prompt: str | None = TASK_PROMPT,
        device: str | torch.device | None = None,
        pixel_area: int = DEFAULT_PIXEL_AREA,
        condition_timestep: float | None = 0.0,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.components = components
        self.transformer = SemiNFTTransformer(components.transformer.to(self.device))
        self.dtype = components.transformer.dtype
        """The transformer's compute dtype, read once: diffusers' ``.dtype`` walks every module on each call."""
        components.vae.to(self.device)
        self.prompts = prompts
        self.prompt_text = prompt
        """The prompt used when none is given; None for a LoRA trained on per-sample prompts."""
        self.pixel_area = pixel_area
        self.condition_timestep = condition_timestep
        self.lora_files: dict[str, Path] = {}
        self.lora_on: dict[str, str] = {}
        """Per adapter, the tokens it was trained on (``all``, or ``main``: the condition pass runs without it)."""
        self.records: dict[str, tuple[str, LoraRecord]] = {}
        """Per loaded adapter, its file and the record of how it was trained."""
        self.active_adapters: tuple[list[str], list[float] | None] = ([], None)

    # ------------------------------------------------------------------ construction

    @classmethod
    def tiny(cls, seed: int = 0, *, device: str | None = "cpu", pixel_area: int = TINY_PIXEL_AREA) -> SemiNFTPipeline:
        """The same pipeline on tiny random components (transformer, VAE, prompt embeddings): tests and CPU demos."""
        from seminft_bench.model.components import tiny_components

        return cls(tiny_components(seed), PromptEncoder.tiny(seed), device=device, pixel_area=pixel_area)

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
        pixel_area: int | None = None,
        quantize: str | None = None,
    ) -> SemiNFTPipeline:
        """FLUX.1-dev (a folder, or a hub id already in the local Hugging Face cache; ``tiny:SEED`` for the tiny
        random model) with the LoRAs in ``lora`` (diffusers format), named ``adapter_names`` (default
        ``coldstart``, ``rl``, then ``lora2``…) and weighted ``adapter_weights`` (default 1 each).

        The LoRAs' records set the condition timestep, the prompt and the working area; ``pixel_area``
        overrides the area (default: the LoRAs', else 512², or 64² for the tiny model). ``quantize`` stores the
        base's transformer as ``nf4`` or ``float8`` (`components.load_components`), as a LoRA trained on such a
        base was: it then runs exactly as in training. Raises
        `MissingWeightsError` naming what is missing. Prompt embeddings are computed once with FLUX's text
        encoders and then read from ``cache_dir`` (default: beside the VAE-latent cache).
        """
        from seminft_bench.model.components import load_components

        base = os.fspath(base)
        if base.startswith("tiny:"):
            pipe = cls.tiny(int(base.split(":", 1)[1]), device=device or "cpu")
        else:
            components = load_components(base, device=device, dtype=dtype, quantize=quantize)
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            prompts = PromptEncoder.flux(base, cache_dir or default_cache_dir(), device, components.transformer.dtype)
            pipe = cls(components, prompts, device=device)
        names = list(adapter_names or [])
        for i, path in enumerate(lora):
            name = names[i] if i < len(names) else ("coldstart", "rl")[i] if i < 2 else f"lora{i}"
            pipe.load_lora_weights(path, adapter_name=name)
        if lora:
            pipe.set_adapters(list(pipe.lora_files), adapter_weights)
        if pixel_area is not None:
            pipe.pixel_area = pixel_area
        return pipe

    # ------------------------------------------------------------------ LoRA

    def load_lora_weights(self, path: str | os.PathLike, adapter_name: str = "default") -> LoraRecord | None:
        """A diffusers-format LoRA (a folder with ``pytorch_lora_weights.safetensors``, or that file) as
        ``adapter_name``, at the scale it was saved with (alpha / rank, as diffusers' own loader applies it).

        Every layer and shape is checked against this transformer first: a LoRA trained for another model
        fails here, naming the first layers that do not fit, instead of loading half of it. A LoRA of
        `seminft-train` brings its record: its base must be this one, its settings become this pipeline's,
        and a LoRA already loaded under other settings is refused. Returns the record (None for a LoRA
        made elsewhere, which runs under the pipeline's settings).
        """
        from diffusers import FluxPipeline
        from peft import set_peft_model_state_dict

        path = Path(path)
        file = lora_file(path)  # before diffusers, which names neither a missing path nor a cut file
        record = read_record(file)
        state_dict, alphas, metadata = FluxPipeline.lora_state_dict(  # any FLUX LoRA format, in diffusers' names
            str(path), return_alphas=True, return_lora_metadata=True
        )
        check_lora_fits(state_dict, self.components.transformer, path)
        state = transformer_part(state_dict)
        if record is not None:
            self._check(record, str(file))
        inject_lora(self.components.transformer, adapter_name, loaded_lora_config(state, alphas, metadata), state)
        set_peft_model_state_dict(self.components.transformer, state, adapter_name=adapter_name)
        self.lora_files[adapter_name] = path
        self.lora_on[adapter_name] = record.lora_on if record else "all"
        if record is not None:  # run as trained
            self.records[adapter_name] = (str(file), record)
            self.condition_timestep, self.pixel_area, self.prompt_text = (
                record.condition_timestep, record.pixel_area, record.prompt
            )
        self.active_adapters = (self.components.transformer.active_adapters(), None)
        return record

    def _check(self, record: LoraRecord, label: str) -> None:
        """Refuse a LoRA of another base or resize rule, or one trained otherwise than those already loaded."""
        here = base_identity(self.components.transformer)
        if record.base_identity != here:
            raise LoraMismatchError(
                f"{label} was trained on {record.base!r} (transformer {record.base_identity}); this pipeline runs "
                f"{self.components.base!r} (transformer {here}), another model"
            )
        if record.resize != RESIZE_RULE:
            raise LoraMismatchError(f"{label} was trained with resize rule {record.resize!r}; this version has {RESIZE_RULE!r}")
        check_compatible([*self.records.values(), (label, record)])

    def record(self, lora_on: str, kind: str, step: int) -> LoraRecord:
        """This pipeline's settings as the record of a LoRA trained on it (`save_lora` adds the LoRA's own config)."""
        return LoraRecord(
            lora_on=lora_on, condition_timestep=self.condition_timestep, pixel_area=self.pixel_area,
            resize=RESIZE_RULE, prompt=self.prompt_text,
            prompt_key=self.prompts.key(self.prompt_text) if self.prompt_text is not None else None,
            base=self.components.base, base_identity=base_identity(self.components.transformer), kind=kind, step=step,
        )  # fmt: skip

    def set_adapters(self, names: Sequence[str], weights: Sequence[float] | None = None) -> None:
        """Activate the adapters ``names`` with ``weights`` (default 1 each), as diffusers' ``set_adapters``;
        no names: run the bare base."""
        flux = self.components.transformer
        names, weights = list(names), list(weights) if weights is not None else None
        if not names:
            flux.disable_adapters()
        else:
            if not self.active_adapters[0]:
                flux.enable_adapters()
            flux.set_adapters(names, weights)
        self.active_adapters = (names, weights)

    @contextmanager
    def adapters(self, names: Sequence[str], weights: Sequence[float] | None = None) -> Iterator[None]:
        """Run with only ``names`` active (no names: the bare base), then restore the adapters found.

        Which LoRA weights require gradients is left exactly as it was: peft marks the adapters it
        activates trainable and the others frozen, which would otherwise let a frozen LoRA learn.
        """
        wanted = (list(names), list(weights) if weights is not None else None)
        if wanted == self.active_adapters:
            yield
            return
        before = self.active_adapters
        flags = [(p, p.requires_grad) for name, p in self.components.transformer.named_parameters() if "lora_" in name]
        self.set_adapters(*wanted)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        try:
            yield
        finally:
            self.set_adapters(*before)
            for parameter, flag in flags:
                parameter.requires_grad_(flag)

    def condition_pass(self) -> AbstractContextManager[None]:
        """The adapters of the condition tokens' pass: the active ones, less those trained with ``lora_on: main``."""
        names, weights = self.active_adapters
        kept = [(name, 1.0 if weights is None else weight) for name, weight in zip(names, weights or names)
                if self.lora_on.get(name, "all") == "all"]  # fmt: skip
        if len(kept) == len(names):
            return self.adapters(names, weights)
        return self.adapters([name for name, _ in kept], [weight for _, weight in kept])

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
        source_image = read_image(source)
        latents = self.denoise(
            source_image, reference, num_inference_steps, guidance_scale, generator, use_condition_cache, prompt=prompt
        )
        return self.decode(latents)[0].resize(source_image.size, Image.Resampling.LANCZOS)

    @torch.inference_mode()
    def denoise(
        self,
        source: ImageSource,
        reference: ImageSource,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.5,
        generator: torch.Generator | None = None,
        use_condition_cache: bool = True,
        *,
        prompt: str | None = None,
    ) -> torch.Tensor:
        """The target's VAE latents ``[1, C, h, w]`` after the whole flow, before decoding."""
        return self.denoise_latents(
            self.encode_image(source), self.encode_image(reference), num_inference_steps, guidance_scale, generator,
            use_condition_cache, prompt=prompt,
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
        *,
        prompt: str | None = None,
    ) -> torch.Tensor:
        """`denoise` from the VAE latents of source and reference (as training caches them).

        ``num_samples`` > 1 (one pair only) draws that many samples from fresh noise in one batch, the
        conditions computed once for all of them: a group of RL rollouts. The condition cache is used
        where it is exact: conditions at a fixed timestep (not with ``condition_timestep`` None).
        """
        source_latents = source_latents.to(self.device, self.components.vae.dtype)
        reference_latents = reference_latents.to(self.device, self.components.vae.dtype)
        pairs, channels, height, width = source_latents.shape
        if num_samples > 1 and pairs != 1:
            raise ValueError(f"num_samples={num_samples} draws samples of one pair, got {pairs}")
        noise = torch.randn(
            (pairs * num_samples, channels, height, width), generator=generator,
            device=generator.device if generator else "cpu",
        )
        latents = noise.to(self.device, self.dtype)
        conditions = dict(source=source_latents, reference=reference_latents)
        if use_condition_cache and self.condition_timestep is not None:  # the cache of one pair serves every sample
            conditions = dict(cache=self.condition_cache(source_latents, reference_latents, guidance_scale, prompt))
        scheduler = self._scheduler(num_inference_steps, (height // 2) * (width // 2))
        for t in scheduler.timesteps:
            velocity = self.velocity(latents, t / 1000, **conditions, guidance_scale=guidance_scale, prompt=prompt)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        return latents

    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor | float,
        *,
        source: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        cache: ConditionCache | None = None,
        guidance_scale: float = 3.5,
        prompt: str | None = None,
    ) -> torch.Tensor:
        """The active adapters' velocity ``[B, C, h, w]`` at the noisy latents ``[B, C, h, w]`` and noise level
        ``sigma`` (a number or ``[B]``), conditioned on a `condition_cache` or on the ``source`` and
        ``reference`` latents (one pair, or one per sample). Gradients flow when enabled: the loss of training."""
        batch, _, height, width = latents.shape
        text = self._text_inputs(batch, prompt)
        guidance = self._guidance(guidance_scale, batch)
        if cache is None and self.condition_timestep is not None and "main" in {self.lora_on.get(n) for n in self.active_adapters[0]}:
            cache = self.condition_cache(source, reference, guidance_scale, prompt)  # such a LoRA never sees the conditions
        conditions = dict.fromkeys(CONDITIONS) if cache else self._condition_tokens(source, reference, batch)
        timestep = torch.as_tensor(sigma, dtype=torch.float32, device=self.device).expand(batch)
        out = self.transformer(
            pack_latents(latents).to(self.device, self.dtype), image_ids(0, height, width, device=self.device),
            **conditions, **text, timestep=timestep, guidance=guidance, condition_timestep=self.condition_timestep,
            cache=cache,
        )
        return unpack_latents(out, height, width)

    def condition_cache(
        self, source: torch.Tensor, reference: torch.Tensor, guidance_scale: float = 3.5, prompt: str | None = None
    ) -> ConditionCache:
        """The condition tokens' keys and values in every block for a pair's latents, under the condition pass's
        adapters (with gradients when enabled)."""
        pairs = source.shape[0]
        with self.condition_pass():
            return self.transformer.build_condition_cache(
                **self._condition_tokens(source, reference, pairs),
                pooled_projections=self._text_inputs(pairs, prompt)["pooled_projections"],
                guidance=self._guidance(guidance_scale, pairs), condition_timestep=self.condition_timestep,
            )

    def sigmas(self, num_inference_steps: int, image_tokens: int) -> torch.Tensor:
        """The noise levels a sampling of ``num_inference_steps`` visits, from 1 down, without the final 0."""
        return self._scheduler(num_inference_steps, image_tokens).sigmas[:-1].float()

    def _scheduler(self, steps: int, image_tokens: int):
        """A fresh copy of FLUX's Euler flow scheduler, shifted for this many image tokens as `FluxPipeline` does."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = type(self.components.scheduler).from_config(self.components.scheduler.config)
        config = scheduler.config
        mu = calculate_shift(
            image_tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5), config.get("max_shift", 1.15),
        )
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device=self.device)
        scheduler.set_begin_index(0)
        return scheduler

    def work_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) with the pixel area, the aspect ratio of ``size`` and sides in multiples of the patch."""
        multiple = 2 * self.components.vae_scale_factor
        width, height = size
        scale = (self.pixel_area / (width * height)) ** 0.5
        return tuple(max(multiple, int(round(side * scale / multiple)) * multiple) for side in (width, height))

    def encode_image(self, image: ImageSource) -> torch.Tensor:
        """VAE latents ``[1, C, h, w]`` of an image resized to its working size (`RESIZE_RULE`)."""
        image = read_image(image)
        resized = image.resize(self.work_size(image.size), Image.Resampling.LANCZOS)
        pixels = torch.from_numpy(to_array(resized, np.float32)).permute(2, 0, 1)[None]
        return self.components.encode(pixels.to(self.device, self.components.vae.dtype))

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """RGB images of latents ``[B, C, h, w]``, at the working size."""
        with torch.inference_mode():
            images = self.components.decode(latents)
        return [_to_pil(image) for image in images]

    def embeddings(self, prompt: str | None = None) -> PromptEmbeddings:
        """The embeddings of ``prompt`` (default: this pipeline's)."""
        prompt = prompt if prompt is not None else self.prompt_text
        if prompt is None:
            raise ValueError("this LoRA was trained on per-sample prompts: pass the prompt to use")
        return self.prompts(prompt)

    def _condition_tokens(self, source: torch.Tensor, reference: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
        (pairs, _, sh, sw), (_, _, rh, rw) = source.shape, reference.shape
        if pairs not in (1, batch):
            raise ValueError(f"conditions of {pairs} pairs for a batch of {batch}")
        return {
            "reference": pack_latents(reference.to(self.device)).to(self.dtype).expand(batch, -1, -1),
            "reference_ids": image_ids(1, rh, rw, device=self.device),
            "source": pack_latents(source.to(self.device)).to(self.dtype).expand(batch, -1, -1),
            "source_ids": image_ids(2, sh, sw, device=self.device),
        }

    def _text_inputs(self, batch: int, prompt: str | None = None) -> dict[str, torch.Tensor]:
        embeddings = self.embeddings(prompt)
        return {
            "encoder_hidden_states": embeddings.prompt_embeds.to(self.device, self.dtype).expand(batch, -1, -1),
            "pooled_projections": embeddings.pooled_prompt_embeds.to(self.device, self.dtype).expand(batch, -1),
            "txt_ids": embeddings.text_ids.to(self.device),
        }

    def _guidance(self, scale: float, batch: int) -> torch.Tensor | None:
        if not self.components.transformer.config.guidance_embeds:
            return None
        return torch.full((batch,), scale, device=self.device, dtype=torch.float32)

    def lora_hashes(self) -> dict[str, str]:
        """`lora.lora_fingerprint` of each loaded LoRA, by adapter name (what a benchmark cell is keyed by)."""
        return {name: lora_fingerprint(path) for name, path in self.lora_files.items()}


def check_lora_fits(state_dict: dict[str, torch.Tensor], transformer: torch.nn.Module, path: Path) -> None:
    """Every ``lora_A/B.weight`` of a file (in diffusers' names) is ``transformer.X``'s, for a linear layer X of
    ``transformer`` with matching shapes: a text encoder's LoRA is refused, not left out."""
    modules = {f"transformer.{name}": module for name, module in transformer.named_modules()}
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


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/seminft-bench/model`` (prompt embeddings and VAE latents)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seminft-bench" / "model"


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)

"""``ours``: SemiNFT itself, FLUX.1-dev with the cold-start (and RL) LoRA through `SemiNFTPipeline`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from seminft_bench.bench.methods.base import Method, MethodContext, MethodUnavailable
from seminft_bench.bench.samples import BenchSet
from seminft_bench.errors import MissingWeightsError

OPTIONS = ("base", "lora", "steps", "guidance_scale", "seed", "pixel_area")
"""What ``--ours-*`` flags and an ``--ours-config`` YAML file may set."""


class Ours(Method):
    """The SemiNFT pipeline with ``lora`` (cold-start, then RL) on ``base``; one seed for every sample.

    ``base`` is a FLUX.1-dev folder, a hub id in the local cache, or ``tiny:SEED`` (the tiny random
    model of the tests and the demo: it shows the flow runs, not what the method can do).
    The pipeline loads in `prepare`, so missing weights stop the method before its first sample.
    """

    name = "ours"
    concurrency = 1  # one model on one device
    runs_on = "gpu"

    def __init__(
        self,
        base: str = "black-forest-labs/FLUX.1-dev",
        lora: Sequence[str | os.PathLike] = (),
        *,
        steps: int = 28,
        guidance_scale: float = 3.5,
        seed: int = 0,
        pixel_area: int | None = None,
        device: str | None = None,
    ):
        self.base, self.lora = str(base), [Path(p) for p in lora]
        self.steps, self.guidance_scale, self.seed, self.pixel_area, self.device = steps, guidance_scale, seed, pixel_area, device
        self.pipe = None

    @classmethod
    def from_context(cls, context: MethodContext) -> Ours:
        options = dict(context.options.get("ours", {}))
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise MethodUnavailable(f"ours: unknown option(s) {sorted(unknown)}; known: {', '.join(OPTIONS)}")
        return cls(**options, device=context.device)

    def prepare(self, bench_set: BenchSet) -> None:
        from seminft_bench.model.lora import LoraFileError, LoraMismatchError, lora_file
        from seminft_bench.model.pipeline import SemiNFTPipeline

        try:
            for path in self.lora:  # before the base, which takes minutes to load
                lora_file(path)
            # the LoRAs' records set the condition timestep, the prompt and the working area
            self.pipe = SemiNFTPipeline.from_pretrained(self.base, self.lora, device=self.device, pixel_area=self.pixel_area)
        except (MissingWeightsError, LoraFileError, LoraMismatchError) as error:
            raise MethodUnavailable(f"ours: {error}") from error

    def settings(self) -> dict:
        """Base, each LoRA's SHA-256, steps, guidance, seed, and the settings the pipeline runs under (from the LoRAs'
        records: pixel area, prompt, condition timestep): a changed LoRA is run again."""
        pipe = self.pipe
        return {
            **super().settings(), "base": self.base, "lora": pipe.lora_hashes() if pipe else [str(p) for p in self.lora],
            "steps": self.steps, "guidance_scale": self.guidance_scale, "seed": self.seed,
            "pixel_area": pipe.pixel_area if pipe else self.pixel_area, "prompt": pipe.prompt_text if pipe else None,
            "condition_timestep": pipe.condition_timestep if pipe else 0.0,
        }

    def transfer(self, source: Image.Image, reference: Image.Image) -> Image.Image:
        import torch

        if self.pipe is None:
            raise MethodUnavailable("ours: call prepare() first")
        generator = torch.Generator("cpu").manual_seed(self.seed)
        return self.pipe(source, reference, num_inference_steps=self.steps, guidance_scale=self.guidance_scale, generator=generator)


def read_options(path: str | os.PathLike) -> Mapping[str, object]:
    """An ``--ours-config`` YAML file: a mapping of `OPTIONS`."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or set(data) - set(OPTIONS):
        raise ValueError(f"{path}: expected a mapping of {', '.join(OPTIONS)}, got {data!r:.200}")
    return data

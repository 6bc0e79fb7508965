"""Qwen-Image-Edit through diffusers, loaded from local files only.

One loader serves both stages that edit by instruction: the cold-start builder, which
adds or removes an object in some reference frames (`pipelines.editing`), and the
benchmark, where the model is a baseline (`bench.methods.editors`). Weights are never
downloaded: the model is read from a local folder or the local Hugging Face cache, so a
job cannot stall on the network or change under a moving hub. torch and diffusers are
imported on first use.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from seminft_bench.errors import MissingWeightsError

if TYPE_CHECKING:
    from diffusers import QwenImageEditPipeline

QWEN_IMAGE_EDIT = "Qwen/Qwen-Image-Edit"
DTYPES = ("bfloat16", "float16", "float32")


class QwenImageEditor:
    """Qwen-Image-Edit through diffusers' `QwenImageEditPipeline`, loaded from local files on first edit.

    ``model`` is a hub id found in the local Hugging Face cache or a folder saved with
    ``save_pretrained``. ``device`` defaults to CUDA when present; there the model runs in
    ``dtype``, while on CPU it runs in float32 (bf16 matmuls are slow or missing on CPUs).
    The pipeline works at about one megapixel at the input's aspect ratio, the resolution
    the model was trained for; the result is resized back to the input's size.
    """

    name = "qwen-image-edit"

    def __init__(
        self,
        model: str | os.PathLike = QWEN_IMAGE_EDIT,
        device: str | None = None,
        dtype: str = "bfloat16",
        num_inference_steps: int = 50,
        true_cfg_scale: float = 4.0,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.model = os.fspath(model)
        self.device = device
        self.dtype = dtype
        self.num_inference_steps = num_inference_steps
        self.true_cfg_scale = true_cfg_scale
        self._pipeline = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the settings only, so a copy sent to another process loads its own pipeline there."""
        return {**self.__dict__, "_pipeline": None}

    def edit(self, image: Image.Image, instruction: str, seed: int) -> Image.Image:
        """``image`` edited by ``instruction``, the same for the same seed, at the input's size."""
        import torch

        pipeline = self.load()
        generator = torch.Generator(device=pipeline.device).manual_seed(seed)
        edited = pipeline(
            image=image.convert("RGB"),
            prompt=instruction,
            negative_prompt=" ",  # enables true CFG, as in the model card's example
            true_cfg_scale=self.true_cfg_scale,
            num_inference_steps=self.num_inference_steps,
            generator=generator,
        ).images[0]
        edited = edited.convert("RGB")
        if edited.size != image.size:
            edited = edited.resize(image.size, Image.Resampling.LANCZOS)
        return edited

    def load(self) -> QwenImageEditPipeline:
        """The pipeline, loaded once; weights are found before importing torch, so missing ones fail fast."""
        if self._pipeline is not None:
            return self._pipeline
        folder = _locate_weights(self.model)
        import torch
        from diffusers import QwenImageEditPipeline

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = self.dtype
        if torch.device(device).type == "cpu":
            dtype = "float32"
            warnings.warn(
                "Qwen-Image-Edit runs on CPU in float32: expect minutes per edit; use a GPU for real builds",
                stacklevel=3,
            )
        try:
            pipeline = QwenImageEditPipeline.from_pretrained(
                folder, dtype=getattr(torch, dtype), local_files_only=True
            )
        except OSError as error:
            raise MissingWeightsError(f"{folder}: not a complete QwenImageEditPipeline ({error})") from error
        pipeline.set_progress_bar_config(disable=True)
        self._pipeline = pipeline.to(device)
        return self._pipeline


def _locate_weights(model: str) -> Path:
    """``model`` itself when it is a folder, else its snapshot in the local Hugging Face cache."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except (HFValidationError, LocalEntryNotFoundError) as error:
        raise MissingWeightsError(
            f"editor weights {model!r} not found: not a folder, and not in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE} (set by HF_HUB_CACHE or HF_HOME). Download them on a machine "
            f"with network access (`hf download {model}`) and copy that cache folder here, pointing "
            f"HF_HOME or HF_HUB_CACHE at it, or pass a local folder with --editor-model PATH"
        ) from error

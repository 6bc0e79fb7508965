"""Instruction-guided edits of reference frames (paper §3.5).

The cold-start builder adds or removes one salient object in frame B of some pairs before
the preset is applied, so the model learns to transfer a look between related but not
identical scenes. An editor is anything with a ``name`` and ``edit(image, instruction,
seed)`` (`Editor`); `QwenImageEditor` is the paper's Qwen-Image-Edit through diffusers, and
`make_editor` maps the builder's ``--editor`` flag to one.

Weights are never downloaded here: the model is read from a local folder or the local
Hugging Face cache, so a build cannot stall on the network or change under a moving hub.
torch and diffusers are imported on first use, so builds without an editor do not pay for them.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from seminft_bench.errors import MissingWeightsError

if TYPE_CHECKING:
    from diffusers import QwenImageEditPipeline

EDIT_INSTRUCTIONS = (
    "add a red umbrella",
    "add a flock of birds in the sky",
    "add a dog sitting in the foreground",
    "add a black cat on the ground",
    "add a person walking in the background",
    "add a parked bicycle",
    "add a hot air balloon in the sky",
    "add a wooden bench",
    "add a street lamp",
    "add a potted plant",
    "add a yellow taxi",
    "add a red car on the road",
    "add a small boat on the water",
    "add a kite in the sky",
    "add a bouquet of flowers",
    "add a coffee cup on the table",
    "add a backpack on the ground",
    "add an orange traffic cone",
    "add a straw hat",
    "add a pair of sunglasses to the person",
    "add a butterfly",
    "add a seagull",
    "add a horse in the field",
    "add a tree on the left",
    "add a stack of books",
    "add a blue balloon",
    "add a mailbox",
    "add a paper lantern",
    "add a rainbow in the sky",
    "add a fire hydrant",
    "add a suitcase",
    "remove the car",
    "remove the person on the left",
    "remove the person on the right",
    "remove the dog",
    "remove the cat",
    "remove the bird",
    "remove the tree",
    "remove the bicycle",
    "remove the boat",
    "remove the umbrella",
    "remove the bench",
    "remove the street lamp",
    "remove the sign",
    "remove the chair",
    "remove the table",
    "remove the building in the background",
    "remove the clouds",
    "remove the bus",
    "remove the truck",
    "remove the motorcycle",
    "remove the horse",
    "remove the flowers",
    "remove the lamp",
    "remove the cup",
    "remove the bag",
    "remove the hat",
    "remove the fence",
    "remove the pole",
    "remove the rock in the foreground",
    "remove the plant",
)
"""Add/remove instructions in the style of the paper ("add a red umbrella", "remove the car")."""

ADD_INSTRUCTIONS = tuple(i for i in EDIT_INSTRUCTIONS if i.startswith("add "))
REMOVE_INSTRUCTIONS = tuple(i for i in EDIT_INSTRUCTIONS if i.startswith("remove "))

CAPTION_OBJECTS = (
    "man", "woman", "person", "child", "boy", "girl", "dog", "cat", "bird", "horse", "cow",
    "sheep", "car", "bus", "truck", "bicycle", "motorcycle", "boat", "airplane", "tree", "bench",
    "umbrella", "chair", "table", "lamp", "sign", "flag", "balloon", "kite", "ball", "bottle",
    "cup", "bag", "hat", "rock", "fence", "house", "building",
)
"""Common object nouns that a caption may name; a named one becomes "remove the <noun>"."""

_CAPTION_OBJECT = re.compile(r"\b(" + "|".join(CAPTION_OBJECTS) + r")(?:e?s)?\b", re.IGNORECASE)

QWEN_IMAGE_EDIT = "Qwen/Qwen-Image-Edit"
DTYPES = ("bfloat16", "float16", "float32")


@runtime_checkable
class Editor(Protocol):
    """Edits one image by a text instruction, deterministically for a given seed.

    ``edit`` returns an RGB image of exactly the input's size: the builder applies one
    geometry to frames A and B, and an edited B must still line up with it.
    """

    name: str

    def edit(self, image: Image.Image, instruction: str, seed: int) -> Image.Image: ...


def choose_instruction(rng: np.random.Generator, caption: str | None = None) -> str:
    """Draw one add or remove instruction (even odds), deterministically from ``rng``'s state.

    A removal names the object the caption mentions first among `CAPTION_OBJECTS` (singular
    or regular plural, any case), since a removal of something the frame shows is a real
    edit and the list's removals may not apply; without such a caption it is drawn from the
    list. Adds are always drawn from the list, so the caption changes removals only.
    """
    if rng.random() < 0.5:
        return ADD_INSTRUCTIONS[int(rng.integers(len(ADD_INSTRUCTIONS)))]
    named = _CAPTION_OBJECT.search(caption or "")
    if named:
        return f"remove the {named.group(1).lower()}"
    return REMOVE_INSTRUCTIONS[int(rng.integers(len(REMOVE_INSTRUCTIONS)))]


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


EDITORS = {QwenImageEditor.name: QwenImageEditor}
"""Editor classes by ``--editor`` name; each is built with the options given to `make_editor`."""

EDITOR_CHOICES = ("none", *EDITORS)


def make_editor(name: str, **options: Any) -> Editor | None:
    """The editor for ``--editor NAME`` built with ``options``; "none" gives None (options unused)."""
    if name == "none":
        return None
    if name not in EDITORS:
        raise ValueError(f"unknown editor {name!r}; choose one of: {', '.join(EDITOR_CHOICES)}")
    return EDITORS[name](**options)

"""Instruction-guided edits of reference frames (paper §3.5).

The cold-start builder adds or removes one salient object in frame B of some pairs before
the preset is applied, so the model learns to transfer a look between related but not
identical scenes. An editor is anything with a ``name`` and ``edit(image, instruction,
seed)`` (`Editor`); `QwenImageEditor` (`seminft_bench.qwen_edit`, local weights only) is
the paper's Qwen-Image-Edit, and `make_editor` maps the builder's ``--editor`` flag to one.
"""

from __future__ import annotations

import re
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from seminft_bench.qwen_edit import QwenImageEditor

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

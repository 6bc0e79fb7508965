"""Edit instructions, the editor registry, Qwen-Image-Edit loading: missing weights, a tiny random model."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from seminft_bench.pipelines.editing import (
    ADD_INSTRUCTIONS,
    EDIT_INSTRUCTIONS,
    REMOVE_INSTRUCTIONS,
    Editor,
    choose_instruction,
    make_editor,
)
from seminft_bench.qwen_edit import MissingWeightsError, QwenImageEditor



def test_instructions_are_unique_adds_and_removes():
    assert 50 <= len(EDIT_INSTRUCTIONS) <= 80
    assert len(set(EDIT_INSTRUCTIONS)) == len(EDIT_INSTRUCTIONS)
    assert all(i.startswith(("add ", "remove ")) for i in EDIT_INSTRUCTIONS)
    assert len(ADD_INSTRUCTIONS) + len(REMOVE_INSTRUCTIONS) == len(EDIT_INSTRUCTIONS)
    assert abs(len(ADD_INSTRUCTIONS) - len(REMOVE_INSTRUCTIONS)) <= 2


def test_choice_is_deterministic_and_covers_the_list():
    draws = [choose_instruction(np.random.default_rng(seed)) for seed in range(600)]
    assert draws == [choose_instruction(np.random.default_rng(seed)) for seed in range(600)]
    assert set(draws) == set(EDIT_INSTRUCTIONS)
    adds = sum(d.startswith("add ") for d in draws)
    assert 240 < adds < 360


def test_caption_turns_removals_into_the_first_named_object():
    caption = "Two Dogs run past a woman on the beach at sunset"
    plain = [choose_instruction(np.random.default_rng(seed)) for seed in range(100)]
    captioned = [choose_instruction(np.random.default_rng(seed), caption) for seed in range(100)]
    for without, with_caption in zip(plain, captioned):
        expected = without if without.startswith("add ") else "remove the dog"
        assert with_caption == expected
    assert "remove the dog" in captioned


def test_caption_without_known_objects_changes_nothing():
    for caption in ("", "sunset over the ocean, cinematic", "a scarecrow in a cartoon"):
        for seed in range(50):
            assert choose_instruction(np.random.default_rng(seed), caption) == choose_instruction(
                np.random.default_rng(seed)
            )


def test_make_editor():
    assert make_editor("none") is None
    editor = make_editor("qwen-image-edit", model="some/model", num_inference_steps=8)
    assert isinstance(editor, QwenImageEditor) and isinstance(editor, Editor)
    assert (editor.name, editor.model, editor.num_inference_steps) == ("qwen-image-edit", "some/model", 8)
    with pytest.raises(ValueError, match="none, qwen-image-edit"):
        make_editor("instruct-pix2pix")
    with pytest.raises(ValueError, match="dtype"):
        make_editor("qwen-image-edit", dtype="bf16")


def test_missing_hub_weights_name_model_cache_and_remedy(tmp_path):
    """A fresh process, so huggingface_hub reads the cache location from this environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    script = textwrap.dedent("""
        from PIL import Image
        from seminft_bench.qwen_edit import MissingWeightsError, QwenImageEditor
        try:
            QwenImageEditor().edit(Image.new("RGB", (32, 32)), "remove the car", seed=0)
        except MissingWeightsError as error:
            print(error)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "'Qwen/Qwen-Image-Edit'" in message
    assert str(tmp_path / "hf" / "hub") in message
    assert "hf download Qwen/Qwen-Image-Edit" in message and "--editor-model" in message


def test_missing_or_incomplete_local_folder(tmp_path):
    image = Image.new("RGB", (32, 32))
    with pytest.raises(MissingWeightsError, match="no-such-folder"):
        QwenImageEditor(model=tmp_path / "no-such-folder", device="cpu").edit(image, "remove the car", seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingWeightsError, match="not a complete QwenImageEditPipeline"):
        with pytest.warns(UserWarning, match="CPU"):
            QwenImageEditor(model=empty, device="cpu").edit(image, "remove the car", seed=0)


def test_qwen_image_editor_runs_a_saved_tiny_pipeline(tiny_qwen_edit_dir):
    frame = Image.fromarray(skimage.data.astronaut()).resize((64, 48))
    editor = QwenImageEditor(model=tiny_qwen_edit_dir, device="cpu", num_inference_steps=2)
    with pytest.warns(UserWarning, match="CPU"):
        first = editor.edit(frame, "add a red umbrella", seed=0)
    again = editor.edit(frame, "add a red umbrella", seed=0)
    reseeded = editor.edit(frame, "add a red umbrella", seed=1)
    assert first.mode == "RGB" and first.size == frame.size
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != reseeded.tobytes()
    assert len(pickle.dumps(editor)) < 2_000  # settings only: a worker loads its own pipeline


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qwen_image_editor_on_cuda_in_bfloat16(tiny_qwen_edit_dir):
    frame = Image.fromarray(skimage.data.astronaut()).resize((80, 64))
    editor = QwenImageEditor(model=tiny_qwen_edit_dir, num_inference_steps=2)
    first = editor.edit(frame, "remove the person on the left", seed=3)
    assert first.mode == "RGB" and first.size == frame.size
    assert first.tobytes() == editor.edit(frame, "remove the person on the left", seed=3).tobytes()

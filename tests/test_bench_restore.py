"""`seminft-bench restore`: old photo -> VLM prompt (planted server) -> tiny random text-to-image reference ->
SemiNFT (tiny) -> result, every intermediate kept, reruns resuming, bad input skipped, missing models named."""

import json
import threading

import numpy as np
import pytest
import skimage.data
from PIL import Image
from typer.testing import CliRunner

from seminft_bench.bench.restore import reference_size, tiny_text_to_image
from seminft_bench.cli.bench import app
from seminft_bench.imaging import to_array
from seminft_bench.vlm.testserver import Answer
from seminft_bench.vlm.writer import RESTORATION_PROMPT

KEY = "sk-restore-test-0123456789"


class Plan:
    """Prompts that name the photo's brightness; rewards that prefer the brighter restored output."""

    def __init__(self):
        self.lock, self.prompts, self.rewards, self.empty = threading.Lock(), 0, 0, 0

    def __call__(self, seen):
        with self.lock:
            if seen.reward:
                self.rewards += 1
                score = int(np.clip(round(10 * to_array(seen.images[1], np.float32).mean()), 0, 5))
                return Answer(str(score), logprobs={str(score): 0.0}, output_tokens=1)
            self.prompts += 1
            if self.empty:
                self.empty -= 1
                return Answer(" ")
        assert seen.system == RESTORATION_PROMPT.system and len(seen.images) == 1
        level = "bright" if to_array(seen.images[0], np.float32).mean() > 0.5 else "dim"
        return Answer(f"A photorealistic colour photograph of a {level} scene, warm evening light")


@pytest.fixture
def server(planted_vlm):
    return planted_vlm(Plan(), KEY, "qwen3-vl-32b", "qwen3-vl-8b")


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    """The tiny random FLUX text-to-image pipeline, saved and so loaded back the way a real one is."""
    folder = tmp_path_factory.mktemp("tiny-t2i")
    tiny_text_to_image(0).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("old")
    grey = skimage.data.astronaut()[::6, ::4].mean(axis=2).astype(np.uint8)  # portrait-ish, black and white
    Image.fromarray(grey).convert("RGB").save(folder / "portrait.jpg")
    sepia = (skimage.data.coffee()[::5, ::5] * [0.45, 0.38, 0.3]).astype(np.uint8)  # landscape, faded
    Image.fromarray(sepia).save(folder / "faded.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def restore(server, tmp_path, t2i, photos, *extra):
    out = tmp_path / "restored"
    args = ["restore", "--source", str(photos / "portrait.jpg"), "--source", str(photos / "faded.png"),
            "--source", str(photos / "broken.jpg"), "--out", str(out), "--t2i", t2i, "--t2i-steps", "2", "--t2i-area", "4096",
            "--method", "ours", "--ours-base", "tiny:0", "--ours-steps", "2", "--config", server.config,
            "--cache", str(tmp_path / "cache"), "--max-attempts", "2", *extra]  # fmt: skip
    return CliRunner().invoke(app, args), out


def test_restores_each_photo_keeps_every_stage_and_resumes(server, tmp_path, t2i, photos):
    result, out = restore(server, tmp_path, t2i, photos)
    assert result.exit_code == 0, result.output
    assert "2 restored, 1 unreadable (skipped)" in result.output and "broken" in result.output
    for name, photo in (("portrait", photos / "portrait.jpg"), ("faded", photos / "faded.png")):
        size = Image.open(photo).size
        prompt = (out / name / "prompt.txt").read_text()
        assert prompt.startswith("A photorealistic colour photograph of a dim scene")
        reference = Image.open(out / name / "reference.png")
        assert reference.size == reference_size(size, 64 * 64)  # the photo's aspect ratio at the tiny area
        assert abs(reference.width / reference.height - size[0] / size[1]) < 0.25
        assert Image.open(out / name / "result.png").size == size  # the photo itself, regraded
    assert Image.open(out / "contact_sheet.png").size[0] == 3 * 320
    assert server.plan.prompts == 2 and server.calls == 2 and KEY not in result.output
    costs = json.loads((out / "vlm.costs.json").read_text())
    assert "qwen3-vl-32b" in json.dumps(costs) and KEY not in json.dumps(costs)

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png") if p.name != "contact_sheet.png"}
    again, _ = restore(server, tmp_path, t2i, photos)
    assert again.exit_code == 0 and server.calls == 2  # prompts kept: no VLM call
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # nothing painted or transferred again

    other, _ = restore(server, tmp_path, t2i, photos, "--seed", "1")  # other noise: the kept stages do not fit
    assert other.exit_code != 0 and "made with other settings" in other.output


def test_several_candidates_keep_the_one_the_reward_model_scores_best(server, tmp_path, t2i, photos):
    result, out = restore(server, tmp_path, t2i, photos, "--references", "3")
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "faded" / "scores.json").read_text())
    values = [c["score"] for c in scores["candidates"]]
    best = int(np.argmax(values))
    assert len(values) == 3 and scores["reward"] == "qwen3-vl-8b"
    kept = to_array(Image.open(out / "faded" / "reference.png"))
    assert np.array_equal(kept, to_array(Image.open(out / "faded" / f"reference-{best + 1}.png")))
    assert np.array_equal(to_array(Image.open(out / "faded" / "result.png")), to_array(Image.open(out / "faded" / f"result-{best + 1}.png")))
    assert server.plan.rewards == 6  # three candidates for each of the two photos


def test_a_photo_whose_prompt_fails_is_listed_the_others_restored_and_a_rerun_retries_it(server, tmp_path, t2i, photos):
    server.plan.empty = 2  # the first photo's prompt: empty replies until its two tries are spent
    result, out = restore(server, tmp_path, t2i, photos)
    assert result.exit_code == 1 and "1 restored" in result.output and "1 failed" in result.output
    assert "the VLM wrote no prompt" in result.output
    failed = next(name for name in ("portrait", "faded") if not (out / name / "result.png").exists())
    again, _ = restore(server, tmp_path, t2i, photos)
    assert again.exit_code == 0 and (out / failed / "result.png").exists()


def test_a_missing_model_fails_at_once_naming_it(server, tmp_path, photos):
    result, out = restore(server, tmp_path, str(tmp_path / "no-such-flux"), photos)
    assert result.exit_code != 0 and "no-such-flux" in result.output
    assert server.calls == 0 and not out.exists()  # nothing asked, nothing written

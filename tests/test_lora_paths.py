"""A bad LoRA path (nothing there, an empty folder, a cut file) stops every command in one line that names it."""

import re
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from seminft_bench.bench.methods.base import MethodUnavailable
from seminft_bench.bench.methods.ours import Ours
from seminft_bench.bench.samples import BenchSet
from seminft_bench.cli.bench import app as bench_app
from seminft_bench.cli.train import app as train_app
from seminft_bench.imaging import sample_photo
from seminft_bench.model.lora import LORA_FILE, RECORD_FILE, LoraFileError, lora_file, lora_fingerprint
from seminft_bench.model.pipeline import SemiNFTPipeline
from test_model_nft_loop import write_coldstart_lora, write_pairs

runner = CliRunner()


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny cold-start LoRA as `seminft-train sft` leaves it."""
    return write_coldstart_lora(tmp_path_factory.mktemp("good") / "coldstart")


def cut(good, folder):
    """A copy of ``good``'s folder whose LoRA file a kill cut in half, in the middle of its tensor data."""
    folder.mkdir()
    shutil.copy(good / RECORD_FILE, folder / RECORD_FILE)
    data = (good / LORA_FILE).read_bytes()
    assert len(data) // 2 > 8 + int.from_bytes(data[:8], "little")  # the header is whole: only the tensors are cut
    (folder / LORA_FILE).write_bytes(data[: len(data) // 2])
    return folder


def bad_path(kind, good, tmp_path):
    """The bad path of ``kind`` and the message's words that say what is wrong with it."""
    if kind == "missing":
        return tmp_path / "no-such-run", "no such LoRA file or folder"
    if kind == "empty folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty", f"a folder without {LORA_FILE}"
    if kind == "cut folder":
        return cut(good, tmp_path / "cut"), "not a readable safetensors file (truncated or corrupt"
    return cut(good, tmp_path / "cut") / LORA_FILE, "not a readable safetensors file (truncated or corrupt"


KINDS = ["missing", "empty folder", "cut folder", "cut file"]


def assert_one_line_naming(result, path, words):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and str(path) in lines[0] and words in lines[0], result.output
    assert "Traceback" not in result.output


def test_a_whole_lora_passes_the_check(good):
    assert lora_file(good) == good / LORA_FILE == lora_file(good / LORA_FILE)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_file_names_the_path_and_the_problem(kind, good, tmp_path):
    path, words = bad_path(kind, good, tmp_path)
    with pytest.raises(LoraFileError, match="^" + re.escape(str(path))) as caught:
        lora_file(path)
    assert words in str(caught.value)


def test_a_cut_header_is_caught_too(good, tmp_path):
    folder = cut(good, tmp_path / "cut")
    (folder / LORA_FILE).write_bytes((good / LORA_FILE).read_bytes()[:100])
    with pytest.raises(LoraFileError, match=r"truncated or corrupt: 100 bytes, cut inside its \d+-byte header"):
        lora_file(folder)


@pytest.mark.parametrize("kind", KINDS)
def test_the_pipeline_and_the_ours_method_refuse_it_before_diffusers_reads_it(kind, good, tmp_path, monkeypatch):
    from diffusers import FluxPipeline

    path, words = bad_path(kind, good, tmp_path)
    monkeypatch.setattr(FluxPipeline, "lora_state_dict", lambda *a, **k: pytest.fail("diffusers was called"))
    with pytest.raises(LoraFileError, match=re.escape(words)):
        SemiNFTPipeline.tiny(0).load_lora_weights(path)
    ours = Ours(base="tiny:0", lora=[path])
    with pytest.raises(MethodUnavailable, match="^" + re.escape(f"ours: {path}")):
        ours.prepare(BenchSet("none", []))
    assert ours.pipe is None


@pytest.mark.parametrize("kind", KINDS)
def test_seminft_train_nft_stops_in_one_line(kind, good, tmp_path):
    path, words = bad_path(kind, good, tmp_path)
    result = runner.invoke(train_app, [
        "nft", "--tiny", "--dataset", str(write_pairs(tmp_path / "pairs")), "--coldstart-lora", str(path),
        "--reward", "color-stats", "--max-steps", "1", "--groups-per-step", "1", "--out", str(tmp_path / "run"),
    ])  # fmt: skip
    assert_one_line_naming(result, path, words)


@pytest.mark.parametrize("kind", KINDS)
def test_seminft_bench_run_and_restore_stop_in_one_line_before_any_work(kind, good, tmp_path):
    path, words = bad_path(kind, good, tmp_path)
    run = runner.invoke(bench_app, [
        "run", "--method", "ours", "--ours-base", "tiny:0", "--ours-lora", str(path), "--judges", "", "--reward", "",
        "--metrics", "psnr", "--limit", "1", "--out", str(tmp_path / "bench"),
    ])  # fmt: skip
    assert_one_line_naming(run, path, words)
    assert not (tmp_path / "bench").exists()
    photo = tmp_path / "old.png"
    Image.fromarray(sample_photo("astronaut")).save(photo)
    restore = runner.invoke(bench_app, [
        "restore", "--source", str(photo), "--prompt", "a photo", "--t2i", "tiny:0", "--ours-base", "tiny:0",
        "--ours-lora", str(path), "--out", str(tmp_path / "restored"),
    ])  # fmt: skip
    assert_one_line_naming(restore, path, words)
    assert not (tmp_path / "restored").exists()


def test_a_lora_fingerprint_follows_what_the_file_holds_not_its_header_order(good, tmp_path):
    """safetensors writes the header's metadata in a per-process order: the same LoRA saved twice can differ byte for
    byte, and must keep its fingerprint (NFT's run identity and the benchmark's cells rest on it)."""
    import json

    data = (good / LORA_FILE).read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    metadata = header.pop("__metadata__")
    reordered = json.dumps({"__metadata__": dict(reversed(metadata.items())), **dict(reversed(header.items()))}).encode()
    reordered += b" " * (-len(reordered) % 8)
    same = tmp_path / "same.safetensors"
    same.write_bytes(len(reordered).to_bytes(8, "little") + reordered + data[8 + size :])
    assert same.read_bytes() != data and lora_fingerprint(same) == lora_fingerprint(good)

    changed = bytearray(data)
    changed[-1] ^= 1  # one bit of the last tensor's values
    other = tmp_path / "other.safetensors"
    other.write_bytes(bytes(changed))
    assert lora_fingerprint(other) != lora_fingerprint(good)

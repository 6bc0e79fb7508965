"""Evaluation sets: each layout, splits, the bw variant, limits; bad sets fail (or skip) naming every problem."""

import hashlib
import io
import json

import huggingface_hub
import numpy as np
import pytest
from PIL import Image

from seminft_bench.bench import datasets as bench_datasets
from seminft_bench.bench.datasets import MAX_LISTED, BenchSetError, load_bench_set
from seminft_bench.imaging import to_array
from seminft_bench.pipelines import coldstart, rlpairs
from seminft_bench.pipelines.export import write_split
from seminft_bench.presets import Lut3D, Preset, apply_lut, builtin_presets, write_cube

WARM, COOL = builtin_presets()[:2]


def _pixels(seed: int, size=(24, 16)) -> np.ndarray:
    width, height = size
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def luts():
    return {preset.name: preset.to_lut() for preset in (WARM, COOL)}


def _coldstart_row(i: int, luts, **changes) -> dict:
    """A row as build-coldstart writes it: target = P(source), reference = P(another frame)."""
    preset = (WARM, COOL)[i % 2]
    source, other = _pixels(i), _pixels(100 + i)
    row = {
        "id": f"cs{i:02d}",
        "source": _png(source),
        "reference": _png(apply_lut(other, luts[preset.name])),
        "target": _png(apply_lut(source, luts[preset.name])),
        "prompt": "transfer the preset",
        "video": f"clips/{i}.mp4",
        "source_frame": 3 * i,
        "reference_frame": 3 * i + 40,
        "preset": preset.name,
        "preset_params": json.dumps(preset.to_dict()),
        "edit": None,
    }
    return {**row, **changes}


def _rl_row(i: int, **changes) -> dict:
    row = {
        "id": f"rl{i:02d}",
        "source": _png(_pixels(i)),
        "reference": _png(_pixels(200 + i, size=(20, 30))),
        "prompt": "transfer the preset",
        "source_path": f"s{i}.jpg",
        "reference_path": f"r{i}.jpg",
        "clip_similarity": 0.5,
        "color_distance": 12.0,
    }
    return {**row, **changes}


@pytest.fixture
def coldstart_dir(tmp_path, luts):
    out = tmp_path / "coldstart"
    write_split(out, "train", [_coldstart_row(i, luts) for i in range(3)], coldstart.FEATURES)
    write_split(out, "test", [_coldstart_row(i, luts) for i in range(3, 6)], coldstart.FEATURES, rows_per_shard=2)
    return out


def _write_image(path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _folder_set(root, stems, *, targets=True, suffix=".png"):
    for i, stem in enumerate(stems):
        _write_image(root / "source" / f"{stem}{suffix}", _pixels(i))
        _write_image(root / "reference" / f"{stem}.png", _pixels(50 + i, size=(30, 20)))
        if targets:
            _write_image(root / "target" / f"{stem}.png", _pixels(90 + i))
    return root


def _pst50_tree(root, count: int = 3):
    for k in range(1, count + 1):
        for folder in ("content_709", "paired_gt", "paired_style", "unpaired_style"):
            _write_image(root / folder / f"{k}.png", _pixels(10 * k + len(folder)))
    _write_image(root / "unpaired_style" / f"{count + 1}.png", _pixels(7))  # as published: one style more
    return root


# --------------------------------------------------------------------------- layouts


def test_coldstart_loads_its_test_split_with_targets_and_presets(coldstart_dir):
    bench = load_bench_set(coldstart_dir)
    assert bench.name == "coldstart"
    assert [s.name for s in bench.samples] == ["cs03", "cs04", "cs05"]
    assert bench.has_targets and bench.has_presets and not bench.skipped
    sample = bench.samples[0]
    assert isinstance(sample.preset, Preset) and sample.preset.name == COOL.name
    assert sample.info["video"] == "clips/3.mp4" and sample.info["source_frame"] == 9
    graded = apply_lut(to_array(sample.image("source")), sample.preset.to_lut())
    assert np.array_equal(graded, to_array(sample.image("target")))  # the recorded preset is the true one


def test_split_selection(coldstart_dir):
    train = load_bench_set(coldstart_dir, split="train")
    assert [s.name for s in train.samples] == ["cs00", "cs01", "cs02"]
    assert train.name == "coldstart-train"
    with pytest.raises(BenchSetError, match=r"no split 'val'; its splits: test, train"):
        load_bench_set(coldstart_dir, split="val")


def test_rl_pairs_have_no_target(tmp_path):
    out = tmp_path / "rl"
    write_split(out, "test", [_rl_row(i) for i in range(4)], rlpairs.FEATURES)
    bench = load_bench_set(out)
    assert [s.name for s in bench.samples] == ["rl00", "rl01", "rl02", "rl03"]
    assert not bench.has_targets and not bench.has_presets
    assert bench.samples[0].image("reference").size == (20, 30)
    assert bench.samples[0].info["reference_path"] == "r0.jpg"


def test_parquet_order_matches_load_dataset(coldstart_dir, load_hf):
    assert [s.name for s in load_bench_set(coldstart_dir).samples] == load_hf(coldstart_dir)["test"]["id"]


def test_same_named_folders_are_not_confused(tmp_path, load_hf):
    first, second = tmp_path / "a" / "ds", tmp_path / "b" / "ds"
    write_split(first, "test", [_rl_row(i) for i in range(2)], rlpairs.FEATURES)
    write_split(second, "test", [_rl_row(i) for i in range(5, 8)], rlpairs.FEATURES)
    assert [s.name for s in load_bench_set(first).samples] == ["rl00", "rl01"]
    assert [s.name for s in load_bench_set(second).samples] == ["rl05", "rl06", "rl07"]


def test_hub_dataset_from_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "datasets--someone--tiny-rl"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    write_split(repo / "snapshots" / commit, "test", [_rl_row(i) for i in range(2)], rlpairs.FEATURES)
    bench = load_bench_set("someone/tiny-rl")
    assert bench.name == "tiny-rl" and [s.name for s in bench.samples] == ["rl00", "rl01"]
    with pytest.raises(BenchSetError, match="'someone/absent' is not in the local Hugging Face cache"):
        load_bench_set("someone/absent")


def test_lut_file_presets_need_their_folder(tmp_path, luts):
    lut_dir = tmp_path / "luts"
    lut_dir.mkdir()
    cube = write_cube(luts[WARM.name], lut_dir / "warm.cube")
    record = {"lut_file": "warm.cube", "sha256": hashlib.sha256(cube.read_bytes()).hexdigest()}
    row = _coldstart_row(0, luts, preset="warm.cube", preset_params=json.dumps(record))
    write_split(tmp_path / "ds", "test", [row], coldstart.FEATURES)
    assert not load_bench_set(tmp_path / "ds").has_presets
    assert isinstance(load_bench_set(tmp_path / "ds", lut_dir=lut_dir).samples[0].preset, Lut3D)


def test_generic_folder_matches_files_by_stem(tmp_path):
    root = _folder_set(tmp_path / "mine", ["img10", "img2", "img1", "my photo (1)"], suffix=".jpg")
    bench = load_bench_set(root)
    assert bench.name == "mine"
    assert [s.name for s in bench.samples] == ["img1", "img2", "img10", "my photo (1)"]
    assert bench.has_targets and not bench.has_presets
    assert bench.samples[0].source == root / "source" / "img1.jpg"
    no_targets = load_bench_set(_folder_set(tmp_path / "plain", ["a", "b"], targets=False))
    assert len(no_targets) == 2 and not no_targets.has_targets


def test_pst50_paired_and_unpaired(tmp_path):
    root = _pst50_tree(tmp_path / "PST50", count=10)
    paired = load_bench_set(f"pst50-paired:{root}")
    assert paired.name == "pst50-paired" and paired.has_targets
    assert [s.name for s in paired.samples] == [str(k) for k in range(1, 11)]
    first = paired.samples[0]
    assert (first.source, first.reference, first.target) == (
        root / "content_709" / "1.png", root / "paired_style" / "1.png", root / "paired_gt" / "1.png"
    )
    unpaired = load_bench_set(f"pst50-unpaired:{root}")
    assert unpaired.name == "pst50-unpaired" and len(unpaired) == 10 and not unpaired.has_targets
    assert unpaired.samples[-1].reference == root / "unpaired_style" / "10.png"  # 11.png has no content: unused
    with pytest.raises(BenchSetError, match="pst50-paired:"):
        load_bench_set(root)


def test_pst50_tree_missing_a_folder(tmp_path):
    root = _pst50_tree(tmp_path / "PST50")
    for path in (root / "paired_gt").iterdir():
        path.unlink()
    (root / "paired_gt").rmdir()
    assert len(load_bench_set(f"pst50-unpaired:{root}")) == 3
    with pytest.raises(BenchSetError, match="no folder paired_gt/"):
        load_bench_set(f"pst50-paired:{root}")


def test_demo_is_small_complete_and_deterministic():
    bench = load_bench_set("demo")
    assert bench.name == "demo" and 6 <= len(bench) <= 9
    assert bench.has_targets and bench.has_presets
    names = [s.name for s in bench.samples]
    assert len(set(names)) == len(names)
    for sample in bench.samples:
        source = to_array(sample.image("source"))
        assert max(source.shape[:2]) <= 256
        assert np.array_equal(apply_lut(source, sample.preset.to_lut()), to_array(sample.image("target")))
        assert sample.reference != sample.target  # graded from another photo
    bench_datasets._demo_images.cache_clear()
    assert [s.source for s in load_bench_set("demo").samples] == [s.source for s in bench.samples]


def test_bw_variant_greys_sources_only():
    bench = load_bench_set("demo", variant="bw")
    assert bench.name == "demo+bw" and bench.has_targets and not bench.has_presets
    source, target = to_array(bench.samples[0].image("source")), to_array(bench.samples[0].image("target"))
    assert (source == source[..., :1]).all()
    assert not (target == target[..., :1]).all()
    with pytest.raises(BenchSetError, match="unknown variant 'sepia'; known: bw"):
        load_bench_set("demo", variant="sepia")


def test_limit_takes_the_first_samples(coldstart_dir):
    names = [s.name for s in load_bench_set("demo").samples]
    assert [s.name for s in load_bench_set("demo", limit=3).samples] == names[:3]
    assert [s.name for s in load_bench_set(coldstart_dir, limit=1).samples] == ["cs03"]
    with pytest.raises(BenchSetError, match="limit must be at least 1"):
        load_bench_set("demo", limit=0)


# --------------------------------------------------------------------------- bad sets


@pytest.fixture
def bad_folder(tmp_path):
    root = _folder_set(tmp_path / "bad", ["a", "b", "c", "d", "e", "f"])
    (root / "reference" / "b.png").unlink()  # a source without reference
    _write_image(root / "target" / "c.png", _pixels(3, size=(12, 8)))  # target size differs
    data = (root / "source" / "d.png").read_bytes()
    (root / "source" / "d.png").write_bytes(data[: len(data) // 2])  # truncated
    _write_image(root / "source" / "e.jpg", _pixels(4))  # two sources named e
    (root / "target" / "f.png").unlink()  # a target missing
    return root


BAD_FOLDER_REASONS = {
    "b": "no reference image reference/b.*",
    "c": "source is 24x16 but target is 12x8",
    "d": "truncated",
    "e": "2 source images: source/e.jpg, source/e.png",
    "f": "no target image target/f.*",
}


def test_bad_folder_fails_listing_every_problem(bad_folder):
    with pytest.raises(BenchSetError) as caught:
        load_bench_set(bad_folder)
    message = str(caught.value)
    assert message.startswith("bad: 5 of 6 samples are bad")
    for name, reason in BAD_FOLDER_REASONS.items():
        assert f"  {name}: " in message and reason in message


def test_bad_folder_skipped_with_reasons(bad_folder):
    bench = load_bench_set(bad_folder, skip_bad=True)
    assert [s.name for s in bench.samples] == ["a"]
    reasons = {item.name: item.reason for item in bench.skipped}
    assert reasons.keys() == BAD_FOLDER_REASONS.keys()
    for name, reason in BAD_FOLDER_REASONS.items():
        assert reason in reasons[name]


def test_bad_parquet_rows(tmp_path, luts):
    rows = [
        _coldstart_row(0, luts),
        _coldstart_row(1, luts, id="cs00"),  # duplicate id
        _coldstart_row(2, luts, id="../escape"),
        _coldstart_row(3, luts, reference=None),
        _coldstart_row(4, luts, target=b"not a png"),
        _coldstart_row(5, luts, preset_params="{broken"),
        _coldstart_row(6, luts),
    ]
    write_split(tmp_path / "ds", "test", rows, coldstart.FEATURES)
    with pytest.raises(BenchSetError) as caught:
        load_bench_set(tmp_path / "ds")
    message = str(caught.value)
    for expected in ("cs00: name shared by 2 samples", "../escape: name '../escape' is not safe",
                     "cs03: no reference image", "cs04: target: not an image", "cs05: preset 'cool'"):
        assert expected in message
    bench = load_bench_set(tmp_path / "ds", skip_bad=True)
    assert [s.name for s in bench.samples] == ["cs06"]
    assert [item.name for item in bench.skipped] == ["cs00", "cs00", "../escape", "cs03", "cs04", "cs05"]


def test_nothing_usable_fails_even_when_skipping(tmp_path):
    root = tmp_path / "broken"
    for stem in ("x", "y"):
        _write_image(root / "source" / f"{stem}.png", _pixels(0))
    (root / "reference").mkdir()
    with pytest.raises(BenchSetError, match=r"broken: no usable sample\n  x: no reference image"):
        load_bench_set(root, skip_bad=True)


def test_long_listings_are_capped(tmp_path):
    root = tmp_path / "many"
    for i in range(MAX_LISTED + 5):
        _write_image(root / "source" / f"{i}.png", _pixels(i, size=(4, 4)))
    (root / "reference").mkdir()
    with pytest.raises(BenchSetError) as caught:
        load_bench_set(root)
    lines = str(caught.value).splitlines()
    assert len(lines) == 1 + MAX_LISTED + 1 and lines[-1] == "  ... and 5 more"


def test_empty_and_unknown_sets(tmp_path):
    (tmp_path / "empty" / "source").mkdir(parents=True)
    (tmp_path / "empty" / "reference").mkdir()
    with pytest.raises(BenchSetError, match="empty: the set is empty"):
        load_bench_set(tmp_path / "empty", skip_bad=True)
    with pytest.raises(BenchSetError, match="not an evaluation set"):
        load_bench_set(tmp_path)
    with pytest.raises(BenchSetError, match="no such folder"):
        load_bench_set(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(BenchSetError, match="not a folder"):
        load_bench_set(tmp_path / "file.txt")
    with pytest.raises(BenchSetError, match="as in pst50-paired:DIR"):
        load_bench_set("pst50-paired:")
    _write_image(tmp_path / "lonely" / "source" / "a.png", _pixels(0))
    with pytest.raises(BenchSetError, match="no folder reference/"):
        load_bench_set(tmp_path / "lonely")


# --------------------------------------------------------------------------- reruns


def test_a_rerun_decodes_only_what_was_not_checked_before(tmp_path, monkeypatch):
    """A run folder records each sample's fingerprint (`runner.sample_fingerprint`): a rerun vouches with it for the
    bytes checked before and decodes only the samples whose files changed, which still fail clearly when broken."""
    from seminft_bench.bench.runner import sample_fingerprint

    root = _folder_set(tmp_path / "set", ["a", "b", "c"])
    first = load_bench_set(root)
    recorded = {sample.name: sample_fingerprint(sample) for sample in first.samples}
    decoded = []
    read_image = bench_datasets.read_image
    monkeypatch.setattr(bench_datasets, "read_image", lambda src, **kw: decoded.append(src.name) or read_image(src, **kw))

    def known_good(sample):
        return recorded.get(sample.name) == sample_fingerprint(sample)

    assert load_bench_set(root, known_good=known_good).samples == first.samples and decoded == []
    _write_image(root / "target" / "b.png", _pixels(7))  # another target of the same size
    assert [s.name for s in load_bench_set(root, known_good=known_good).samples] == ["a", "b", "c"]
    assert decoded == ["b.png"] * 3
    data = (root / "source" / "c.png").read_bytes()
    (root / "source" / "c.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BenchSetError, match=r"1 of 3 samples are bad.*\n  c: .*truncated"):
        load_bench_set(root, known_good=known_good)
    decoded.clear()
    assert len(load_bench_set(root, variant="bw", skip_bad=True, known_good=known_good).samples) == 2
    assert decoded.count("a.png") == 3  # bw greys its sources, so it decodes them


def test_a_rerun_of_a_benchmark_decodes_no_input_image_again(tmp_path, monkeypatch):
    """`run_benchmark` vouches with its folder's run.json: a rerun of a finished run decodes nothing to load the set."""
    from seminft_bench.bench import runner
    from seminft_bench.bench.runner import RunOptions, run_benchmark

    root = _folder_set(tmp_path / "set", ["a", "b"])
    options = RunOptions(dataset=str(root), methods=("identity",), judges=(), reward=None, metrics=("psnr",))
    run_benchmark(tmp_path / "run", options, log=lambda line: None)
    decoded = []
    read_image = bench_datasets.read_image
    monkeypatch.setattr(bench_datasets, "read_image", lambda src, **kw: decoded.append(src.name) or read_image(src, **kw))
    hashed = []
    fingerprint = runner.sample_fingerprint
    monkeypatch.setattr(runner, "sample_fingerprint", lambda sample: hashed.append(sample.name) or fingerprint(sample))
    run_benchmark(tmp_path / "run", options, log=lambda line: None)
    assert decoded == []
    assert sorted(hashed) == ["a", "b"]  # once each: the same fingerprint vouches for the load and names the folder
    run_benchmark(tmp_path / "other", options, log=lambda line: None)  # a new folder vouches for nothing
    assert sorted(set(decoded)) == ["a.png", "b.png"]

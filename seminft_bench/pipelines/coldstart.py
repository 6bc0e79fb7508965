"""Cold-start quadruplets from video (paper §3.5): source = A, reference = P(edit(B)), target = P(A).

The build is a set of work units, one per video. A unit draws its frame pairs
and presets from a generator seeded by (seed, video path) alone, so the result
does not depend on the number of workers or on the order units finish in.
Each finished unit is committed atomically under ``DIR/.work/units/``; a killed
build re-run with the same command skips those units, and assembly reads units
in a fixed seeded order, so the final dataset is byte-identical to an
uninterrupted build.

Stages: units (decode, check, grade) → choose samples → edit references
(optional, cached per sample under ``DIR/.work/edits/``) → representative test
split → Parquet shards, dataset card, ``rejections.jsonl``.

One build writes a folder at a time: it holds ``DIR/.lock`` (`FolderLock`) from
before it clears a killed run's ``.tmp`` leftovers until it returns, so a second
build into the same folder fails at once instead of deleting the first one's
half-written files. The lock file is hidden and outside ``data/``, so
``datasets.load_dataset(DIR)`` and the Hub push never see it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from seminft_bench.fileio import FolderLock, atomic_write_bytes, atomic_write_text, remove_partial_writes
from seminft_bench.imaging import encode_png, image_grid, read_image
from seminft_bench.pipelines.editing import choose_instruction, make_editor
from seminft_bench.pipelines.executors import run_units
from seminft_bench.pipelines.export import counter_table, write_card, write_split
from seminft_bench.pipelines.frames import fit_frame
from seminft_bench.pipelines.quadruplets import (
    PNG_LEVEL,
    TASK_PROMPT,
    UnitSettings,
    process_unit,
    stable_int,
    unit_key,
    unit_name,
)
from seminft_bench.pipelines.splits import representative_split
from seminft_bench.pipelines.videos import Rejection, VideoEntry, discover_videos, open_video
from seminft_bench.presets import apply_lut, preset_from_record, preset_source

log = logging.getLogger(__name__)

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "source": datasets.Image(),
        "reference": datasets.Image(),
        "target": datasets.Image(),
        "prompt": datasets.Value("string"),
        "video": datasets.Value("string"),
        "source_frame": datasets.Value("int64"),
        "reference_frame": datasets.Value("int64"),
        "preset": datasets.Value("string"),
        "preset_params": datasets.Value("string"),
        "edit": datasets.Value("string"),
    }
)

WORK = ".work"


@dataclass(frozen=True)
class ColdStartConfig:
    """Everything that decides the dataset's content (workers and executor do not)."""

    videos: str
    out: str
    presets: str = "builtin"
    num_samples: int = 1000
    pairs_per_video: int = 1
    min_gap: float = 1.0
    resolution: int = 512
    seed: int = 0
    eval_count: int = 50
    editor: str = "none"
    edit_count: int = 200
    editor_model: str = "Qwen/Qwen-Image-Edit"
    editor_steps: int = 50
    video_root: str | None = None
    lut_size: int = 33
    license: str = "other"

    def fingerprint(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "out"}


@dataclass(frozen=True)
class BuildSummary:
    out: Path
    counts: dict[str, int]
    rejections: Counter
    edited: int
    seconds: dict[str, float]  # wall time per stage: units, edits, split, write


def build_coldstart(
    config: ColdStartConfig, workers: int = 1, executor: str = "local", ray_address: str | None = None
) -> BuildSummary:
    """Build (or resume) the cold-start dataset described by ``config`` in ``config.out``.

    Raises `FolderLocked` if another build is writing ``config.out``, before touching it.
    """
    out = Path(config.out)
    entries, discovery_rejections = discover_videos(Path(config.videos), config.video_root and Path(config.video_root))
    _check_arguments(config, entries)
    preset_source(config.presets, config.lut_size)  # a bad preset spec fails here, before any work
    with _output_lock(out):
        work = _open_work_dir(out, config)
        order = _unit_order(entries, config.seed)
        settings = UnitSettings(
            config.presets, config.pairs_per_video, config.min_gap, config.resolution, config.seed, config.lut_size
        )
        seconds: dict[str, float] = {}
        with _timed(seconds, "units"):
            _run_units(order, settings, work, config.num_samples, workers, executor, ray_address)
            chosen = _choose_samples(order, work, config.num_samples)
        if len(chosen) < config.num_samples:
            log.warning(
                "only %d of the %d requested samples could be made; see rejections.jsonl", len(chosen), config.num_samples
            )
        with _timed(seconds, "edits"):
            edits = _edit_references(chosen, work, config)
        with _timed(seconds, "split"):
            test = set(_test_split(chosen, work, _test_count(config.eval_count, len(chosen)), config.seed).tolist())
        splits = {
            "train": [s for i, s in enumerate(chosen) if i not in test],
            "test": [s for i, s in enumerate(chosen) if i in test],
        }
        with _timed(seconds, "write"):
            for split, samples in splits.items():
                write_split(out, split, _dataset_rows(samples, work, edits, config), FEATURES)
            rejections = discovery_rejections + [r for entry in order for r in _unit_rejections(work, entry)]
            atomic_write_text(out / "rejections.jsonl", "".join(json.dumps(r.to_dict()) + "\n" for r in rejections))
            summary = BuildSummary(
                out, {k: len(v) for k, v in splits.items()}, Counter(r.reason for r in rejections), len(edits), seconds
            )
            _write_card(out, config, splits, work, edits, summary)
    return summary


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - start


# --------------------------------------------------------------------------- set-up


def _check_arguments(config: ColdStartConfig, entries: list[VideoEntry]) -> None:
    """Refuse, before any decoding, a request that cannot give what it asks for.

    An ``--eval-count`` that would leave train empty fails rather than being capped: the
    numbers are known now, the fix is the user's to choose, and a dataset with no
    training rows is never what a cold-start build is for.
    """
    if config.num_samples < 1 or config.pairs_per_video < 1:
        raise ValueError("--num-samples and --pairs-per-video must be at least 1")
    most = len(entries) * config.pairs_per_video
    if config.num_samples > most:
        raise ValueError(
            f"--num-samples {config.num_samples} is more than {len(entries)} videos × --pairs-per-video "
            f"{config.pairs_per_video} = {most} can give; add videos or raise --pairs-per-video"
        )
    if config.resolution < 16 or config.resolution % 16:
        raise ValueError(f"--resolution must be a positive multiple of 16, got {config.resolution}")
    if config.eval_count >= config.num_samples:
        raise ValueError(
            f"--eval-count {config.eval_count} would put all {config.num_samples} samples (--num-samples) in the "
            "test split and none in train; lower --eval-count or raise --num-samples"
        )


@contextmanager
def _output_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s `FolderLock`; an output folder that cannot be made or written is a user error."""
    lock = FolderLock(out, job="cold-start build")
    try:
        lock.acquire()
    except OSError as error:
        raise _unwritable(out, error) from error
    try:
        yield
    finally:
        lock.release()


def _unwritable(out: Path, error: OSError) -> ValueError:
    return ValueError(f"cannot write to the output folder {out}: {error.strerror or error}")


def _open_work_dir(out: Path, config: ColdStartConfig) -> Path:
    """Create ``out/.work``; refuse to mix a different build's units into this one."""
    work = out / WORK
    try:
        (work / "units").mkdir(parents=True, exist_ok=True)
        (work / "edits").mkdir(exist_ok=True)
    except OSError as error:
        raise _unwritable(out, error) from error
    recorded = work / "config.json"
    wanted = json.dumps(config.fingerprint(), sort_keys=True, indent=1)
    if recorded.exists() and recorded.read_text() != wanted:
        raise ValueError(
            f"{out} holds a build made with other settings ({recorded}); "
            "use another --out, or delete that folder to start over"
        )
    atomic_write_text(recorded, wanted)
    remove_partial_writes(work)  # half-written files of a killed run
    return work


def _unit_order(entries: list[VideoEntry], seed: int) -> list[VideoEntry]:
    """A seeded permutation, so the first N samples come from a random subset of the videos."""
    return sorted(entries, key=lambda e: (stable_int(f"{seed}|{unit_name(e)}"), unit_name(e)))


# --------------------------------------------------------------------------- units


def _run_units(
    order: list[VideoEntry],
    settings: UnitSettings,
    work: Path,
    num_samples: int,
    workers: int,
    executor: str,
    ray_address: str | None,
) -> None:
    """Process units in seeded order until the finished prefix of that order holds ``num_samples``."""
    sizes = {unit_key(e): _unit_size(work, e) for e in order}
    prefix = {"length": 0, "samples": 0}  # the finished units at the front of ``order``

    def advance_prefix() -> None:
        while prefix["length"] < len(order) and sizes[unit_key(order[prefix["length"]])] is not None:
            prefix["samples"] += sizes[unit_key(order[prefix["length"]])]
            prefix["length"] += 1

    def todo() -> Iterator[VideoEntry]:
        for entry in order:
            if prefix["samples"] >= num_samples:
                return
            if sizes[unit_key(entry)] is None:
                yield entry

    advance_prefix()
    done = sum(size is not None for size in sizes.values())
    by_key = {unit_key(e): e for e in order}
    bar = tqdm(total=len(order), initial=done, desc="videos", unit="video")
    rejected = 0
    with bar:
        for result in run_units(process_unit, todo(), workers=workers, executor=executor, ray_address=ray_address, shared=(settings,)):
            entry = by_key[result.key]
            atomic_write_bytes(_unit_path(work, entry), result.payload)
            table_meta = pq.read_metadata(io.BytesIO(result.payload))
            sizes[result.key] = table_meta.num_rows
            rejected += len(json.loads(table_meta.metadata[b"rejections"]))
            advance_prefix()
            bar.update()
            bar.set_postfix(samples=prefix["samples"], rejections=rejected)


def _unit_path(work: Path, entry: VideoEntry) -> Path:
    return work / "units" / f"{unit_key(entry)}.parquet"


def _unit_size(work: Path, entry: VideoEntry) -> int | None:
    path = _unit_path(work, entry)
    return pq.read_metadata(path).num_rows if path.exists() else None


def _unit_rejections(work: Path, entry: VideoEntry) -> list[Rejection]:
    path = _unit_path(work, entry)
    if not path.exists():
        return []
    records = json.loads(pq.read_metadata(path).metadata[b"rejections"])
    return [Rejection(**record) for record in records]


# --------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class Chosen:
    entry: VideoEntry
    row: int
    id: str


def _choose_samples(order: list[VideoEntry], work: Path, num_samples: int) -> list[Chosen]:
    chosen: list[Chosen] = []
    for entry in order:
        if len(chosen) >= num_samples or not _unit_path(work, entry).exists():
            break
        ids = pq.read_table(_unit_path(work, entry), columns=["id"]).column("id").to_pylist()
        chosen += [Chosen(entry, i, sample_id) for i, sample_id in enumerate(ids)]
    return chosen[:num_samples]


def _edit_references(chosen: list[Chosen], work: Path, config: ColdStartConfig) -> dict[str, str]:
    """Edit frame B of ``edit_count`` seeded samples; returns {sample id: instruction}. Cached per sample."""
    if config.editor == "none" or config.edit_count <= 0 or not chosen:
        return {}
    rng = np.random.default_rng([config.seed, stable_int("edit")])
    picked = sorted(rng.choice(len(chosen), size=min(config.edit_count, len(chosen)), replace=False).tolist())
    editor = None
    edits = {}
    for index in tqdm(picked, desc="edits", unit="edit"):
        sample = chosen[index]
        row = pq.read_table(_unit_path(work, sample.entry)).slice(sample.row, 1).to_pylist()[0]
        instruction = choose_instruction(np.random.default_rng([config.seed, stable_int(sample.id)]), row["caption"])
        path = work / "edits" / f"{sample.id}.png"
        if not path.exists():
            editor = editor or make_editor(config.editor, model=config.editor_model, num_inference_steps=config.editor_steps)
            with open_video(sample.entry.path) as reader:
                frame_b = fit_frame(reader.frames([row["reference_frame"]])[0], config.resolution)
            edited = editor.edit(read_image(frame_b), instruction, seed=stable_int(sample.id) % 2**31)
            atomic_write_bytes(path, encode_png(edited, PNG_LEVEL))
        edits[sample.id] = instruction
    return edits


def _test_count(eval_count: int, made: int) -> int:
    """``eval_count``, capped so that train keeps a row when fewer samples than requested could be made.

    `_check_arguments` already refuses an ``eval_count`` that leaves no training rows of the
    requested number; this covers a build whose rejections left fewer, known only now.
    """
    count = min(eval_count, max(made - 1, 0))
    if count < eval_count:
        log.warning(
            "only %d samples could be made: the test split gets %d, not --eval-count %d, so that train keeps one",
            made, count, eval_count,
        )
    return count


def _test_split(chosen: list[Chosen], work: Path, count: int, seed: int) -> np.ndarray:
    """``count`` representative test samples: one per cluster of (target look, source content) colour features."""
    if count <= 0:
        return np.array([], dtype=int)
    features = np.stack([np.asarray(row["features"], np.float32) for row in _iter_rows(chosen, work, ["features"])])
    return representative_split(features, count, seed)


def _iter_rows(samples: list[Chosen], work: Path, columns: list[str] | None = None) -> Iterator[dict]:
    """Unit rows of ``samples`` in order (only ``columns`` if given), reading each unit file once per run of samples."""
    cached_key, cached_rows = None, []
    for sample in samples:
        key = unit_key(sample.entry)
        if key != cached_key:
            cached_key, cached_rows = key, pq.read_table(_unit_path(work, sample.entry), columns=columns).to_pylist()
        yield cached_rows[sample.row]


def _dataset_rows(samples: list[Chosen], work: Path, edits: dict[str, str], config: ColdStartConfig) -> Iterator[dict]:
    lut_dir = Path(config.presets) if Path(config.presets).is_dir() else None
    for row in _iter_rows(samples, work):
        instruction = edits.get(row["id"])
        if instruction is not None:
            lut = preset_from_record(row["preset"], json.loads(row["preset_params"]), lut_dir, config.lut_size)
            edited = read_image((work / "edits" / f"{row['id']}.png"), dtype=np.uint8)
            row["reference"] = encode_png(apply_lut(edited, lut), PNG_LEVEL)
        yield {
            **{k: row[k] for k in FEATURES if k in row},
            "source": {"bytes": row["source"], "path": None},
            "reference": {"bytes": row["reference"], "path": None},
            "target": {"bytes": row["target"], "path": None},
            "prompt": TASK_PROMPT,
            "edit": instruction,
        }


def _capped_test_note(eval_count: int, splits: dict[str, list[Chosen]]) -> str:
    """A sentence for the card when `_test_count` made the test split smaller than asked, else nothing."""
    test, made = len(splits["test"]), sum(map(len, splits.values()))
    if test >= eval_count:
        return ""
    return (
        f" The test split has {test} rows, not the {eval_count} asked for with --eval-count: "
        f"only {made} samples could be made, and train keeps at least one."
    )


def _write_card(out: Path, config: ColdStartConfig, splits: dict, work: Path, edits: dict, summary: BuildSummary) -> None:
    samples = [s for split in splits.values() for s in split]
    presets = Counter(row["preset"] for row in _iter_rows(samples, work, ["preset"]))
    preview_rows = list(_dataset_rows(samples[:6], work, edits, config))
    cells, labels = [], []
    for row in preview_rows:
        for column in ("source", "reference", "target"):
            cells.append(row[column]["bytes"])
            labels.append(f"{column} · {row['preset']}" if column == "target" else column)
    preview = image_grid(cells, labels=labels, ncols=3, cell_size=(256, 192)) if cells else None
    write_card(
        out,
        title="SemiNFT cold-start quadruplets",
        summary=(
            f"Quadruplets (source, reference, target, prompt) built from the videos in `{Path(config.videos).name}` with "
            f"`seminft-data build-coldstart` (paper §3.5): source = frame A, target = preset(A), "
            f"reference = preset(edit(frame B)); {summary.edited} references edited with {config.editor}. "
            f"Presets: {config.presets}; seed {config.seed}; short side {config.resolution}."
            + _capped_test_note(config.eval_count, splits)
        ),
        sections={
            "Rejections": counter_table(summary.rejections, "reason"),
            "Presets": counter_table(presets, "preset"),
        },
        license=config.license,
        preview=preview,
        tags=("preset-transfer", "color-grading", "seminft"),
    )

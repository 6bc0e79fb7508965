"""One video → graded quadruplets: the work unit of the cold-start builder, run in workers.

Kept apart from the driver (``coldstart``) so a worker process imports only what
it needs to decode, check, grade and encode — not the dataset writers.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seminft_bench.colorstats import colour_features
from seminft_bench.imaging import encode_png
from seminft_bench.pipelines.frames import sample_frame_pairs
from seminft_bench.pipelines.videos import Rejection, VideoEntry, VideoReadError, open_video
from seminft_bench.presets import PresetSource, apply_lut, preset_source

TASK_PROMPT = (
    "Transfer the colour grading of the reference image to the source image: match its tone, contrast, "
    "white balance and colour palette, and keep the source image's content, composition and details unchanged."
)
"""The unified task description ``c`` of every quadruplet (paper §3.5)."""

# What a unit file holds per sample: the dataset columns as raw values (PNG bytes for images).
UNIT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.binary()),
        ("reference", pa.binary()),
        ("target", pa.binary()),
        ("video", pa.string()),
        ("source_frame", pa.int64()),
        ("reference_frame", pa.int64()),
        ("preset", pa.string()),
        ("preset_params", pa.string()),
        ("caption", pa.string()),
        ("features", pa.list_(pa.float32())),  # colour features of (target, source) for the test split
    ]
)
PNG_LEVEL = 1  # lossless either way; level 1 encodes several times faster than 6 for ~25% larger files


@dataclass(frozen=True)
class UnitSettings:
    """The part of the config a worker needs to process one video."""

    presets: str
    pairs_per_video: int
    min_gap: float
    resolution: int
    seed: int
    lut_size: int


@dataclass(frozen=True)
class UnitResult:
    key: str
    payload: bytes  # a Parquet file in UNIT_SCHEMA, rejections in its metadata


def stable_int(text: str) -> int:
    """A 64-bit integer from text, the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def unit_name(entry: VideoEntry) -> str:
    """One name per unit: an annotation file may list the same video with several frame ranges."""
    return entry.relpath if entry.frame_range is None else f"{entry.relpath}#{entry.frame_range[0]}:{entry.frame_range[1]}"


def unit_key(entry: VideoEntry) -> str:
    """The unit's file name under ``.work/units/``."""
    return hashlib.sha256(unit_name(entry).encode()).hexdigest()[:20]


@lru_cache(maxsize=4)
def _source_for(spec: str, lut_size: int) -> PresetSource:
    return preset_source(spec, lut_size)


def process_unit(entry: VideoEntry, settings: UnitSettings) -> UnitResult:
    """Draw, check and grade the frame pairs of one video; runs in a worker."""
    rng = np.random.default_rng([settings.seed, stable_int(unit_name(entry))])
    rows, rejections = [], []
    try:
        with open_video(entry.path) as reader:
            pairs, reasons = sample_frame_pairs(
                reader, entry, rng, settings.pairs_per_video, settings.min_gap, settings.resolution
            )
    except VideoReadError as error:
        pairs, reasons = [], []
        rejections.append(Rejection(entry.relpath, error.reason, error.detail))
    rejections += [Rejection(entry.relpath, reason) for reason in reasons]
    source = _source_for(settings.presets, settings.lut_size)
    for pair in pairs:
        applied = source.draw(rng)
        params = json.dumps(applied.params, sort_keys=True)
        identity = f"{unit_name(entry)}|{pair.index_a}|{pair.index_b}|{applied.name}|{params}|{settings.seed}"
        target = apply_lut(pair.frame_a, applied.lut)
        rows.append(
            {
                "id": hashlib.sha256(identity.encode()).hexdigest()[:16],
                "source": encode_png(pair.frame_a, PNG_LEVEL),
                "reference": encode_png(apply_lut(pair.frame_b, applied.lut), PNG_LEVEL),
                "target": encode_png(target, PNG_LEVEL),
                "video": entry.relpath,
                "source_frame": pair.index_a,
                "reference_frame": pair.index_b,
                "preset": applied.name,
                "preset_params": params,
                "caption": entry.caption,
                "features": colour_features([target, pair.frame_a]).ravel(),
            }
        )
    table = pa.Table.from_pylist(rows, schema=UNIT_SCHEMA)
    table = table.replace_schema_metadata({"rejections": json.dumps([r.to_dict() for r in rejections])})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="none")
    return UnitResult(unit_key(entry), buffer.getvalue())

"""Sample photos for the demo and tests: crops of skimage's real photos, each in a built-in grade."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seminft_bench.imaging import SAMPLE_PHOTOS, sample_photo, write_png
from seminft_bench.presets import apply_lut, builtin_presets


def write_sample_photos(out_dir: str | Path, crops_per_photo: int = 3, seed: int = 0) -> list[Path]:
    """Write ``crops_per_photo`` random crops (at least half of each side) of each sample photo,
    each graded with a different built-in preset, as PNG files: a small pool with related
    content and different grades, the shape of an RL reference/source pool."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    presets = builtin_presets()
    written = []
    for name in SAMPLE_PHOTOS:
        photo = sample_photo(name)
        height, width = photo.shape[:2]
        for i in range(crops_per_photo):
            h, w = rng.integers(height // 2, height + 1), rng.integers(width // 2, width + 1)
            top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            preset = presets[rng.integers(len(presets))]
            graded = apply_lut(np.ascontiguousarray(photo[top : top + h, left : left + w]), preset.to_lut(17))
            written.append(write_png(graded, out_dir / f"{name}-{i}-{preset.name}.png"))
    return written

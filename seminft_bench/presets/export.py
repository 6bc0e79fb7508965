"""Export a preset library: one ``.cube`` per preset and a contact sheet to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from seminft_bench.imaging import image_grid, read_image, sample_photo, to_array, write_png
from seminft_bench.presets.apply import apply_lut
from seminft_bench.presets.grading import Preset
from seminft_bench.presets.io import write_cube

SHEET_NAME = "contact_sheet.png"


def preview_photo(src: str | Path | None = None, max_side: int = 320) -> np.ndarray:
    """``src`` (default: skimage's astronaut, a real photo that ships offline) downsized for previews."""
    if src is None:
        image = read_image(sample_photo("astronaut"), name="skimage.data.astronaut")
    else:
        image = read_image(src)
    image.thumbnail((max_side, max_side))
    return to_array(image)


def export_presets(
    presets: list[Preset], out_dir: str | Path, photo: np.ndarray | None = None, lut_size: int = 33
) -> tuple[list[Path], Path]:
    """Write ``{name}.cube`` for each preset and ``contact_sheet.png`` showing each applied to ``photo``."""
    out_dir = Path(out_dir)
    photo = preview_photo() if photo is None else photo
    cubes, cells, labels = [], [photo], ["original"]
    for preset in tqdm(presets, desc="presets", unit="preset"):
        lut = preset.to_lut(lut_size)
        cubes.append(write_cube(lut, out_dir / f"{preset.name}.cube"))
        cells.append(apply_lut(photo, lut))
        labels.append(preset.name)
    sheet = write_png(image_grid(cells, labels=labels, ncols=8), out_dir / SHEET_NAME)
    return cubes, sheet

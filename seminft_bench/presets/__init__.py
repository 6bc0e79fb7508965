"""Colour presets: LUT containers and files, fast LUT application, Lightroom-style grades.

A preset is what the paper transfers: a global colour grade. Here it is either a
`Preset` (named grading parameters compiled to a 3D LUT) or a LUT file.
"""

from seminft_bench.presets.apply import apply_lut
from seminft_bench.presets.grading import Preset
from seminft_bench.presets.io import read_lut, write_cube, write_hald
from seminft_bench.presets.library import (
    AppliedPreset,
    PresetSource,
    builtin_presets,
    preset_from_record,
    preset_source,
    random_preset,
)
from seminft_bench.presets.lut import Lut1D, Lut3D, LutFormatError

__all__ = [
    "AppliedPreset",
    "Lut1D",
    "Lut3D",
    "LutFormatError",
    "Preset",
    "PresetSource",
    "apply_lut",
    "builtin_presets",
    "preset_from_record",
    "preset_source",
    "random_preset",
    "read_lut",
    "write_cube",
    "write_hald",
]

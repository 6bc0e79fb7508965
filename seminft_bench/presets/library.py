"""Where presets come from: the built-in looks, a random grade generator, or a folder of LUT files.

Dataset commands take a preset source spec — ``builtin``, ``random`` or a
folder of ``.cube`` / Hald files — and draw one preset per sample with the
sample's generator. Each draw is recorded as ``(name, params)``, enough for
``preset_from_record`` to rebuild the exact LUT later.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .grading import HSL_BANDS, Preset
from .io import HALD_SUFFIXES, read_lut
from .lut import Lut1D, Lut3D, LutFormatError

SOURCE_KEYWORDS = ("builtin", "random")
LUT_FILE_SUFFIXES = (".cube", *HALD_SUFFIXES)

# --------------------------------------------------------------------------- built-in looks

_BUILTIN_LOOKS: list[tuple[str, dict]] = [
    ("warm", {"temperature": 25, "tint": 4, "vibrance": 8}),
    ("cool", {"temperature": -25, "tint": -3, "highlights": -10}),
    ("teal-orange", {
        "contrast": 15, "hsl_saturation": {"orange": 15, "blue": 15},
        "grading_shadows": {"hue": 190, "saturation": 40}, "grading_highlights": {"hue": 35, "saturation": 35},
    }),
    ("faded-matte", {"fade": 40, "contrast": -20, "saturation": -20, "whites": -20}),
    ("portra-400", {
        "temperature": 8, "tint": 3, "contrast": -10, "highlights": -25, "shadows": 15, "saturation": -10,
        "vibrance": 5, "hsl_hue": {"red": 5, "orange": -5},
        "hsl_saturation": {"orange": -5, "green": -20, "blue": -15}, "hsl_luminance": {"orange": 8},
        "grading_shadows": {"hue": 200, "saturation": 8}, "grading_highlights": {"hue": 45, "saturation": 10},
        "fade": 8,
    }),
    ("kodachrome-64", {
        "contrast": 30, "saturation": 15, "temperature": 5, "blacks": -10,
        "hsl_saturation": {"red": 20, "yellow": 10, "blue": 10}, "hsl_luminance": {"red": -5, "blue": -15},
        "hsl_hue": {"green": -10}, "tone_curve_blue": [[0, 0.02], [1, 0.96]],
    }),
    ("velvia-50", {
        "contrast": 30, "saturation": 30, "vibrance": 15, "temperature": -5, "tint": 8, "blacks": -15,
        "hsl_saturation": {"green": 25, "blue": 25, "purple": 15}, "hsl_luminance": {"green": -10, "blue": -15},
    }),
    ("ektar-100", {
        "contrast": 20, "saturation": 20, "vibrance": 10, "temperature": 5, "highlights": -10,
        "hsl_saturation": {"red": 20, "orange": 10, "blue": 20}, "hsl_hue": {"orange": -5},
    }),
    ("fuji-superia", {
        "temperature": -5, "tint": -8, "contrast": 15, "saturation": 10, "fade": 5,
        "hsl_hue": {"green": 10}, "hsl_saturation": {"green": 15},
        "grading_shadows": {"hue": 160, "saturation": 15},
    }),
    ("cinestill-800t", {
        "temperature": -30, "tint": 5, "contrast": 10, "highlights": -15, "fade": 10,
        "hsl_saturation": {"red": 15}, "hsl_luminance": {"red": 5},
        "grading_shadows": {"hue": 200, "saturation": 20}, "grading_highlights": {"hue": 20, "saturation": 15},
    }),
    ("bleach-bypass", {"saturation": -55, "contrast": 45, "blacks": -15, "whites": 10, "highlights": -10}),
    ("cross-process", {
        "contrast": 20, "saturation": 15,
        "tone_curve_red": [[0, 0], [0.25, 0.2], [0.75, 0.82], [1, 1]],
        "tone_curve_green": [[0, 0.03], [0.5, 0.55], [1, 0.97]],
        "tone_curve_blue": [[0, 0.12], [0.5, 0.45], [1, 0.82]],
    }),
    ("high-key", {"exposure": 0.6, "contrast": -15, "highlights": -30, "shadows": 40, "whites": 10, "saturation": -10}),
    ("low-key", {"exposure": -0.6, "contrast": 30, "shadows": -30, "blacks": -20, "highlights": 10, "vibrance": -10}),
    ("pastel", {
        "fade": 20, "contrast": -25, "saturation": -25, "exposure": 0.25, "shadows": 25,
        "hsl_luminance": {band: 10 for band in HSL_BANDS}, "grading_highlights": {"hue": 330, "saturation": 10},
    }),
    ("moody-green", {
        "temperature": -10, "tint": -15, "saturation": -20, "contrast": 15, "exposure": -0.3, "fade": 10,
        "hsl_hue": {"yellow": 20, "green": 10}, "hsl_saturation": {"orange": -10, "yellow": -20, "green": -25},
        "hsl_luminance": {"green": -20}, "grading_shadows": {"hue": 150, "saturation": 20},
    }),
    ("bw-neutral", {"saturation": -100}),
    ("bw-high-contrast", {"saturation": -100, "contrast": 50, "blacks": -20, "whites": 20}),
    ("bw-red-filter", {"saturation": -100, "contrast": 20, "channel_mixer": [[0.75, 0.2, 0.05]] * 3}),
    ("bw-green-filter", {"saturation": -100, "contrast": 10, "channel_mixer": [[0.15, 0.75, 0.1]] * 3}),
    ("bw-infrared", {"saturation": -100, "contrast": 25, "highlights": -10, "channel_mixer": [[0.3, 1.2, -0.5]] * 3}),
    ("bw-soft-fade", {"saturation": -100, "fade": 25, "contrast": -20}),
    ("film-noir", {"saturation": -100, "contrast": 60, "blacks": -30, "highlights": -10, "exposure": -0.4}),
    ("sepia", {
        "saturation": -100, "contrast": -5, "fade": 8,
        "grading_shadows": {"hue": 30, "saturation": 25}, "grading_midtones": {"hue": 35, "saturation": 35},
    }),
    ("selenium", {
        "saturation": -100, "contrast": 25, "blacks": -25,
        "grading_shadows": {"hue": 295, "saturation": 45}, "grading_midtones": {"hue": 320, "saturation": 15},
    }),
    ("cyanotype", {
        "saturation": -100, "contrast": 10, "grading_shadows": {"hue": 210, "saturation": 60},
        "grading_midtones": {"hue": 205, "saturation": 45}, "grading_highlights": {"hue": 200, "saturation": 15},
    }),
    ("golden-hour", {
        "temperature": 35, "tint": 8, "exposure": 0.15, "highlights": -15, "vibrance": 15,
        "hsl_saturation": {"orange": 15, "yellow": 10}, "grading_highlights": {"hue": 40, "saturation": 30},
    }),
    ("vintage", {
        "fade": 25, "saturation": -25, "temperature": 15, "contrast": -10,
        "tone_curve_blue": [[0, 0.1], [1, 0.9]],
        "grading_shadows": {"hue": 180, "saturation": 10}, "grading_highlights": {"hue": 45, "saturation": 20},
    }),
    ("cinematic", {
        "contrast": 25, "saturation": -20, "highlights": -20, "shadows": -5, "exposure": -0.1, "fade": 5,
        "grading_shadows": {"hue": 220, "saturation": 25}, "grading_highlights": {"hue": 50, "saturation": 10},
    }),
    ("blue-hour", {
        "temperature": -35, "tint": 8, "exposure": -0.2, "saturation": -5,
        "grading_shadows": {"hue": 230, "saturation": 25},
    }),
    ("summer-bright", {
        "exposure": 0.3, "vibrance": 30, "saturation": 5, "temperature": 10, "highlights": -20, "shadows": 20,
        "hsl_saturation": {"aqua": 20, "blue": 15},
    }),
    ("autumn", {
        "temperature": 15, "contrast": 10, "hsl_hue": {"yellow": -10, "green": -30},
        "hsl_saturation": {"red": 10, "orange": 25, "yellow": 20, "green": -20},
    }),
    ("winter-frost", {
        "temperature": -30, "saturation": -30, "highlights": -10, "exposure": 0.2, "fade": 10,
        "grading_highlights": {"hue": 200, "saturation": 10},
    }),
    ("polaroid", {
        "fade": 20, "temperature": 10, "tint": 10, "contrast": -10, "saturation": -10,
        "tone_curve_red": [[0, 0.03], [1, 1]], "tone_curve_green": [[0, 0.05], [1, 0.95]],
        "grading_highlights": {"hue": 60, "saturation": 15},
    }),
    ("lomo", {
        "contrast": 40, "saturation": 25, "vibrance": 10, "blacks": -10,
        "tone_curve_red": [[0, 0], [0.25, 0.2], [0.75, 0.8], [1, 1]],
        "tone_curve_blue": [[0, 0.08], [0.5, 0.45], [1, 0.9]],
    }),
    ("agfa-vista", {
        "temperature": 12, "tint": 10, "saturation": 15, "contrast": 5, "fade": 5,
        "hsl_hue": {"red": 5}, "hsl_saturation": {"red": 25}, "hsl_luminance": {"red": -10},
        "grading_shadows": {"hue": 20, "saturation": 10},
    }),
    ("kodak-gold", {
        "temperature": 18, "tint": 2, "saturation": 12, "highlights": -15, "fade": 5,
        "hsl_hue": {"yellow": -5}, "hsl_saturation": {"orange": 10, "yellow": 20},
        "grading_highlights": {"hue": 50, "saturation": 15},
    }),
    ("fuji-pro-400h", {
        "temperature": -8, "tint": -4, "exposure": 0.2, "contrast": -15, "saturation": -10, "fade": 10,
        "hsl_hue": {"green": 15}, "hsl_saturation": {"red": -10, "green": -10},
        "grading_shadows": {"hue": 170, "saturation": 10},
    }),
    ("ektachrome-e100", {
        "temperature": -10, "tint": 3, "contrast": 20, "saturation": 15, "blacks": -10,
        "hsl_saturation": {"aqua": 15, "blue": 20},
    }),
    ("technicolor", {
        "contrast": 25, "saturation": 25,
        "channel_mixer": [[1.1, -0.05, -0.05], [-0.05, 1.1, -0.05], [-0.05, -0.05, 1.1]],
        "hsl_saturation": {"red": 20, "green": 10, "blue": 20},
    }),
    ("dusty-rose", {
        "tint": 20, "temperature": 5, "saturation": -15, "fade": 10, "hsl_hue": {"red": -10},
        "grading_highlights": {"hue": 340, "saturation": 20},
    }),
    ("tropical", {
        "vibrance": 35, "temperature": 5, "contrast": 10, "hsl_hue": {"aqua": 10, "blue": -10},
        "hsl_saturation": {"green": 15, "aqua": 30, "blue": 25},
    }),
    ("desert", {
        "temperature": 25, "saturation": -15, "contrast": 15, "fade": 5,
        "hsl_saturation": {"blue": -30}, "hsl_luminance": {"orange": 10},
        "grading_highlights": {"hue": 35, "saturation": 15},
    }),
    ("urban-grit", {
        "saturation": -35, "contrast": 35, "highlights": -20, "blacks": -15, "temperature": -8,
        "grading_shadows": {"hue": 210, "saturation": 15},
    }),
    ("matte-teal", {"fade": 25, "saturation": -15, "contrast": -10, "grading_shadows": {"hue": 185, "saturation": 30}}),
    ("retro-70s", {
        "temperature": 20, "fade": 20, "saturation": -10, "hsl_hue": {"green": -20},
        "tone_curve_blue": [[0, 0.12], [1, 0.85]], "grading_highlights": {"hue": 45, "saturation": 20},
    }),
    ("clean-portrait", {
        "exposure": 0.15, "highlights": -20, "shadows": 15, "vibrance": 10, "temperature": 5,
        "hsl_saturation": {"orange": -10}, "hsl_luminance": {"red": 5, "orange": 10},
    }),
    ("hdr-punch", {"highlights": -60, "shadows": 60, "contrast": 10, "vibrance": 30, "whites": 15, "blacks": -15}),
    ("lavender-haze", {
        "fade": 15, "saturation": -10, "contrast": -10,
        "grading_shadows": {"hue": 270, "saturation": 25}, "grading_highlights": {"hue": 50, "saturation": 15},
    }),
    ("day-for-night", {
        "temperature": -60, "exposure": -1.2, "saturation": -40, "contrast": 15,
        "grading_shadows": {"hue": 225, "saturation": 30},
    }),
]


def builtin_presets() -> list[Preset]:
    """The named looks shipped with the toolkit, in a fixed order."""
    return [Preset.from_dict({"name": name, **params}) for name, params in _BUILTIN_LOOKS]


# --------------------------------------------------------------------------- random grades


def _slider(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(round(rng.uniform(lo, hi)))


def _normal_slider(rng: np.random.Generator, sd: float, limit: float) -> float:
    return float(round(np.clip(rng.normal(0.0, sd), -limit, limit)))


def _random_master_curve(rng: np.random.Generator) -> list[list[float]]:
    """An S (or flattening) curve with a mid-tone shift, a slight black lift and white roll-off.

    Its control points stay ordered for every draw, so the curve is monotone.
    """
    s_curve = rng.uniform(-0.04, 0.06)
    brightness = float(np.clip(rng.normal(0.0, 0.03), -0.05, 0.05))
    black, white = np.minimum(np.abs(rng.normal(0.0, 0.02, 2)), 0.06)
    ys = [black, 0.25 - s_curve + 0.7 * brightness, 0.5 + brightness, 0.75 + s_curve + 0.7 * brightness, 1.0 - white]
    return [[x, round(float(y), 3)] for x, y in zip([0.0, 0.25, 0.5, 0.75, 1.0], ys)]


def _random_channel_curve(rng: np.random.Generator) -> list[list[float]]:
    """Small independent offsets (within ±0.04) at five points: a colour cast that varies with tone."""
    xs = np.linspace(0.0, 1.0, 5)
    ys = np.clip(xs + np.clip(rng.normal(0.0, 0.02, 5), -0.04, 0.04), 0.0, 1.0)
    return [[float(x), round(float(y), 3)] for x, y in zip(xs, ys)]


def _random_bands(rng: np.random.Generator, limit: float, probability: float) -> dict[str, float]:
    return {band: _slider(rng, -limit, limit) if rng.random() < probability else 0.0 for band in HSL_BANDS}


def _random_wheel(rng: np.random.Generator, max_saturation: float) -> dict[str, float]:
    return {
        "hue": _slider(rng, 0, 360),
        "saturation": _slider(rng, 5, max_saturation),
        "luminance": _slider(rng, -15, 15),
    }


def _random_mixer(rng: np.random.Generator) -> list[list[float]]:
    """Identity with small cross-talk; rows keep summing to 1 so greys stay grey."""
    mixer = np.eye(3) + np.clip(rng.normal(0.0, 0.04, (3, 3)), -0.1, 0.1) * (1 - np.eye(3))
    mixer /= mixer.sum(axis=1, keepdims=True)
    return np.round(mixer, 3).tolist()


def random_preset(rng: np.random.Generator, name: str | None = None) -> Preset:
    """A plausible photographic grade drawn from ``rng``: same generator state, same preset.

    Slider ranges are those seen in real looks: modest white balance and
    exposure, tone moves that never crush or clip, HSL hue moves within ±6°,
    saturation boosts small enough to keep gradations, occasional split
    toning, fades, channel cross-talk and black-and-white mixes (about 8 %).
    ``tests/test_presets.py`` checks these properties over 200 seeds. The
    default name is ``random-<8 hex>``, a hash of the parameters.
    """
    p: dict = {
        "temperature": _normal_slider(rng, 18, 40),
        "tint": _normal_slider(rng, 8, 20),
        "exposure": round(float(np.clip(rng.normal(0.0, 0.2), -0.5, 0.5)), 2),
        "contrast": _slider(rng, -25, 40),
        "highlights": _slider(rng, -50, 15),
        "shadows": _slider(rng, -15, 50),
        "whites": _slider(rng, -25, 20),
        "blacks": _slider(rng, -25, 20),
        "vibrance": _slider(rng, -20, 25),
        "saturation": _slider(rng, -35, 10),
        "hsl_hue": _random_bands(rng, 20, 0.35),
        "hsl_saturation": _random_bands(rng, 25, 0.35),
        "hsl_luminance": _random_bands(rng, 25, 0.35),
        "grading_balance": _slider(rng, -40, 40),
        "grading_blending": _slider(rng, 30, 80),
    }
    if rng.random() < 0.5:
        p["tone_curve"] = _random_master_curve(rng)
    if rng.random() < 0.3:
        for channel in ("red", "green", "blue"):
            p[f"tone_curve_{channel}"] = _random_channel_curve(rng)
    if rng.random() < 0.6:
        p["grading_shadows"] = _random_wheel(rng, 40)
    if rng.random() < 0.25:
        p["grading_midtones"] = _random_wheel(rng, 20)
    if rng.random() < 0.6:
        p["grading_highlights"] = _random_wheel(rng, 35)
    if rng.random() < 0.3:
        p["fade"] = _slider(rng, 5, 30)
    if rng.random() < 0.15:
        p["channel_mixer"] = _random_mixer(rng)
    if rng.random() < 0.08:  # black and white through a random colour filter
        weights = rng.dirichlet([3.0, 3.0, 3.0])
        p.update(saturation=-100.0, vibrance=0.0, channel_mixer=[np.round(weights, 3).tolist()] * 3)
    preset = Preset.from_dict({"name": "random", **p})
    return replace(preset, name=name if name is not None else f"random-{_params_digest(preset)[:8]}")


def _params_digest(preset: Preset) -> str:
    params = {k: v for k, v in preset.to_dict().items() if k != "name"}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- preset sources


@dataclass(frozen=True)
class AppliedPreset:
    """One draw: a name for it, a JSON-safe record that rebuilds it (``preset_from_record``), the LUT to apply."""

    name: str
    params: dict
    lut: Lut3D | Lut1D


class PresetSource(ABC):
    """A pool of presets that dataset builders draw from with each sample's generator."""

    @abstractmethod
    def draw(self, rng: np.random.Generator) -> AppliedPreset:
        """One preset, chosen by ``rng`` alone."""

    @abstractmethod
    def names(self) -> list[str]:
        """The presets that can be drawn; empty where there is no fixed list."""


class BuiltinSource(PresetSource):
    """Uniform draws from ``builtin_presets()``; each LUT is compiled once and shared between draws."""

    def __init__(self, lut_size: int = 33):
        self.presets = builtin_presets()
        self.lut_size = lut_size
        self._luts: dict[str, Lut3D] = {}

    def names(self) -> list[str]:
        return [p.name for p in self.presets]

    def draw(self, rng: np.random.Generator) -> AppliedPreset:
        preset = self.presets[rng.integers(len(self.presets))]
        if preset.name not in self._luts:
            self._luts[preset.name] = preset.to_lut(self.lut_size)
        return AppliedPreset(preset.name, preset.to_dict(), self._luts[preset.name])


class RandomSource(PresetSource):
    """A fresh ``random_preset`` per draw."""

    def __init__(self, lut_size: int = 33):
        self.lut_size = lut_size

    def names(self) -> list[str]:
        return []

    def draw(self, rng: np.random.Generator) -> AppliedPreset:
        preset = random_preset(rng)
        return AppliedPreset(preset.name, preset.to_dict(), preset.to_lut(self.lut_size))


class LutFolderSource(PresetSource):
    """Uniform draws from the LUT files directly in ``folder`` (sorted; hidden files ignored).

    Every file is read up front, so a bad one stops the build before any work
    is done; the error lists all of them.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        files = _lut_files(self.folder)
        if not files:
            raise ValueError(f"preset folder {self.folder} has no LUT files (expected {', '.join(LUT_FILE_SUFFIXES)})")
        self._presets: list[AppliedPreset] = []
        errors = []
        for path in files:
            try:
                lut = read_lut(path)
            except LutFormatError as error:
                errors.append(str(error))
                continue
            self._presets.append(AppliedPreset(path.name, {"lut_file": path.name, "sha256": _sha256(path)}, lut))
        if errors:
            listing = "\n".join(errors)
            raise ValueError(f"preset folder {self.folder} has {len(errors)} unreadable LUT file(s):\n{listing}")

    def names(self) -> list[str]:
        return [p.name for p in self._presets]

    def draw(self, rng: np.random.Generator) -> AppliedPreset:
        chosen = self._presets[rng.integers(len(self._presets))]
        return replace(chosen, params=dict(chosen.params))


def _lut_files(folder: Path) -> list[Path]:
    visible = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in visible if p.suffix.lower() in LUT_FILE_SUFFIXES)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def preset_source(spec: str | os.PathLike, lut_size: int = 33) -> PresetSource:
    """``"builtin"``, ``"random"`` or a folder of ``.cube`` / Hald LUT files; anything else raises ``ValueError``."""
    if spec == "builtin":
        return BuiltinSource(lut_size)
    if spec == "random":
        return RandomSource(lut_size)
    if Path(spec).is_dir():
        return LutFolderSource(spec)
    raise ValueError(
        f"preset source {str(spec)!r} is not one of {SOURCE_KEYWORDS} nor an existing folder of LUT files "
        f"({', '.join(LUT_FILE_SUFFIXES)})"
    )


def preset_from_record(
    name: str, params: Mapping, lut_dir: str | os.PathLike | None = None, lut_size: int = 33
) -> Lut3D | Lut1D:
    """Rebuild the LUT of a recorded draw; a LUT file must still be in ``lut_dir`` with the recorded bytes."""
    if not isinstance(params, Mapping):
        raise ValueError(f"preset record params must be a dict, got {type(params).__name__}")
    if "lut_file" not in params:
        preset = Preset.from_dict(params)
        if preset.name != name:
            raise ValueError(f"preset record is named {name!r} but its params name {preset.name!r}")
        return preset.to_lut(lut_size)
    if set(params) != {"lut_file", "sha256"}:
        raise ValueError(f"a LUT file record has exactly the keys lut_file and sha256, got {sorted(params)}")
    if lut_dir is None:
        raise ValueError(f"preset {name!r} came from LUT file {params['lut_file']!r}; pass lut_dir, its folder")
    path = Path(lut_dir) / params["lut_file"]
    if _sha256(path) != params["sha256"]:
        raise ValueError(f"{path} has changed since preset {name!r} was recorded (sha256 differs)")
    return read_lut(path)

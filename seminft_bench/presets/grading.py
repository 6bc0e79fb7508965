"""Parametric colour presets: Lightroom-style grading sliders compiled to a 3D LUT.

A ``Preset`` is plain data (JSON-safe via ``to_dict``/``from_dict``);
``grade`` evaluates it exactly on float RGB and ``to_lut`` samples that on a
lattice, so the dataset can store either the parameters or the cube.

Processing order. Each stage runs where its maths is simplest and closest to
what a photographer expects:

1. sRGB decode to linear light.
2. White balance: per-channel gains (temperature moves R up and B down, tint
   moves G down for magenta), normalised to keep the Rec. 709 luminance of
   white, as a camera's white balance does.
3. Exposure: gain 2^EV. Positive EV uses a Reinhard-style shoulder
   ``x·g / (1 + x·(g−1))`` that keeps 1 at 1, so highlights roll off instead
   of clipping; negative EV is a plain gain.
4. Channel mixer (3×3, rows are output R, G, B). Colours outside [0, 1]³
   are moved in along the line towards a grey (``_into_gamut``), which keeps
   their hue, rather than clipped per channel, which skews it.
5. sRGB encode; tone sliders per channel on the encoded signal: contrast is a
   sine S-curve about 0.5, then blacks / shadows / highlights / whites move a
   monotone PCHIP curve at 0.1 / 0.3 / 0.7 / 0.9 (their reach keeps the
   control points ordered, so the curve can never invert tones).
6. Tone curves (PCHIP through the control points, flat beyond the end points):
   master on all channels, then red, green, blue.
7. In Oklab LCh (perceptual hue, lightness kept apart from chroma): per-hue
   HSL bands, vibrance, saturation. Band values are blended between the band
   centres with a raised-cosine ease, so adjustments vary smoothly with hue;
   band luminance fades out towards grey, where hue is meaningless.
8. Colour grading (three-way): an Oklab a/b tint and an L offset for shadows,
   midtones and highlights, weighted by Bernstein masks on L. Balance moves the
   crossover, blending sharpens (<50) or widens (>50) the masks.
   Back to linear RGB, out-of-gamut colours are moved in as in step 4.
9. Fade lifts the encoded black point.

Parameters and ranges (sliders at 0 change nothing; strengths are at ±100):

======================  ==============  ========================================
field                   range           meaning
======================  ==============  ========================================
temperature, tint       −100..100       R×2^0.4 and B×2^−0.4 / G×2^−0.3
exposure                −5..5 EV
contrast                −100..100       mid-tone slope 1 ± 0.6
highlights, shadows     −100..100       curve at 0.7 / 0.3 moves ±0.1
whites, blacks          −100..100       curve at 0.9 / 0.1 moves ±0.05
tone_curve[_red|...]    [[x, y], ...]   x strictly increasing; x, y in [0, 1]
vibrance                −100..100       chroma × up to 1 ± 1, less when vivid
saturation              −100..100       chroma × (1 ± 1); −100 is black and white
hsl_hue                 band −100..100  hue ± 30°
hsl_saturation          band −100..100  chroma × (1 ± 1)
hsl_luminance           band −100..100  lightness × (1 ± 0.4)
grading_shadows, ...    hue 0..360      as on Lightroom's wheel (HSV hue)
                        saturation      0..100: Oklab chroma + 0.1 at 100
                        luminance       −100..100: Oklab L ± 0.1
grading_balance         −100..100       + favours highlights
grading_blending        0..100          50 is the default overlap
fade                    0..100          black lifted to 0.25
channel_mixer           3×3, −2..2      identity; equal rows + saturation −100
                                        make a filtered black and white
======================  ==============  ========================================

HSL bands: red, orange, yellow, green, aqua, blue, purple, magenta; each band's
centre is the Oklab hue of a pure sRGB colour (e.g. orange = (1, 0.5, 0)).
"""

from __future__ import annotations

import colorsys
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .lut import Lut3D

HSL_BANDS = ("red", "orange", "yellow", "green", "aqua", "blue", "purple", "magenta")
WHEEL_KEYS = ("hue", "saturation", "luminance")

# Strength of each slider at ±100 (see the table in the module docstring).
TEMPERATURE_STOPS = 0.4
TINT_STOPS = 0.3
CONTRAST_MAX = 0.6
ZONE_X = np.array([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])  # end, blacks, shadows, mid, highlights, whites, end
ZONE_REACH = np.array([0.0, 0.05, 0.1, 0.0, 0.1, 0.05, 0.0])
HUE_SHIFT_MAX_DEG = 30.0
BAND_LUMINANCE_MAX = 0.4
BAND_LUMINANCE_FULL_CHROMA = 0.15  # below this Oklab chroma, band luminance fades out
VIBRANCE_REFERENCE_CHROMA = 0.2  # colours this saturated are left alone by vibrance
GRADING_TINT_MAX = 0.1
GRADING_LUMINANCE_MAX = 0.1
FADE_MAX = 0.25
GAMUT_ANCHOR_RANGE = (0.05, 0.5)  # linear luminance of the grey that out-of-gamut colours move towards

_SCALAR_RANGES = {
    "temperature": (-100.0, 100.0),
    "tint": (-100.0, 100.0),
    "exposure": (-5.0, 5.0),
    "contrast": (-100.0, 100.0),
    "highlights": (-100.0, 100.0),
    "shadows": (-100.0, 100.0),
    "whites": (-100.0, 100.0),
    "blacks": (-100.0, 100.0),
    "vibrance": (-100.0, 100.0),
    "saturation": (-100.0, 100.0),
    "grading_balance": (-100.0, 100.0),
    "grading_blending": (0.0, 100.0),
    "fade": (0.0, 100.0),
}
_CURVE_FIELDS = ("tone_curve", "tone_curve_red", "tone_curve_green", "tone_curve_blue")
_BAND_FIELDS = ("hsl_hue", "hsl_saturation", "hsl_luminance")
_WHEEL_FIELDS = ("grading_shadows", "grading_midtones", "grading_highlights")
_WHEEL_RANGES = {"hue": (0.0, 360.0), "saturation": (0.0, 100.0), "luminance": (-100.0, 100.0)}
_MIXER_RANGE = (-2.0, 2.0)
_REC709_LUMA = np.array([0.2126, 0.7152, 0.0722])


# --------------------------------------------------------------------------- colour spaces


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055)


# Björn Ottosson's Oklab; inverses computed here so the round trip is exact to float64.
_LINEAR_TO_LMS = np.array(
    [
        [0.4122214708, 0.5363325363, 0.0514459929],
        [0.2119034982, 0.6806995451, 0.1073969566],
        [0.0883024619, 0.2817188376, 0.6299787005],
    ]
)
_LMS_TO_LAB = np.array(
    [
        [0.2104542553, 0.7936177850, -0.0040720468],
        [1.9779984951, -2.4285922050, 0.4505937099],
        [0.0259040371, 0.7827717662, -0.8086757660],
    ]
)
_LMS_TO_LINEAR = np.linalg.inv(_LINEAR_TO_LMS)
_LAB_TO_LMS = np.linalg.inv(_LMS_TO_LAB)


def _linear_to_oklab(rgb: np.ndarray) -> np.ndarray:
    return np.cbrt(rgb @ _LINEAR_TO_LMS.T) @ _LMS_TO_LAB.T


def _oklab_to_linear(lab: np.ndarray) -> np.ndarray:
    return ((lab @ _LAB_TO_LMS.T) ** 3) @ _LMS_TO_LINEAR.T


def _oklab_hue_deg(encoded_rgb: tuple[float, float, float]) -> float:
    lab = _linear_to_oklab(_srgb_to_linear(np.array(encoded_rgb, dtype=np.float64)))
    return math.degrees(math.atan2(lab[2], lab[1])) % 360.0


_BAND_ANCHORS = {
    "red": (1.0, 0.0, 0.0),
    "orange": (1.0, 0.5, 0.0),
    "yellow": (1.0, 1.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "aqua": (0.0, 1.0, 1.0),
    "blue": (0.0, 0.0, 1.0),
    "purple": (0.5, 0.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
BAND_HUES_DEG = np.array([_oklab_hue_deg(_BAND_ANCHORS[band]) for band in HSL_BANDS])


# --------------------------------------------------------------------------- validation


def _number(name: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not lo <= value <= hi:  # also rejects NaN
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {value!r}")
    return value


def _keyed_numbers(name: str, value: object, ranges: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """A dict of numbers over fixed keys; missing keys default to 0."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict with keys {list(ranges)}, got {value!r}")
    unknown = [str(k) for k in value if k not in ranges]
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}; expected some of {list(ranges)}")
    return {k: _number(f"{name}.{k}", value.get(k, 0.0), *ranges[k]) for k in ranges}


def _curve(name: str, value: object) -> list[list[float]]:
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise ValueError(f"{name} must be a list of at least two [x, y] points, got {value!r}")
    points = []
    for i, point in enumerate(value):
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise ValueError(f"{name}[{i}] must be an [x, y] pair, got {point!r}")
        points.append([_number(f"{name}[{i}].x", point[0], 0.0, 1.0), _number(f"{name}[{i}].y", point[1], 0.0, 1.0)])
    xs = [x for x, _ in points]
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError(f"{name} x values must strictly increase, got {xs}")
    return points


def _mixer(name: str, value: object) -> list[list[float]]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"{name} must be 3 rows of 3 numbers, got {value!r}")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, (list, tuple)) or len(row) != 3:
            raise ValueError(f"{name}[{i}] must be a row of 3 numbers, got {row!r}")
        rows.append([_number(f"{name}[{i}][{j}]", v, *_MIXER_RANGE) for j, v in enumerate(row)])
    return rows


def _identity_curve() -> list[list[float]]:
    return [[0.0, 0.0], [1.0, 1.0]]


def _zero_bands() -> dict[str, float]:
    return {band: 0.0 for band in HSL_BANDS}


def _neutral_wheel() -> dict[str, float]:
    return {key: 0.0 for key in WHEEL_KEYS}


def _identity_mixer() -> list[list[float]]:
    return np.eye(3).tolist()


# --------------------------------------------------------------------------- the preset


@dataclass
class Preset:
    """A named colour grade; every field at its default leaves the image unchanged."""

    name: str = "untitled"
    temperature: float = 0.0
    tint: float = 0.0
    exposure: float = 0.0
    contrast: float = 0.0
    highlights: float = 0.0
    shadows: float = 0.0
    whites: float = 0.0
    blacks: float = 0.0
    tone_curve: list = field(default_factory=_identity_curve)
    tone_curve_red: list = field(default_factory=_identity_curve)
    tone_curve_green: list = field(default_factory=_identity_curve)
    tone_curve_blue: list = field(default_factory=_identity_curve)
    vibrance: float = 0.0
    saturation: float = 0.0
    hsl_hue: dict = field(default_factory=_zero_bands)
    hsl_saturation: dict = field(default_factory=_zero_bands)
    hsl_luminance: dict = field(default_factory=_zero_bands)
    grading_shadows: dict = field(default_factory=_neutral_wheel)
    grading_midtones: dict = field(default_factory=_neutral_wheel)
    grading_highlights: dict = field(default_factory=_neutral_wheel)
    grading_balance: float = 0.0
    grading_blending: float = 50.0
    fade: float = 0.0
    channel_mixer: list = field(default_factory=_identity_mixer)

    def __post_init__(self) -> None:
        """Validate and normalise to plain Python floats, lists and dicts (so ``to_dict`` is JSON-safe)."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for name, (lo, hi) in _SCALAR_RANGES.items():
            setattr(self, name, _number(name, getattr(self, name), lo, hi))
        for name in _CURVE_FIELDS:
            setattr(self, name, _curve(name, getattr(self, name)))
        band_ranges = {band: (-100.0, 100.0) for band in HSL_BANDS}
        for name in _BAND_FIELDS:
            setattr(self, name, _keyed_numbers(name, getattr(self, name), band_ranges))
        for name in _WHEEL_FIELDS:
            setattr(self, name, _keyed_numbers(name, getattr(self, name), _WHEEL_RANGES))
        self.channel_mixer = _mixer("channel_mixer", self.channel_mixer)

    def to_dict(self) -> dict:
        """Every parameter, JSON-safe; ``Preset.from_dict(p.to_dict()) == p``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Preset":
        """Build from a (possibly partial) dict; unknown keys or bad values raise ``ValueError``."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a preset must be a dict, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = [str(k) for k in d if k not in known]
        if unknown:
            raise ValueError(f"unknown preset parameters {unknown}; known parameters are {known}")
        return cls(**d)

    def grade(self, rgb: np.ndarray) -> np.ndarray:
        """Apply the preset exactly to float RGB in [0, 1] (shape ``...×3``); same shape and dtype out."""
        rgb = np.asarray(rgb)
        if rgb.shape[-1:] != (3,) or not np.issubdtype(rgb.dtype, np.floating):
            raise ValueError(f"grade expects float RGB of shape ...×3, got {rgb.dtype} {rgb.shape}")
        linear = _srgb_to_linear(np.clip(rgb.astype(np.float64), 0.0, 1.0))
        linear = _white_balance(linear, self.temperature, self.tint)
        linear = _expose(linear, self.exposure)
        linear = _into_gamut(linear @ np.asarray(self.channel_mixer).T)
        encoded = _tone(_linear_to_srgb(linear), self)
        encoded = _tone_curves(encoded, self)
        lab = _linear_to_oklab(_srgb_to_linear(encoded))
        lab = _colour_grade(_adjust_colour(lab, self), self)
        encoded = _linear_to_srgb(_into_gamut(_oklab_to_linear(lab)))
        encoded = _fade(encoded, self.fade)
        return np.clip(encoded, 0.0, 1.0).astype(rgb.dtype)

    def to_lut(self, size: int = 33) -> Lut3D:
        """Sample ``grade`` on a ``size``³ lattice over [0, 1]³."""
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 2:
            raise ValueError(f"LUT size must be an integer >= 2, got {size!r}")
        ramp = np.linspace(0.0, 1.0, int(size))
        lattice = np.stack(np.meshgrid(ramp, ramp, ramp, indexing="ij"), axis=-1)
        return Lut3D(self.grade(lattice), title=self.name)


# --------------------------------------------------------------------------- stages


def _white_balance(linear: np.ndarray, temperature: float, tint: float) -> np.ndarray:
    t, u = temperature / 100.0, tint / 100.0
    gains = 2.0 ** np.array([TEMPERATURE_STOPS * t, -TINT_STOPS * u, -TEMPERATURE_STOPS * t])
    return linear * (gains / (_REC709_LUMA @ gains))


def _expose(linear: np.ndarray, exposure: float) -> np.ndarray:
    gain = 2.0**exposure
    if gain <= 1.0:
        return linear * gain
    return linear * gain / (1.0 + linear * (gain - 1.0))


def _into_gamut(linear: np.ndarray) -> np.ndarray:
    """Bring colours into [0, 1]³ along the line towards a grey, instead of clipping channels one by one.

    Per-channel clipping skews hues (orange turns yellow) and flattens saturated
    areas to one colour. The grey has the colour's luminance, kept within
    ``GAMUT_ANCHOR_RANGE``: next to white or black an equal-luminance grey leaves
    no room for colour, and pulling every bright colour to white would fold
    neighbouring colours far apart. In-gamut colours are left as they are.
    """
    grey = np.clip(linear @ _REC709_LUMA, *GAMUT_ANCHOR_RANGE)[..., None]
    excess = linear - grey
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(excess > 0, (1.0 - grey) / excess, np.where(excess < 0, -grey / excess, np.inf))
    keep = np.clip(room.min(axis=-1, keepdims=True), 0.0, 1.0)
    return np.clip(grey + keep * excess, 0.0, 1.0)


def _tone(encoded: np.ndarray, p: Preset) -> np.ndarray:
    k = CONTRAST_MAX * p.contrast / 100.0
    encoded = encoded - k / (2 * np.pi) * np.sin(2 * np.pi * encoded)
    sliders = np.array([0.0, p.blacks, p.shadows, 0.0, p.highlights, p.whites, 0.0])
    zone_y = ZONE_X + ZONE_REACH * sliders / 100.0
    return _pchip(ZONE_X, zone_y, encoded)


def _curve_map(points: list[list[float]], x: np.ndarray) -> np.ndarray:
    xs, ys = np.array(points).T
    return _pchip(xs, ys, np.clip(x, xs[0], xs[-1]))


def _pchip(xs: np.ndarray, ys: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Monotone cubic through the points: a curve that never overshoots, so tones never invert."""
    from scipy.interpolate import PchipInterpolator  # imported here: scipy.interpolate costs 0.4 s to import

    return PchipInterpolator(xs, ys)(x)


def _tone_curves(encoded: np.ndarray, p: Preset) -> np.ndarray:
    encoded = _curve_map(p.tone_curve, encoded)
    channels = [p.tone_curve_red, p.tone_curve_green, p.tone_curve_blue]
    return np.stack([_curve_map(points, encoded[..., c]) for c, points in enumerate(channels)], axis=-1)


def _band_blend(hue_deg: np.ndarray, values: Mapping[str, float]) -> np.ndarray:
    """Per-pixel band value: raised-cosine interpolation between the band centres around the hue circle."""
    centres = np.append(BAND_HUES_DEG, BAND_HUES_DEG[0] + 360.0)
    v = np.array([values[band] for band in HSL_BANDS] + [values[HSL_BANDS[0]]])
    h = np.where(hue_deg < centres[0], hue_deg + 360.0, hue_deg)
    # a hue a hair below the first centre can round, once wrapped, onto the last one: t = 1 there
    i = np.minimum(np.searchsorted(centres, h, side="right") - 1, len(centres) - 2)
    t = (h - centres[i]) / (centres[i + 1] - centres[i])
    return v[i] + (v[i + 1] - v[i]) * np.sin(0.5 * np.pi * t) ** 2


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _adjust_colour(lab: np.ndarray, p: Preset) -> np.ndarray:
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    chroma = np.hypot(a, b)
    hue = np.degrees(np.arctan2(b, a)) % 360.0
    band_luminance = _band_blend(hue, p.hsl_luminance) / 100.0 * _smoothstep(chroma / BAND_LUMINANCE_FULL_CHROMA)
    lightness = lightness * (1.0 + BAND_LUMINANCE_MAX * band_luminance)
    chroma = chroma * (1.0 + _band_blend(hue, p.hsl_saturation) / 100.0)
    chroma = chroma * (1.0 + p.vibrance / 100.0 * (1.0 - np.minimum(chroma / VIBRANCE_REFERENCE_CHROMA, 1.0)))
    chroma = chroma * (1.0 + p.saturation / 100.0)
    hue = np.radians(hue + HUE_SHIFT_MAX_DEG * _band_blend(hue, p.hsl_hue) / 100.0)
    return np.stack([lightness, chroma * np.cos(hue), chroma * np.sin(hue)], axis=-1)


def _wheel_direction(hue_deg: float) -> np.ndarray:
    """Unit Oklab (a, b) direction of the wheel hue, read as the HSV hue of a pure sRGB colour."""
    lab = _linear_to_oklab(_srgb_to_linear(np.array(colorsys.hsv_to_rgb(hue_deg / 360.0, 1.0, 1.0))))
    return lab[1:] / np.hypot(lab[1], lab[2])


def _zone_weights(lightness: np.ndarray, balance: float, blending: float) -> list[np.ndarray]:
    """Shadows, midtones, highlights masks (sum to 1) from Bernstein polynomials of a balanced lightness."""
    pivot = 0.5 - 0.3 * balance / 100.0
    u = np.clip(lightness, 0.0, 1.0) ** (math.log(0.5) / math.log(pivot))
    weights = [(1.0 - u) ** 2, 2.0 * u * (1.0 - u), u**2]
    sharpness = 2.0 ** ((50.0 - blending) / 25.0)
    weights = [w**sharpness for w in weights]
    total = sum(weights)
    return [w / total for w in weights]


def _colour_grade(lab: np.ndarray, p: Preset) -> np.ndarray:
    wheels = [p.grading_shadows, p.grading_midtones, p.grading_highlights]
    out = lab.copy()
    for weight, wheel in zip(_zone_weights(lab[..., 0], p.grading_balance, p.grading_blending), wheels):
        tint = GRADING_TINT_MAX * wheel["saturation"] / 100.0 * _wheel_direction(wheel["hue"])
        out[..., 1:] += weight[..., None] * tint
        out[..., 0] += weight * GRADING_LUMINANCE_MAX * wheel["luminance"] / 100.0
    return out


def _fade(encoded: np.ndarray, fade: float) -> np.ndarray:
    lift = FADE_MAX * fade / 100.0
    return lift + (1.0 - lift) * encoded

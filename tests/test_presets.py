"""Parametric presets, the random grade generator, the built-in library and preset sources.

Realism is measured on each preset's 33³ LUT and on two probes, with the
bounds explained where they are set:

* flat colour: neighbouring lattice cells mapped to one identical colour, and
  outputs pinned on two or more channels (a cube edge or corner, where hue and
  saturation collapse). A single channel touching 0 or 1 is the gamut boundary
  of a saturated colour, not flat colour, and is allowed.
* smoothness: in linear light no lattice step moves the output by more than
  0.25, about 3.6× the largest step of the identity (0.07, at the top of the
  sRGB curve), so there are no jumps that would band a gradient.
* tones: the grey ramp stays monotone (within a quarter of an 8-bit level),
  keeps at least 0.7 of its luminance range, and mid grey stays within
  0.3..0.7 (no washed-out or murky grade).
* hue: a sweep of photographic colours (HSV s = 0.6, v = 0.8) keeps its hue
  within 30° and stays monotone, moving 0..5° per 1° of input (no hue folds).
"""

import colorsys
import hashlib
import json
import re

import numpy as np
import pytest
from skimage import data
from skimage.transform import resize

from seminft_bench.presets.apply import apply_lut
from seminft_bench.presets.grading import HSL_BANDS, Preset
from seminft_bench.presets.io import write_cube, write_hald
from seminft_bench.presets.library import (
    AppliedPreset,
    builtin_presets,
    preset_from_record,
    preset_source,
    random_preset,
)
from seminft_bench.presets.lut import Lut3D

REC709 = np.array([0.2126, 0.7152, 0.0722])
GREY_RAMP = np.repeat(np.linspace(0.0, 1.0, 256)[:, None], 3, axis=1)
HUE_SWEEP = np.array([colorsys.hsv_to_rgb(h / 360.0, 0.6, 0.8) for h in range(360)])
N_RANDOM = 200

# Built-in looks that are extreme on purpose, and the checks they are excused from.
INTENTIONALLY_EXTREME = {
    "bw-infrared": {"flat"},  # blue weighted −0.5: skies and blue shadows go solid black
    "cross-process": {"hue"},  # swapped channel curves shift hues by design (~40°)
    "retro-70s": {"hue"},  # lifted blue blacks turn yellows and greens olive (~32°)
}


def srgb_to_linear(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def oklab(rgb):
    """Oklab from sRGB (Ottosson's matrices), for hue measurements."""
    lms = srgb_to_linear(rgb) @ np.array(
        [[0.4122214708, 0.5363325363, 0.0514459929], [0.2119034982, 0.6806995451, 0.1073969566],
         [0.0883024619, 0.2817188376, 0.6299787005]]
    ).T
    return np.cbrt(lms) @ np.array(
        [[0.2104542553, 0.7936177850, -0.0040720468], [1.9779984951, -2.4285922050, 0.4505937099],
         [0.0259040371, 0.7827717662, -0.8086757660]]
    ).T


def oklab_hue_deg(rgb):
    lab = oklab(rgb)
    return np.degrees(np.arctan2(lab[..., 2], lab[..., 1]))


def grey(level):
    return np.array([level, level, level], dtype=np.float64)


def warmth(rgb):
    return float(np.mean(rgb[..., 0] - rgb[..., 2]))


def greenness(rgb):
    return float(np.mean(rgb[..., 1] - (rgb[..., 0] + rgb[..., 2]) / 2))


def wrapped(deg):
    return (deg + 180.0) % 360.0 - 180.0


def realism_failures(preset: Preset, lut: Lut3D) -> set[str]:
    """The realism checks (module docstring) that ``preset`` fails, by name."""
    failures = set()
    table = lut.table.astype(np.float64)
    same_as_neighbour = [np.abs(np.diff(table, axis=a)).max(axis=-1) < 1e-6 for a in range(3)]
    pinned = ((table <= 1e-6) | (table >= 1 - 1e-6)).sum(axis=-1)[1:-1, 1:-1, 1:-1]
    if max(s.mean() for s in same_as_neighbour) > 1e-3 or (pinned >= 2).mean() > 0.01:
        failures.add("flat")
    linear = srgb_to_linear(table)
    if max(np.abs(np.diff(linear, axis=a)).max() for a in range(3)) > 0.25:
        failures.add("jump")
    luma = preset.grade(GREY_RAMP) @ REC709
    if np.diff(luma).min() < -1e-3:
        failures.add("monotone")
    if luma[-1] - luma[0] < 0.7:
        failures.add("range")
    if not 0.3 <= preset.grade(grey(0.5)) @ REC709 <= 0.7:
        failures.add("midtone")
    if preset.saturation > -100:  # black and white has no hue to keep
        hue_in, hue_out = oklab_hue_deg(HUE_SWEEP), oklab_hue_deg(preset.grade(HUE_SWEEP))
        step = wrapped(np.diff(np.r_[hue_out, hue_out[:1]]))
        if np.abs(wrapped(hue_out - hue_in)).max() > 30 or not (0 < step.min() and step.max() <= 5):
            failures.add("hue")
    return failures


@pytest.fixture(scope="module")
def photo():
    """A real photo (skimage's astronaut), small, float32 in [0, 1]."""
    return resize(data.astronaut(), (96, 96), anti_aliasing=True).astype(np.float32)


@pytest.fixture(scope="module")
def random_luts():
    presets = [random_preset(np.random.default_rng(seed)) for seed in range(N_RANDOM)]
    return presets, [p.to_lut(33) for p in presets]


@pytest.fixture(scope="module")
def builtin_luts():
    presets = builtin_presets()
    return presets, [p.to_lut(33) for p in presets]


def mean_lut_distances(luts):
    """Pairwise mean |difference| over the 17³ lattice (every other point of the 33³ one)."""
    flat = np.stack([lut.table[::2, ::2, ::2].reshape(-1) for lut in luts])
    return np.array([np.abs(flat[j] - flat[i]).mean() for i in range(len(flat)) for j in range(i + 1, len(flat))])


# --------------------------------------------------------------------------- the Preset model


def test_default_preset_is_the_identity(photo):
    np.testing.assert_allclose(Preset().to_lut(33).table, Lut3D.identity(33).table, atol=1e-6)
    np.testing.assert_allclose(Preset().grade(photo), photo, atol=1e-6)


def test_grade_keeps_shape_and_float_dtype_and_rejects_other_input(photo):
    graded = Preset(contrast=30).grade(photo)
    assert graded.shape == photo.shape and graded.dtype == np.float32
    assert Preset(contrast=30).grade(photo[0, 0].astype(np.float64)).shape == (3,)
    with pytest.raises(ValueError, match="float RGB"):
        Preset().grade((photo * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="float RGB"):
        Preset().grade(photo[..., :2])


def test_to_lut_titles_the_cube_with_the_preset_name():
    lut = Preset(name="warm-test", temperature=20).to_lut(9)
    assert lut.title == "warm-test" and lut.size == 9


def test_temperature_and_tint_move_the_colour_balance(photo):
    assert warmth(Preset(temperature=40).grade(photo)) > warmth(photo) + 0.03
    assert warmth(Preset(temperature=-40).grade(photo)) < warmth(photo) - 0.03
    assert greenness(Preset(tint=40).grade(photo)) < greenness(photo) - 0.01  # magenta
    assert greenness(Preset(tint=-40).grade(photo)) > greenness(photo) + 0.01


def test_exposure_brightens_without_clipping_white_and_darkens():
    ramp = np.linspace(0.05, 0.95, 19)[:, None].repeat(3, axis=1)
    assert np.all(Preset(exposure=1).grade(ramp) > ramp)
    assert np.all(Preset(exposure=-1).grade(ramp) < ramp)
    np.testing.assert_allclose(Preset(exposure=2).grade(grey(1.0)), 1.0)
    assert Preset(exposure=1).grade(grey(0.9))[0] < 1.0  # the shoulder rolls highlights off


def test_saturation_minus_100_is_black_and_white(photo):
    out = Preset(saturation=-100).grade(photo)
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)
    np.testing.assert_allclose(out[..., 1], out[..., 2], atol=1e-6)


def test_saturation_and_vibrance_scale_colourfulness():
    muted, vivid = np.array([0.55, 0.45, 0.40]), np.array([0.85, 0.25, 0.10])
    assert np.ptp(Preset(saturation=40).grade(muted)) > np.ptp(muted) * 1.2
    assert np.ptp(Preset(saturation=-40).grade(muted)) < np.ptp(muted) * 0.8
    # vibrance favours the muted colour over the already saturated one
    gain_muted = np.ptp(Preset(vibrance=60).grade(muted)) / np.ptp(muted)
    gain_vivid = np.ptp(Preset(vibrance=60).grade(vivid)) / np.ptp(vivid)
    assert gain_muted > gain_vivid + 0.2


def test_fade_lifts_black_and_keeps_white():
    faded = Preset(fade=40)
    np.testing.assert_allclose(faded.grade(grey(0.0)), 0.1)  # 40 % of the 0.25 maximum lift
    np.testing.assert_allclose(faded.grade(grey(1.0)), 1.0)


def test_contrast_steepens_mid_tones_and_keeps_the_end_points():
    def mid_slope(preset):
        return (preset.grade(grey(0.55)) - preset.grade(grey(0.45)))[0] / 0.1

    assert mid_slope(Preset(contrast=50)) > 1.2
    assert mid_slope(Preset(contrast=-50)) < 0.8
    for level in (0.0, 1.0):
        np.testing.assert_allclose(Preset(contrast=80).grade(grey(level)), level, atol=1e-12)


@pytest.mark.parametrize(
    "slider, level, untouched",
    [("shadows", 0.3, 0.9), ("highlights", 0.7, 0.1), ("blacks", 0.1, 0.9), ("whites", 0.9, 0.1)],
)
def test_tone_sliders_act_on_their_own_range(slider, level, untouched):
    brighter, darker = Preset(**{slider: 60}), Preset(**{slider: -60})
    assert brighter.grade(grey(level))[0] > level + 0.02
    assert darker.grade(grey(level))[0] < level - 0.02
    assert abs(brighter.grade(grey(untouched))[0] - untouched) < 0.03


def test_tone_curves_pass_through_their_points_and_hold_flat_beyond_them():
    preset = Preset(tone_curve=[[0.1, 0.05], [0.5, 0.6], [0.9, 0.97]])
    np.testing.assert_allclose(preset.grade(grey(0.5)), 0.6, atol=1e-12)
    np.testing.assert_allclose(preset.grade(grey(0.0)), 0.05, atol=1e-12)
    np.testing.assert_allclose(preset.grade(grey(1.0)), 0.97, atol=1e-12)
    red_only = Preset(tone_curve_red=[[0, 0], [0.5, 0.65], [1, 1]]).grade(grey(0.5))
    np.testing.assert_allclose(red_only, [0.65, 0.5, 0.5], atol=1e-12)


def test_hsl_band_moves_blue_colours_and_leaves_red_alone():
    blue, sky, red = np.array([0.15, 0.25, 0.85]), np.array([0.45, 0.6, 0.9]), np.array([0.8, 0.15, 0.1])
    for params in ({"hsl_saturation": {"blue": -100}}, {"hsl_luminance": {"blue": -80}}, {"hsl_hue": {"blue": 80}}):
        preset = Preset(**params)
        assert np.abs(preset.grade(blue) - blue).max() > 0.05
        assert np.abs(preset.grade(sky) - sky).max() > 0.02
        np.testing.assert_allclose(preset.grade(red), red, atol=1e-9)
    desaturated = Preset(hsl_saturation={"blue": -100}).grade(blue)
    assert np.ptp(desaturated) < 0.1 * np.ptp(blue)
    assert Preset(hsl_luminance={"blue": -80}).grade(blue) @ REC709 < blue @ REC709


def test_hsl_hue_rotates_towards_the_neighbouring_band():
    blue = np.array([0.15, 0.25, 0.85])
    shift = wrapped(oklab_hue_deg(Preset(hsl_hue={"blue": 100}).grade(blue)) - oklab_hue_deg(blue))
    assert 20 < shift < 35  # +100 is +30° in Oklab hue, towards purple


def test_a_hue_a_hair_below_the_first_band_centre_takes_that_bands_value():
    # wrapped by +360° such a hue rounds onto the closing centre; the blend must still be the first band's
    from seminft_bench.presets.grading import BAND_HUES_DEG, _band_blend

    first = BAND_HUES_DEG[0]
    hues = np.array([np.nextafter(first, 0.0), first, np.nextafter(first, 360.0)])
    values = {band: 10.0 * i for i, band in enumerate(HSL_BANDS)}
    values[HSL_BANDS[0]] = 50.0
    np.testing.assert_allclose(_band_blend(hues, values), 50.0, atol=1e-6)


def test_colour_grading_tints_shadows_and_highlights_apart():
    preset = Preset(
        grading_shadows={"hue": 190, "saturation": 60}, grading_highlights={"hue": 35, "saturation": 60}
    )
    dark, light = preset.grade(grey(0.15)), preset.grade(grey(0.85))
    assert dark[2] > dark[0] + 0.02 and dark[1] > dark[0]  # teal shadows
    assert light[0] > light[2] + 0.02  # orange highlights
    # the wheels leave the other end nearly neutral
    assert np.ptp(Preset(grading_shadows={"hue": 190, "saturation": 60}).grade(grey(0.95))) < 0.01
    assert np.ptp(Preset(grading_highlights={"hue": 35, "saturation": 60}).grade(grey(0.05))) < 0.01


def test_balance_moves_the_crossover_towards_the_highlights():
    def warmth_at_mid(balance):
        out = Preset(grading_highlights={"hue": 35, "saturation": 60}, grading_balance=balance).grade(grey(0.5))
        return out[0] - out[2]

    assert warmth_at_mid(60) > warmth_at_mid(0) + 0.02 > warmth_at_mid(-60) + 0.04


def test_blending_widens_the_overlap():
    def tint_at_mid(blending):
        out = Preset(grading_shadows={"hue": 190, "saturation": 60}, grading_blending=blending).grade(grey(0.5))
        return np.ptp(out)

    assert tint_at_mid(100) > tint_at_mid(50) > tint_at_mid(0)


def test_channel_mixer_swaps_channels_and_makes_filtered_black_and_white():
    colour = np.array([0.7, 0.4, 0.2])
    swapped = Preset(channel_mixer=[[0, 0, 1], [0, 1, 0], [1, 0, 0]]).grade(colour)
    np.testing.assert_allclose(swapped, colour[::-1], atol=1e-9)
    red_filter = Preset(saturation=-100, channel_mixer=[[0.8, 0.2, 0.0]] * 3)
    red, blue = np.array([0.8, 0.2, 0.2]), np.array([0.2, 0.3, 0.9])
    assert red_filter.grade(red)[0] > red_filter.grade(blue)[0] + 0.2


# --------------------------------------------------------------------------- dict round trip


def test_to_dict_round_trips_through_json(builtin_luts):
    presets = builtin_luts[0] + [random_preset(np.random.default_rng(s)) for s in range(20)]
    for preset in presets:
        text = json.dumps(preset.to_dict())
        assert Preset.from_dict(json.loads(text)) == preset


def test_from_dict_fills_defaults_for_partial_dicts():
    partial = {"name": "part", "contrast": 20, "hsl_hue": {"blue": 10}, "grading_shadows": {"hue": 200}}
    preset = Preset.from_dict(partial)
    assert preset.contrast == 20.0 and preset.exposure == 0.0
    assert preset.hsl_hue == {band: (10.0 if band == "blue" else 0.0) for band in HSL_BANDS}
    assert preset.grading_shadows == {"hue": 200.0, "saturation": 0.0, "luminance": 0.0}
    assert Preset.from_dict({}) == Preset()


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"contrastt": 10}, "unknown preset parameters"),
        ({"contrast": "high"}, "contrast must be a number"),
        ({"contrast": True}, "contrast must be a number"),
        ({"contrast": 150}, r"contrast must be in \[-100, 100\]"),
        ({"exposure": float("nan")}, "exposure must be in"),
        ({"fade": -1}, r"fade must be in \[0, 100\]"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"name": 3}, "name must be a non-empty string"),
        ({"tone_curve": [[0, 0]]}, "at least two"),
        ({"tone_curve": [[0.5, 0], [0.2, 1]]}, "strictly increase"),
        ({"tone_curve": [[0, 0], [1, 1.2]]}, r"tone_curve\[1\].y must be in"),
        ({"tone_curve_red": [[0, 0], [1]]}, r"tone_curve_red\[1\] must be an \[x, y\] pair"),
        ({"hsl_hue": {"cyan": 10}}, "unknown keys"),
        ({"hsl_saturation": [0] * 8}, "must be a dict"),
        ({"grading_shadows": {"hue": 400}}, r"grading_shadows.hue must be in \[0, 360\]"),
        ({"channel_mixer": [[1, 0], [0, 1]]}, "3 rows of 3"),
        ({"channel_mixer": [[1, 0, 0], [0, 1, 0], [0, 0, 3]]}, r"channel_mixer\[2\]\[2\] must be in"),
    ],
)
def test_from_dict_rejects_bad_values_with_a_clear_message(bad, message):
    with pytest.raises(ValueError, match=message):
        Preset.from_dict(bad)


def test_from_dict_rejects_non_dicts():
    with pytest.raises(ValueError, match="must be a dict"):
        Preset.from_dict([("contrast", 10)])


def test_lut_matches_exact_grade_within_interpolation_error(photo):
    presets = [builtin_presets()[i] for i in (2, 4, 11, 17, 27)] + [random_preset(np.random.default_rng(7))]
    for preset in presets:
        error = np.abs(apply_lut(photo, preset.to_lut(33), "trilinear") - preset.grade(photo))
        assert error.mean() < 2.5e-3, preset.name
        assert np.percentile(error, 99) < 0.02, preset.name


# --------------------------------------------------------------------------- random presets


def test_random_preset_is_deterministic_per_seed_and_named_by_its_parameters():
    a, b = random_preset(np.random.default_rng(5)), random_preset(np.random.default_rng(5))
    assert a.to_dict() == b.to_dict()
    assert re.fullmatch(r"random-[0-9a-f]{8}", a.name)
    assert random_preset(np.random.default_rng(6)).name != a.name
    assert random_preset(np.random.default_rng(5), name="mine").name == "mine"


def test_random_presets_are_diverse(random_luts):
    presets, luts = random_luts
    assert len({p.name for p in presets}) == N_RANDOM
    distances = mean_lut_distances(luts)
    assert distances.min() > 0.015  # no two seeds give near-identical grades (≈ 4/255 on average)
    assert np.median(distances) > 0.05
    identity = Lut3D.identity(33).table
    assert min(np.abs(lut.table - identity).mean() for lut in luts) > 0.015  # every draw visibly grades
    assert 0 < sum(p.saturation == -100 for p in presets) < N_RANDOM // 5  # some black and white, not many


def test_random_presets_look_photographic(random_luts):
    failures = {p.name: realism_failures(p, lut) for p, lut in zip(*random_luts)}
    assert {name: f for name, f in failures.items() if f} == {}


# --------------------------------------------------------------------------- built-in library


def test_builtin_library_has_40_uniquely_named_kebab_case_looks(builtin_luts):
    names = [p.name for p in builtin_luts[0]]
    assert len(names) >= 40
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) for name in names)


def test_builtin_looks_are_distinct(builtin_luts):
    # 0.015 mean absolute difference over the whole cube is about 4 levels of 8 bits on
    # average, clearly visible side by side.
    distances = mean_lut_distances(builtin_luts[1])
    assert distances.min() > 0.015


def test_builtin_looks_pass_realism_checks_except_documented_extremes(builtin_luts):
    failures = {p.name: realism_failures(p, lut) for p, lut in zip(*builtin_luts)}
    unexpected = {name: f - INTENTIONALLY_EXTREME.get(name, set()) for name, f in failures.items()}
    assert {name: f for name, f in unexpected.items() if f} == {}
    # and each excuse is still needed
    assert all(failures[name] >= excused for name, excused in INTENTIONALLY_EXTREME.items())


# --------------------------------------------------------------------------- preset sources


def test_builtin_source_draws_library_presets_reproducibly():
    source = preset_source("builtin", lut_size=9)
    assert source.names() == [p.name for p in builtin_presets()]
    first, again = source.draw(np.random.default_rng(3)), source.draw(np.random.default_rng(3))
    assert isinstance(first, AppliedPreset) and first.name == again.name and first.params == again.params
    drawn = {source.draw(np.random.default_rng(s)).name for s in range(40)}
    assert len(drawn) > 15
    rebuilt = preset_from_record(first.name, json.loads(json.dumps(first.params)), lut_size=9)
    np.testing.assert_array_equal(rebuilt.table, first.lut.table)


def test_random_source_records_rebuild_the_same_lut():
    source = preset_source("random", lut_size=9)
    assert source.names() == []
    drawn = source.draw(np.random.default_rng(11))
    assert drawn.name.startswith("random-") and drawn.params == random_preset(np.random.default_rng(11)).to_dict()
    rebuilt = preset_from_record(drawn.name, json.loads(json.dumps(drawn.params)), lut_size=9)
    np.testing.assert_array_equal(rebuilt.table, drawn.lut.table)
    with pytest.raises(ValueError, match="named"):
        preset_from_record("other-name", drawn.params, lut_size=9)


@pytest.fixture
def lut_folder(tmp_path):
    folder = tmp_path / "luts"
    write_cube(Preset(name="warm", temperature=30).to_lut(9), folder / "b-warm.cube")
    write_cube(Preset(name="cool", temperature=-30).to_lut(9), folder / "a-cool.cube")
    write_hald(Preset(name="faded", fade=30).to_lut(16), folder / "c-faded.png")
    (folder / "README.txt").write_text("not a LUT")
    (folder / "._a-cool.cube").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    return folder


def test_folder_source_draws_sorted_files_with_hash_records(lut_folder):
    source = preset_source(lut_folder)
    assert source.names() == ["a-cool.cube", "b-warm.cube", "c-faded.png"]
    drawn = {}
    for seed in range(30):
        applied = source.draw(np.random.default_rng(seed))
        drawn[applied.name] = applied
    assert set(drawn) == set(source.names())
    warm = drawn["b-warm.cube"]
    digest = hashlib.sha256((lut_folder / "b-warm.cube").read_bytes()).hexdigest()
    assert warm.params == {"lut_file": "b-warm.cube", "sha256": digest}
    np.testing.assert_allclose(warm.lut.table, Preset(temperature=30).to_lut(9).table, atol=1e-6)
    np.testing.assert_allclose(drawn["c-faded.png"].lut.table, Preset(fade=30).to_lut(16).table, atol=1e-4)
    assert preset_source(str(lut_folder)).names() == source.names()


def test_folder_records_rebuild_only_from_the_unchanged_file(lut_folder):
    drawn = preset_source(lut_folder).draw(np.random.default_rng(0))
    rebuilt = preset_from_record(drawn.name, json.loads(json.dumps(drawn.params)), lut_dir=lut_folder)
    np.testing.assert_array_equal(rebuilt.table, drawn.lut.table)
    with pytest.raises(ValueError, match="pass lut_dir"):
        preset_from_record(drawn.name, drawn.params)
    write_cube(Preset(contrast=40).to_lut(9), lut_folder / drawn.params["lut_file"])
    with pytest.raises(ValueError, match="has changed"):
        preset_from_record(drawn.name, drawn.params, lut_dir=lut_folder)


def test_folder_with_bad_files_fails_listing_every_one(lut_folder):
    (lut_folder / "broken.cube").write_text("LUT_3D_SIZE 2\n0 0 0\n1 1 1\n")
    (lut_folder / "preview.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="2 unreadable") as error:
        preset_source(lut_folder)
    assert "broken.cube" in str(error.value) and "preview.png" in str(error.value)


def test_empty_folder_and_unknown_specs_are_rejected(tmp_path):
    (tmp_path / "notes.txt").write_text("no LUTs here")
    with pytest.raises(ValueError, match="has no LUT files"):
        preset_source(tmp_path)
    for spec in ("builtins", str(tmp_path / "missing"), str(tmp_path / "notes.txt")):
        with pytest.raises(ValueError, match=re.escape(repr(spec)) + ".*'builtin', 'random'"):
            preset_source(spec)

""".cube and Hald CLUT IO against colour-science's own test LUTs, ImageMagick's Hald layout and bad files."""

import functools
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from seminft_bench.presets.io import read_lut, write_cube, write_hald
from seminft_bench.presets.lut import Lut1D, Lut3D, LutFormatError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # colour warns that matplotlib is missing
    import colour

RESOURCES = Path(colour.__file__).parent / "io" / "luts" / "tests" / "resources"
CUBE_FILES = sorted(RESOURCES.glob("*_cube/*.cube"))
# colour ignores LUT_1D_INPUT_RANGE in a file with only a 3D table; we apply it (see test_eotf_cubes_...)
OUR_DOMAIN_WHERE_COLOUR_DIFFERS = {"resolve_cube/eotf_sRGB_3D.cube": (-1.0, 3.0)}


def resource_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def our_parts(lut):
    """[(kind, table, domain_min, domain_max)] in application order: shaper first, then the table."""
    parts = [] if getattr(lut, "shaper", None) is None else [our_parts(lut.shaper)[0]]
    return parts + [(type(lut).__name__, lut.table, lut.domain_min, lut.domain_max)]


def colour_parts(path: Path):
    """The same view of colour.io.read_LUT's answer; LUT3D.table is indexed [r, g, b] like ours."""
    lut = colour.io.read_LUT(str(path))
    kinds = {"LUT3x1D": "Lut1D", "LUT3D": "Lut3D"}
    luts = list(lut) if isinstance(lut, colour.LUTSequence) else [lut]
    return [(kinds[type(x).__name__], x.table.astype(np.float32), x.domain[0], x.domain[1]) for x in luts]


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def rows_red_fastest(table: np.ndarray) -> str:
    """A cube's rows written out by explicit loops, independent of the reader's reshape."""
    n = table.shape[0]
    return "".join(
        " ".join(repr(float(v)) for v in table[r, g, b]) + "\n" for b in range(n) for g in range(n) for r in range(n)
    )


def random_cube(rng, size, low=-0.5, high=1.5):
    return rng.uniform(low, high, (size, size, size, 3)).astype(np.float32)


# ------------------------------------------------------------- colour-science's .cube files


@pytest.mark.parametrize("path", CUBE_FILES, ids=resource_id)
def test_reads_every_colour_resource_like_colour(path):
    ours, theirs = our_parts(read_lut(path)), colour_parts(path)
    assert [p[0] for p in ours] == [p[0] for p in theirs]
    for (_, table, low, high), (_, their_table, their_low, their_high) in zip(ours, theirs):
        np.testing.assert_array_equal(table, their_table)
        if resource_id(path) in OUR_DOMAIN_WHERE_COLOUR_DIFFERS:
            their_low, their_high = OUR_DOMAIN_WHERE_COLOUR_DIFFERS[resource_id(path)]
        np.testing.assert_allclose(low, their_low, rtol=1e-6)
        np.testing.assert_allclose(high, their_high, rtol=1e-6)


@pytest.mark.parametrize("path", [p for p in CUBE_FILES if p.read_text().startswith("TITLE")], ids=resource_id)
def test_title_is_read_without_quotes(path):
    title = path.read_text().splitlines()[0].split('"')[1]
    assert read_lut(path).title == title


@pytest.mark.parametrize("folder", ["iridas_cube", "resolve_cube"])
def test_eotf_cubes_hold_the_srgb_eotf_over_their_domain(folder):
    """The tables are sRGB's EOTF sampled on the declared domain: checks domain and red-fastest layout at once."""
    lut = read_lut(RESOURCES / folder / "eotf_sRGB_3D.cube")
    expected = colour.models.eotf_sRGB(lut.lattice().astype(np.float64))
    np.testing.assert_allclose(lut.table, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("folder", ["iridas_cube", "resolve_cube"])
def test_unit_cube_is_the_identity_indexed_rgb(folder):
    path = RESOURCES / folder / "Unit.cube"
    lut = read_lut(path)
    np.testing.assert_allclose(lut.table, lut.lattice(), atol=1e-6)
    np.testing.assert_allclose(lut.table[1, 0, 0], [1 / 3, 0, 0], atol=1e-6)  # red is the first index
    np.testing.assert_allclose(colour.io.read_LUT(str(path)).table[1, 0, 0], [1 / 3, 0, 0], atol=1e-6)


# ------------------------------------------------------------------------ dialect details


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("bom", [False, True], ids=["plain", "BOM"])
def test_adobe_file_with_comments_blank_lines_and_domain(tmp_path, newline, bom):
    table = random_cube(np.random.default_rng(1), 3)
    rows = rows_red_fastest(table).splitlines()
    rows[4] += "   # trailing comment"
    rows[7] = rows[7].replace(" ", "\t")
    lines = [
        "# written by hand",
        'TITLE "Warm # not a comment"  # but this is',
        "",
        "DOMAIN_MIN 0 -0.5 0.25",
        "DOMAIN_MAX 1 1.5 2   # per channel",
        "   LUT_3D_SIZE 3",
        *rows[:10],
        "",
        "# a comment inside the table",
        *rows[10:],
        "",
    ]
    text = ("\ufeff" if bom else "") + newline.join(lines)
    lut = read_lut(write(tmp_path / "warm.cube", text.encode("utf-8")))
    assert isinstance(lut, Lut3D) and lut.shaper is None
    assert lut.title == "Warm # not a comment"
    np.testing.assert_array_equal(lut.domain_min, [0, -0.5, 0.25])
    np.testing.assert_array_equal(lut.domain_max, [1, 1.5, 2])
    np.testing.assert_array_equal(lut.table, table)


def resolve_shaper_file(tmp_path, shaper, cube) -> Path:
    text = (
        'TITLE "Log to video"\n'
        f"LUT_1D_SIZE {len(shaper)}\n"
        "LUT_1D_INPUT_RANGE -0.25 2\n"
        f"LUT_3D_SIZE {cube.shape[0]}\n"
        "LUT_3D_INPUT_RANGE 0 1.5\n"
        + "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in shaper)
        + "\n"
        + rows_red_fastest(cube)
    )
    return write(tmp_path / "shaper.cube", text)


def test_resolve_shaper_and_cube_in_one_file(tmp_path):
    rng = np.random.default_rng(2)
    shaper, cube = rng.uniform(0, 1.5, (6, 3)).astype(np.float32), random_cube(rng, 4)
    path = resolve_shaper_file(tmp_path, shaper, cube)
    lut = read_lut(path)
    assert isinstance(lut, Lut3D) and isinstance(lut.shaper, Lut1D)
    assert lut.title == "Log to video"
    np.testing.assert_array_equal(lut.shaper.table, shaper)
    np.testing.assert_array_equal([lut.shaper.domain_min, lut.shaper.domain_max], [[-0.25] * 3, [2] * 3])
    np.testing.assert_array_equal([lut.domain_min, lut.domain_max], [[0] * 3, [1.5] * 3])
    np.testing.assert_array_equal(lut.table, cube)
    for ours, theirs in zip(our_parts(lut), colour_parts(path), strict=True):
        np.testing.assert_array_equal(ours[1], theirs[1])
        np.testing.assert_array_equal(ours[2:], theirs[2:])


# ------------------------------------------------------------------------------ writing


@functools.cache  # built once: the 65³ table is 800k random numbers
def round_trip_luts():
    rng = np.random.default_rng(3)
    extremes = random_cube(rng, 5)
    extremes[0, 0, 0] = [1e-30, -0.0, 3.4e38]
    extremes[4, 3, 2] = [0.1, 1 / 3, -1e-7]
    return {
        "1d-per-channel-domain": Lut1D(rng.normal(size=(7, 3)), [0, -1, 0.5], [1, 2, 0.75], title="curves"),
        "3d-size-2": Lut3D(random_cube(rng, 2)),
        "3d-extremes-domain": Lut3D(extremes, [-0.1, -0.15, -0.2], [1.5, 2, 3], title="sRGB EOTF"),
        "3d-identity-33": Lut3D.identity(33),
        "3d-shaper": Lut3D(
            random_cube(rng, 5), 0.0, 1.5, title="shaped", shaper=Lut1D(rng.uniform(0, 1.5, (9, 3)), -0.25, 2.0)
        ),
        "3d-65": Lut3D(random_cube(rng, 65)),  # the size the numpy fast path exists for
    }


@pytest.mark.parametrize("name", list(round_trip_luts()))
def test_write_cube_round_trips_bit_for_bit_and_colour_agrees(tmp_path, name):
    lut = round_trip_luts()[name]
    path = write_cube(lut, tmp_path / "lut.cube")
    assert path == tmp_path / "lut.cube" and [p.name for p in tmp_path.iterdir()] == ["lut.cube"]
    back = read_lut(path)
    assert type(back) is type(lut) and back.title == lut.title
    for ours, original in zip(our_parts(back), our_parts(lut), strict=True):
        assert ours[0] == original[0]
        for got, want in zip(ours[1:], original[1:]):
            np.testing.assert_array_equal(got, want)
    if lut.size <= 33:  # colour's pure-Python parser is slow on 65³
        for ours, theirs in zip(our_parts(back), colour_parts(path), strict=True):
            np.testing.assert_array_equal(ours[1], theirs[1])


def test_write_cube_with_decimals_rounds(tmp_path):
    lut = Lut3D(random_cube(np.random.default_rng(4), 5))
    back = read_lut(write_cube(lut, tmp_path / "short.cube", decimals=4))
    np.testing.assert_allclose(back.table, lut.table, atol=5.01e-5, rtol=0)
    assert not np.array_equal(back.table, lut.table)


def test_write_cube_overwrites_and_keeps_titles_on_one_line(tmp_path):
    path = write_cube(Lut3D.identity(3), tmp_path / "named.cube")
    lut = Lut3D.identity(2)
    lut.title = 'Kodak "Gold"\nwarm'
    back = read_lut(write_cube(lut, path))
    assert back.title == "Kodak 'Gold' warm" and back.size == 2
    assert [p.name for p in tmp_path.iterdir()] == ["named.cube"]


@pytest.mark.parametrize(
    "lut",
    [
        Lut3D(np.full((2, 2, 2, 3), np.nan, np.float32)),
        Lut3D(Lut3D.identity(2).table, shaper=Lut1D(np.zeros((2, 3)), [0, 0, 0], [1, 2, 1])),
    ],
    ids=["nan-table", "shaper-per-channel-range"],
)
def test_write_cube_refuses_what_a_cube_cannot_hold(tmp_path, lut):
    with pytest.raises(ValueError):
        write_cube(lut, tmp_path / "bad.cube")
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------- bad files

HEAD = 'TITLE "t"\nLUT_3D_SIZE 2\n'  # lines 1-2; table rows start on line 3
ROW = "0.5 0.25 1\n"

BAD_CUBES = [
    pytest.param(HEAD + ROW * 7, 2, "need(s) 8 table rows, found 7", id="too-few-rows"),
    pytest.param(HEAD + ROW * 9, 11, "more table rows than LUT_3D_SIZE 2", id="too-many-rows"),
    pytest.param(HEAD + ROW * 3 + "0 abc 0\n" + ROW * 4, 6, "not a number: 'abc'", id="non-numeric"),
    pytest.param(HEAD + ROW * 3 + "0 0x1F 0\n" + ROW * 4, 6, "not a number: '0x1F'", id="hex"),
    pytest.param(HEAD + ROW + "nan 0 0\n" + ROW * 6, 4, "non-finite", id="nan"),
    pytest.param(HEAD + ROW * 7 + "0 0 -inf\n", 10, "non-finite", id="inf"),
    pytest.param(HEAD + ROW * 4 + "1e39 0 0\n" + ROW * 3, 7, "non-finite", id="beyond-float32"),
    pytest.param(HEAD + ROW * 2 + "0.5 0.5\n" + ROW * 5, 5, "needs 3 values, got 2", id="two-columns"),
    pytest.param(HEAD + ROW * 5 + "0 0 0 0\n" + ROW * 2, 8, "needs 3 values, got 4", id="four-columns"),
    pytest.param('TITLE "t"\n\n' + ROW * 8, 3, "no LUT_1D_SIZE or LUT_3D_SIZE", id="missing-size"),
    pytest.param("LUT_3D_SIZE 1\n" + ROW, 1, "from 2 to 256", id="3d-size-1"),
    pytest.param("# big\nLUT_3D_SIZE 257\n" + ROW, 2, "from 2 to 256", id="3d-size-257"),
    pytest.param("LUT_1D_SIZE 1\n" + ROW, 1, "from 2 to 65536", id="1d-size-1"),
    pytest.param("LUT_1D_SIZE 65537\n" + ROW, 1, "from 2 to 65536", id="1d-size-65537"),
    pytest.param("LUT_3D_SIZE 2.5\n" + ROW * 8, 1, "whole number", id="fractional-size"),
    pytest.param("LUT_3D_SIZE\n" + ROW * 8, 1, "takes 1 value(s), got 0", id="size-without-value"),
    pytest.param(HEAD + "DOMAIN_MIN 0 0 0\nDOMAIN_MAX 1 0 1\n" + ROW * 8, 4, "must be below", id="domain-min-eq-max"),
    pytest.param(HEAD + "DOMAIN_MIN 2 2 2\n" + ROW * 8, 3, "must be below", id="domain-min-above-default-max"),
    pytest.param(HEAD + "LUT_3D_INPUT_RANGE 1 0\n" + ROW * 8, 3, "must be below", id="input-range-reversed"),
    pytest.param(HEAD + "DOMAIN_MIN 0 x 0\n" + ROW * 8, 3, "needs numbers", id="domain-not-numbers"),
    pytest.param(HEAD + "DOMAIN_MAX 1 inf 1\n" + ROW * 8, 3, "must be finite", id="domain-infinite"),
    pytest.param(HEAD + "DOMAIN_MIN 0 0\n" + ROW * 8, 3, "takes 3 value(s), got 2", id="domain-two-values"),
    pytest.param(HEAD + "LUT_IN_VIDEO_RANGE\n" + ROW * 8, 3, "unknown keyword 'LUT_IN_VIDEO_RANGE'", id="unknown-kw"),
    pytest.param(HEAD + ROW * 4 + "LUT_1D_INPUT_RANGE 0 1\n" + ROW * 4, 7, "after the table data", id="kw-after-data"),
    pytest.param(HEAD + "LUT_3D_SIZE 2\n" + ROW * 8, 3, "appears twice (first on line 2)", id="duplicate-keyword"),
    pytest.param(
        HEAD + "DOMAIN_MIN 0 0 0\nLUT_3D_INPUT_RANGE 0 1\n" + ROW * 8, 4, "both set the input domain", id="two-domains"
    ),
    pytest.param(
        "LUT_1D_SIZE 2\nLUT_3D_SIZE 2\nDOMAIN_MAX 2 2 2\n" + ROW * 10, 3, "ambiguous", id="domain-in-shaper-file"
    ),
    pytest.param('TITLE "open\nLUT_3D_SIZE 2\n' + ROW * 8, 1, "no closing quote", id="title-unquoted"),
    pytest.param(b"LUT_3D_SIZE 2\n0 0 0\n\x00\x01\x02\x03", 3, "NUL byte", id="binary-nul"),
    pytest.param(b"LUT_3D_SIZE 2\r\n0 0 0\r\n0 0 \xff\xfe\r\n", 3, "not UTF-8", id="binary-not-utf8"),
]


@pytest.mark.parametrize("content, line, message", BAD_CUBES)
def test_bad_cube_names_file_and_line(tmp_path, content, line, message):
    path = write(tmp_path / "broken.cube", content)
    with pytest.raises(LutFormatError) as caught:
        read_lut(path)
    text = str(caught.value)
    assert text.startswith(f"{path}, line {line}: "), text
    assert message in text
    assert caught.value.line == line


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.cube", b"", "empty file"),
        ("blank.cube", b" \r\n\n\t\n", "empty file"),
        ("comments.cube", b"# nothing but a comment\n", "no LUT_1D_SIZE or LUT_3D_SIZE"),
        ("title-only.cube", b'TITLE "x"\n', "no LUT_1D_SIZE or LUT_3D_SIZE"),
        ("lut.3dl", b"0 64 128\n", "unsupported LUT file type '.3dl'"),
    ],
)
def test_bad_file_without_a_line_names_the_file(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(LutFormatError, match=message) as caught:
        read_lut(path)
    assert str(caught.value).startswith(f"{path}: ") and caught.value.line is None


@pytest.mark.parametrize("name", ["absent.cube", "absent.png"])
def test_missing_file_is_file_not_found(tmp_path, name):
    with pytest.raises(FileNotFoundError):
        read_lut(tmp_path / name)


# ------------------------------------------------------------------------------ Hald CLUTs


def imagemagick_hald_codes(level: int, maximum: int) -> np.ndarray:
    """Identity Hald codes the way ImageMagick's ``hald:`` coder lays them out: pixel i = r + N·g + N²·b."""
    n, side = level * level, level**3
    y, x = np.indices((side, side))
    i = y * side + x
    rgb = np.stack([i % n, i // n % n, i // (n * n)], axis=-1)
    return np.floor(rgb * maximum / (n - 1) + 0.5).astype(np.uint16 if maximum > 255 else np.uint8)


def save_png8(path, codes):
    Image.fromarray(codes).save(path)


def save_png8_rgba(path, codes):
    Image.fromarray(np.dstack([codes, np.full(codes.shape[:2], 7, np.uint8)])).save(path)


def save_tif8_lzw(path, codes):
    Image.fromarray(codes).save(path, compression="tiff_lzw")


def save_tif16(path, codes):
    tifffile.imwrite(path, codes, photometric="rgb", compression="zlib")


HALD_WRITERS = {  # name: (suffix, bits, writer from another library)
    "png8": (".png", 8, save_png8),
    "png8-rgba": (".png", 8, save_png8_rgba),
    "tif8-lzw": (".tif", 8, save_tif8_lzw),
    "tif16": (".tiff", 16, save_tif16),
}


@pytest.mark.parametrize("level", range(2, 9))
@pytest.mark.parametrize("kind", list(HALD_WRITERS))
def test_reads_imagemagick_layout_hald(tmp_path, level, kind):
    suffix, bits, save = HALD_WRITERS[kind]
    maximum = 2**bits - 1
    codes = imagemagick_hald_codes(level, maximum)
    path = tmp_path / f"hald{suffix}"
    save(path, codes)
    lut = read_lut(path)
    n = level * level
    assert isinstance(lut, Lut3D) and lut.size == n and lut.table.dtype == np.float32
    r, g, b = 1, n - 2, n // 2  # a lattice point with three different indices
    pixel = codes.reshape(-1, 3)[r + n * g + n * n * b]
    np.testing.assert_array_equal(lut.table[r, g, b], pixel / np.float32(maximum))
    np.testing.assert_allclose(lut.table, Lut3D.identity(n).table, atol=0.5 / maximum + 1e-6, rtol=0)


@pytest.mark.parametrize("level", range(2, 9))
def test_write_hald_round_trips_as_16_bit_png(tmp_path, level):
    n = level * level
    lut = Lut3D(random_cube(np.random.default_rng(level), n, low=-0.2, high=1.2))
    path = write_hald(lut, tmp_path / "look.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[24:26] == bytes([16, 2])  # 16-bit RGB
    np.testing.assert_allclose(read_lut(path).table, np.clip(lut.table, 0, 1), atol=0.5 / 65535 + 1e-7, rtol=0)


@pytest.mark.parametrize("level", [2, 5, 8])
def test_written_identity_hald_has_imagemagick_layout_for_pillow(tmp_path, level):
    path = write_hald(Lut3D.identity(level * level), tmp_path / "identity.png")
    eight_bit = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255  # Pillow keeps 8 of 16 bits
    expected = imagemagick_hald_codes(level, 65535).astype(np.float32) / 65535
    np.testing.assert_allclose(eight_bit, expected, atol=1.01 / 255, rtol=0)


@pytest.mark.parametrize(
    "lut, name",
    [
        (Lut3D.identity(5), "five.png"),
        (Lut3D.identity(33), "thirty-three.png"),
        (Lut3D.identity(4), "wrong-suffix.tif"),
        (Lut3D(Lut3D.identity(4).table, 0.0, 2.0), "domain.png"),
        (Lut3D(Lut3D.identity(4).table, shaper=Lut1D.identity(8)), "shaper.png"),
    ],
    ids=["size-5", "size-33", "tif", "domain", "shaper"],
)
def test_write_hald_refuses_what_a_hald_cannot_hold(tmp_path, lut, name):
    with pytest.raises(ValueError):
        write_hald(lut, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def png_bytes(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("wide.png", png_bytes(16, 8), "got 16x8"),
        ("ten.png", png_bytes(10, 10), "got 10x10"),
        ("level-one.png", png_bytes(1, 1), "got 1x1"),
        ("garbage.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "cannot decode"),
        ("truncated.png", png_bytes(8, 8)[:40], "cannot decode"),
        ("empty.tif", b"", "cannot decode"),
        ("text.tiff", b"LUT_3D_SIZE 2\n", "cannot decode"),
    ],
)
def test_bad_hald_names_the_file(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(LutFormatError, match=message) as caught:
        read_lut(path)
    assert str(caught.value).startswith(f"{path}: ")

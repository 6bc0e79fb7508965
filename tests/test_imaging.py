import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile, ImageOps
from skimage import data

from seminft_bench.imaging import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    encode_png,
    from_array,
    image_grid,
    read_image,
    to_array,
    write_png,
)

GREY = (1, 2, 3)  # a background no file pixel in these tests has


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand: Pillow cannot write 16-bit colour PNGs."""
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def tiff(pixels: np.ndarray, photometric: str = "rgb", **params) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, photometric=photometric, **params)
    return buffer.getvalue()


def row_image(mode: str, values: list) -> Image.Image:
    image = Image.new(mode, (len(values), 1))
    image.putdata(values)
    return image


def greys(*values: int) -> list[tuple[int, int, int]]:
    return [(v, v, v) for v in values]


def palette_image(transparent_index: int | None) -> Image.Image:
    image = row_image("P", [1, 2])
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


# (image, lossless file format, expected RGB row, background)
MODE_CASES = {
    "1": (row_image("1", [0, 255]), "PNG", [(0, 0, 0), (255, 255, 255)], GREY),
    "L": (row_image("L", [0, 77, 255]), "PNG", greys(0, 77, 255), GREY),
    # 100 * 128/255 + 255 * 127/255 = 177.2 on white
    "LA": (row_image("LA", [(200, 255), (200, 0), (100, 128)]), "PNG", greys(200, 255, 177), None),
    "P": (palette_image(None), "PNG", [(255, 0, 0), (0, 255, 0)], GREY),
    "P+transparency": (palette_image(1), "PNG", [GREY, (0, 255, 0)], GREY),
    "RGBA": (row_image("RGBA", [(10, 20, 30, 255), (10, 20, 30, 0)]), "PNG", [(10, 20, 30), GREY], GREY),
    "CMYK": (
        row_image("CMYK", [(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)]),
        "TIFF",
        [(255, 255, 255), (0, 255, 255), (0, 0, 0)],
        GREY,
    ),
    "YCbCr": (row_image("YCbCr", [(255, 128, 128), (0, 128, 128)]), "TIFF", greys(255, 0), GREY),
    # 16-bit: round(v / 257); 255 / 257 rounds up to 1 where truncation to the high byte gives 0
    "I;16": (row_image("I;16", [0, 255, 32768, 65535]), "PNG", greys(0, 1, 128, 255), GREY),
    "I;16B": (row_image("I;16B", [0, 255, 32768, 65535]), "TIFF", greys(0, 1, 128, 255), GREY),
    "I": (row_image("I", [-5, 32768, 65535, 70000]), "TIFF", greys(0, 128, 255, 255), GREY),
    # float: clip to [0, 1], round(255 v), halves up (127.5 → 128, 2.5 → 3, 63.75 → 64)
    "F": (row_image("F", [0.5, 1.0, 2.0, -1.0, 2.5 / 255, 0.25]), "TIFF", greys(128, 255, 255, 0, 3, 64), GREY),
}


@pytest.mark.parametrize("case", MODE_CASES)
@pytest.mark.parametrize("through_file", [False, True], ids=["pil", "file"])
def test_every_mode_reads_as_rgb_with_correct_values(case, through_file):
    image, fmt, expected, background = MODE_CASES[case]
    src = encode(image, fmt) if through_file else image
    kwargs = {} if background is None else {"background": background}
    result = read_image(src, **kwargs)
    assert result.mode == "RGB"
    assert [tuple(p) for p in np.asarray(result)[0]] == expected


def test_default_background_is_white():
    transparent = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert np.all(to_array(transparent) == 255)


SIXTEEN_BIT = np.array([65535, 32768, 255, 0x80FF, 0], dtype=np.uint16)
SIXTEEN_BIT_AS_8 = [255, 128, 1, 128, 0]


def test_16bit_rgb_png_keeps_full_precision():
    pixels = np.stack([SIXTEEN_BIT, SIXTEEN_BIT[::-1], SIXTEEN_BIT], axis=-1)[None]
    source = png16(pixels)
    assert Image.open(io.BytesIO(source)).mode == "RGB"  # Pillow would keep only the high byte
    rgb = np.asarray(read_image(source))
    assert rgb[0, :, 0].tolist() == SIXTEEN_BIT_AS_8
    assert rgb[0, :, 1].tolist() == SIXTEEN_BIT_AS_8[::-1]
    exact = read_image(source, dtype=np.float32)
    np.testing.assert_allclose(exact, pixels / 65535, atol=1e-7)


@pytest.mark.parametrize("channels", [2, 4])
def test_16bit_png_with_alpha_composites(channels):
    colour = np.repeat(SIXTEEN_BIT[:, None], channels - 1, axis=1)
    opaque = np.concatenate([colour, np.full((5, 1), 65535, np.uint16)], axis=1)
    clear = np.concatenate([colour, np.zeros((5, 1), np.uint16)], axis=1)
    rgb = np.asarray(read_image(png16(np.stack([opaque, clear])), background=GREY))
    assert rgb[0, :, 0].tolist() == SIXTEEN_BIT_AS_8
    assert np.all(rgb[1] == GREY)


def test_16bit_greyscale_png():
    rgb = np.asarray(read_image(png16(SIXTEEN_BIT[None, :, None])))
    assert rgb[0, :, 2].tolist() == SIXTEEN_BIT_AS_8


FLOAT_RGB = np.array([[[0.5, 1.0, 0.0], [2.0, -1.0, 0.25]]], np.float32)
FLOAT_RGB_AS_8 = [[[128, 255, 0], [255, 0, 64]]]


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_float32_rgb_tiff(planar):
    pixels = FLOAT_RGB if planar == "contig" else np.moveaxis(FLOAT_RGB, -1, 0)
    source = tiff(pixels, planarconfig=planar)
    assert np.asarray(read_image(source)).tolist() == FLOAT_RGB_AS_8
    np.testing.assert_array_equal(read_image(source, dtype=np.float32), np.clip(FLOAT_RGB, 0, 1))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_greyscale_tiff(dtype):
    source = tiff(np.array([[0.5, 1.0, -1.0]], dtype), photometric="minisblack")
    assert np.asarray(read_image(source))[0, :, 1].tolist() == [128, 255, 0]


def test_16bit_rgb_tiff_keeps_full_precision():
    pixels = np.stack([SIXTEEN_BIT] * 3, axis=-1)[None]
    rgb = np.asarray(read_image(tiff(pixels)))
    assert rgb[0, :, 0].tolist() == SIXTEEN_BIT_AS_8


def arrow() -> Image.Image:
    """An asymmetric test card: every orientation of it is distinct."""
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:5, :10] = (255, 0, 0)
    pixels[15:, 25:] = (0, 0, 255)
    return Image.fromarray(pixels)


def with_orientation(image: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation):
    source = with_orientation(arrow(), "PNG", orientation)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(source))).convert("RGB")
    np.testing.assert_array_equal(to_array(read_image(source)), np.asarray(upright))


def test_exif_orientation_6_in_jpeg_rotates_clockwise(tmp_path):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(with_orientation(arrow(), "JPEG", 6))
    image = read_image(path)
    assert image.size == (20, 30)
    assert image.getpixel((17, 2))[0] > 200  # the stored top-left red block is now top-right
    assert read_image(image).size == (20, 30)  # the result carries no orientation to apply twice


ASTRONAUT = data.astronaut()


@pytest.mark.parametrize("kind", ["str", "path", "bytes", "pil"])
def test_sources(tmp_path, kind):
    path = tmp_path / "astronaut.png"
    path.write_bytes(encode(Image.fromarray(ASTRONAUT), "PNG"))
    src = {"str": str(path), "path": path, "bytes": path.read_bytes(), "pil": Image.open(path)}[kind]
    np.testing.assert_array_equal(to_array(read_image(src)), ASTRONAUT)
    np.testing.assert_array_equal(read_image(src, dtype=np.uint8), ASTRONAUT)


def test_array_sources():
    np.testing.assert_array_equal(read_image(ASTRONAUT, dtype=np.uint8), ASTRONAUT)
    np.testing.assert_array_equal(read_image(ASTRONAUT / 255.0, dtype=np.uint8), ASTRONAUT)
    grey = ASTRONAUT[..., 0]
    np.testing.assert_array_equal(read_image(grey, dtype=np.uint8), np.stack([grey] * 3, axis=-1))
    rgba = np.dstack([ASTRONAUT, np.full(grey.shape, 255, np.uint8)])
    rgba[:10, :, 3] = 0
    result = read_image(rgba, dtype=np.uint8, background=GREY)
    assert np.all(result[:10] == GREY)
    np.testing.assert_array_equal(result[10:], ASTRONAUT[10:])
    assert read_image(np.array([[np.nan, np.inf, -np.inf]]), dtype=np.uint8)[0, :, 0].tolist() == [0, 255, 0]
    as_float = read_image(ASTRONAUT, dtype=np.dtype("float32"))
    assert as_float.dtype == np.float32 and as_float.max() <= 1.0
    np.testing.assert_allclose(as_float * 255, ASTRONAUT, atol=1e-4)


def test_reading_an_array_does_not_alias_it():
    result = read_image(ASTRONAUT, dtype=np.uint8)
    result[:] = 0
    assert ASTRONAUT.any()


def test_array_of_unsupported_shape_or_type():
    with pytest.raises(ImageReadError, match="<array>.*shape"):
        read_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ImageReadError, match="<array>.*shape"):
        read_image(np.zeros(4, np.uint8))
    with pytest.raises(ImageReadError, match="int64"):
        read_image(np.zeros((4, 4), np.int64))


def test_converters_round_trip():
    cat = data.chelsea()
    image = from_array(cat)
    assert image.mode == "RGB" and image.size == (cat.shape[1], cat.shape[0])
    np.testing.assert_array_equal(to_array(image), cat)
    np.testing.assert_array_equal(to_array(from_array(to_array(image, np.float32))), cat)


def test_size_guard_for_files(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.new("RGB", (40, 30)), "PNG"))
    with pytest.raises(ImageReadError) as error:
        read_image(path, max_pixels=1000)
    message = str(error.value)
    assert str(path) in message and "40x30" in message and "max_pixels=1200" in message
    assert read_image(path, max_pixels=1200).size == (40, 30)
    assert DEFAULT_MAX_PIXELS >= 108_000_000


def test_size_guard_for_arrays_and_deep_tiffs():
    with pytest.raises(ImageReadError, match="<array>: image is 40x30"):
        read_image(np.zeros((30, 40, 3), np.uint8), max_pixels=1000)
    with pytest.raises(ImageReadError, match="scan.tif: image is 40x30"):
        read_image(tiff(np.zeros((30, 40, 3), np.float32)), max_pixels=1000, name="scan.tif")


def test_our_limit_replaces_pillows_and_its_globals_are_restored(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    source = encode(Image.fromarray(ASTRONAUT), "JPEG")
    assert read_image(source).size == (512, 512)
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(source[: len(source) // 2])
    assert Image.MAX_IMAGE_PIXELS == 100 and ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_concurrent_reads_restore_pillow_globals(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    cut = encode(Image.fromarray(ASTRONAUT[:64, :64]), "JPEG")[:-200]

    def read_cut(_: int) -> bool:
        with pytest.raises(ImageReadError):
            read_image(cut)
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(read_cut, range(256)))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


PHOTO = Image.fromarray(ASTRONAUT)


@pytest.mark.parametrize(
    "damaged",
    [
        pytest.param(lambda: encode(PHOTO, "JPEG")[:20000], id="jpeg-half"),
        pytest.param(lambda: encode(PHOTO, "JPEG")[:-2], id="jpeg-no-end"),
        pytest.param(lambda: encode(PHOTO, "PNG")[:200000], id="png-half"),
        pytest.param(lambda: encode(PHOTO, "PNG")[:-20], id="png-no-end"),
        pytest.param(lambda: png16(np.zeros((64, 64, 3), np.uint16))[:-20], id="png16-no-end"),
        pytest.param(lambda: tiff(np.zeros((64, 64, 3), np.float32))[:-5000], id="tiff-float"),
        pytest.param(lambda: bytes(range(256)) * 4, id="garbage"),
        pytest.param(lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, id="png-signature-only"),
        pytest.param(lambda: b"", id="empty"),
    ],
)
def test_unreadable_files_raise_naming_the_file(tmp_path, damaged):
    path = tmp_path / "damaged.img"
    path.write_bytes(damaged())
    with pytest.raises(ImageReadError, match=f"^{path}: "):
        read_image(path)
    with pytest.raises(ImageReadError, match="^<bytes>: "):
        read_image(path.read_bytes())
    with pytest.raises(ImageReadError, match="^upload 7: "):
        read_image(path.read_bytes(), name="upload 7")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png: cannot read file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match=f"{tmp_path}: cannot read file"):
        read_image(tmp_path)
    assert issubclass(ImageReadError, ValueError)


def test_lazily_opened_truncated_pil_image(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(encode(PHOTO, "JPEG")[:20000])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(Image.open(path))


def test_write_png_is_lossless_and_atomic(tmp_path):
    path = tmp_path / "out" / "astronaut.png"
    assert write_png(ASTRONAUT, path) == path
    np.testing.assert_array_equal(read_image(path, dtype=np.uint8), ASTRONAUT)
    write_png(from_array(data.chelsea()), path)  # replaces the file
    np.testing.assert_array_equal(read_image(path, dtype=np.uint8), data.chelsea())
    assert [p.name for p in path.parent.iterdir()] == ["astronaut.png"]
    assert Image.open(path).format == "PNG" and Image.open(path).mode == "RGB"


def test_write_png_normalises_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (3, 2), (0, 0, 0, 0))
    path = write_png(rgba, tmp_path / "flat.png")
    assert Image.open(path).mode == "RGB"
    assert np.all(np.asarray(Image.open(path)) == 255)


def label_strip(sheet: Image.Image, row: int, cell_size: tuple[int, int], label_height: int) -> np.ndarray:
    top = row * (cell_size[1] + label_height) + cell_size[1]
    return np.asarray(sheet)[top : top + label_height]


def test_image_grid_layout_and_labels():
    cells = [ASTRONAUT, data.chelsea(), PHOTO, ASTRONAUT[:, :100], data.coffee()]
    sheet = image_grid(cells, ["astronaut", "chelsea", "", "strip", "coffee"], ncols=3, cell_size=(64, 48))
    assert sheet.size == (3 * 64, 2 * (48 + 24))
    strip = label_strip(sheet, 0, (64, 48), 24)
    assert (strip[:, :64] < 128).any()  # "astronaut" is drawn
    assert (strip[:, 128:] == 255).all()  # the empty label leaves white
    unlabelled = image_grid(cells, cell_size=(64, 48))
    assert unlabelled.size == (3 * 64, 2 * 48)  # near-square default: 3 columns for 5 images


def test_image_grid_letterboxes_and_ellipsises():
    wide = np.zeros((10, 100, 3), np.uint8)
    sheet = image_grid([wide, wide], ["x" * 200, ""], ncols=2, cell_size=(50, 50), label_height=20)
    sheet = np.asarray(sheet)
    assert (sheet[:20, :50] == 255).all() and (sheet[25, :50] == 0).all()  # black band centred
    assert (sheet[50:, 50:] == 255).all()  # the long label stays inside its own cell
    assert (sheet[50:, :50] < 128).any()


def test_image_grid_checks_its_arguments():
    with pytest.raises(ValueError, match="at least one"):
        image_grid([])
    with pytest.raises(ValueError, match="2 labels for 1 images"):
        image_grid([ASTRONAUT], ["a", "b"])


def test_background_none_drops_alpha_and_keeps_stored_colours():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[..., 3] = 7  # nearly transparent: compositing would move the colour towards the background
    assert read_image(rgba, dtype=np.uint8, background=None).tolist() == rgba[..., :3].tolist()
    assert read_image(rgba, dtype=np.uint8)[0, 0].tolist() != [10, 200, 30]


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 13, 3), (64, 33, 3)])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_encode_png_is_lossless_at_every_level_and_size(shape, level):
    pixels = np.random.default_rng(sum(shape) + level).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(pixels, level)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG" and decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), pixels)


def test_sample_photos_are_real_colour_photos_and_unknown_names_are_refused():
    from seminft_bench.imaging import SAMPLE_PHOTOS, sample_photo

    for name in SAMPLE_PHOTOS:
        photo = sample_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3 and min(photo.shape[:2]) >= 256
    with pytest.raises(ValueError, match="unknown sample photo"):
        sample_photo("lena")

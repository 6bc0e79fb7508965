"""Read and write colour LUTs: ``.cube`` text files and Hald CLUT images.

``.cube`` covers Adobe's 1.0 spec (``LUT_1D_SIZE``/``LUT_3D_SIZE``, ``DOMAIN_MIN``/``DOMAIN_MAX``,
``TITLE``) and the Iridas/Resolve dialect (``LUT_1D_INPUT_RANGE``/``LUT_3D_INPUT_RANGE``, and a 1D
shaper followed by a 3D table in one file). LUTs come from anywhere on the web, so every defect
raises :class:`LutFormatError` naming the file and, where there is one, the line. A path that does
not exist raises :class:`FileNotFoundError`, as any other open does.

Hald images (PNG or TIFF, 8 or 16 bit) are decoded by `seminft_bench.imaging.read_image` at their
full precision and written as 16-bit PNGs with PyAV (FFmpeg), since Pillow cannot write 16-bit RGB.
"""

from __future__ import annotations

import io
import math
import os
from itertools import chain
from pathlib import Path

import numpy as np

from seminft_bench.fileio import atomic_write_bytes, atomic_write_text
from seminft_bench.imaging import ImageReadError, read_image
from seminft_bench.presets.lut import Lut1D, Lut3D, LutFormatError

MAX_1D_SIZE = 65536
MAX_3D_SIZE = 256
HALD_SUFFIXES = (".png", ".tif", ".tiff")

# keyword -> number of values it takes; TITLE is handled apart because its text is free-form
KEYWORD_ARITY = {
    "LUT_1D_SIZE": 1,
    "LUT_3D_SIZE": 1,
    "DOMAIN_MIN": 3,
    "DOMAIN_MAX": 3,
    "LUT_1D_INPUT_RANGE": 2,
    "LUT_3D_INPUT_RANGE": 2,
}
SIZE_LIMITS = {"LUT_1D_SIZE": MAX_1D_SIZE, "LUT_3D_SIZE": MAX_3D_SIZE}
DOMAIN_KEYWORDS = ("DOMAIN_MIN", "DOMAIN_MAX", "LUT_1D_INPUT_RANGE", "LUT_3D_INPUT_RANGE")


def read_lut(path: str | os.PathLike) -> Lut1D | Lut3D:
    """Read a ``.cube`` file or a Hald CLUT image (``.png``, ``.tif``, ``.tiff``), chosen by suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".cube":
        return _read_cube(path)
    if suffix in HALD_SUFFIXES:
        return _read_hald(path)
    raise LutFormatError(f"unsupported LUT file type {path.suffix!r}; expected .cube, .png, .tif or .tiff", path)


def write_cube(lut: Lut1D | Lut3D, path: str | os.PathLike, decimals: int | None = None) -> Path:
    """Write ``lut`` as a ``.cube`` file atomically and return its path.

    ``decimals=None`` writes each value as the shortest text that reads back to the same float32,
    so ``read_lut`` returns the table bit for bit; an integer writes that many decimal places
    (smaller files, rounded values). A Lut3D with a shaper is written in Resolve's combined form,
    which stores one input range for all three channels.
    """
    header = [f'TITLE "{_clean_title(lut.title)}"'] if lut.title else []
    if isinstance(lut, Lut1D):
        header += [f"LUT_1D_SIZE {lut.size}", *_domain_lines(lut, decimals)]
        rows = lut.table
    elif lut.shaper is None:
        header += [f"LUT_3D_SIZE {lut.size}", *_domain_lines(lut, decimals)]
        rows = _rows_red_fastest(lut.table)
    else:
        header += [
            f"LUT_1D_SIZE {lut.shaper.size}",
            f"LUT_1D_INPUT_RANGE {_input_range(lut.shaper, decimals)}",
            f"LUT_3D_SIZE {lut.size}",
            f"LUT_3D_INPUT_RANGE {_input_range(lut, decimals)}",
        ]
        rows = np.concatenate([lut.shaper.table, _rows_red_fastest(lut.table)])
    if not np.all(np.isfinite(rows)):
        raise ValueError("a .cube table must be finite; this LUT holds nan or inf")
    return atomic_write_text(path, "\n".join(header + _format_rows(rows, decimals)) + "\n")


def write_hald(lut: Lut3D, path: str | os.PathLike) -> Path:
    """Write ``lut`` as a 16-bit PNG Hald CLUT (values clipped to [0, 1]) atomically and return its path.

    A Hald image of level L holds a cube of size L², so the cube size must be a square (4, 9, 16, ..., 64).
    """
    level = math.isqrt(lut.size)
    if level * level != lut.size:
        raise ValueError(f"a Hald CLUT needs a cube size that is a perfect square (4, 9, 16, ..., 64); got {lut.size}")
    if lut.shaper is not None or np.any(lut.domain_min != 0) or np.any(lut.domain_max != 1):
        raise ValueError("a Hald CLUT maps [0, 1] directly: it has no room for a shaper or another domain")
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"write_hald writes 16-bit PNG; name the file .png, not {Path(path).name!r}")
    side = level**3
    pixels = _rows_red_fastest(lut.table).reshape(side, side, 3)
    codes = np.round(np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)
    return atomic_write_bytes(path, _encode_png16(codes))


# --- .cube reading ---------------------------------------------------------------------------


def _read_cube(path: Path) -> Lut1D | Lut3D:
    lines = _text_lines(path)
    keywords, first_row = _parse_header(lines, path)
    rows, row_lines = _parse_rows(lines, first_row, path)
    return _build_lut(keywords, rows, row_lines, path)


def _text_lines(path: Path) -> list[str]:
    """Decoded lines, numbered as an editor numbers them (``\\n``, ``\\r\\n`` or a lone ``\\r`` ends a line)."""
    data = path.read_bytes()
    if not data.strip():
        raise LutFormatError("empty file", path)
    nul = data.find(b"\0")
    if nul >= 0:
        raise LutFormatError("binary data (NUL byte): not a .cube text file", path, data.count(b"\n", 0, nul) + 1)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise LutFormatError("not UTF-8 text: not a .cube text file", path, line) from None
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _parse_header(lines: list[str], path: Path) -> tuple[dict, int]:
    """``{keyword: (value, line)}`` (TITLE included) and the index of the first table row."""
    keywords = {}
    for index, line in enumerate(lines):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        keyword, number = tokens[0], index + 1
        if _is_number(keyword):
            return keywords, index
        if keyword in keywords:
            raise LutFormatError(f"{keyword} appears twice (first on line {keywords[keyword][1]})", path, number)
        if keyword == "TITLE":
            keywords[keyword] = (_parse_title(line.strip()[len("TITLE") :], path, number), number)
        elif keyword in KEYWORD_ARITY:
            keywords[keyword] = (_keyword_values(keyword, tokens[1:], path, number), number)
        else:
            raise LutFormatError(f"unknown keyword {keyword!r}", path, number)
    return keywords, len(lines)


def _parse_title(text: str, path: Path, line: int) -> str:
    text = text.strip()
    if not text.startswith('"'):
        return text.split("#", 1)[0].strip()
    end = text.find('"', 1)
    if end < 0:
        raise LutFormatError("TITLE has no closing quote", path, line)
    return text[1:end]


def _keyword_values(keyword: str, args: list[str], path: Path, line: int) -> int | np.ndarray:
    """A size as an int within its limits, or domain numbers as finite float32."""
    arity = KEYWORD_ARITY[keyword]
    if len(args) != arity:
        raise LutFormatError(f"{keyword} takes {arity} value(s), got {len(args)}", path, line)
    if keyword in SIZE_LIMITS:
        limit = SIZE_LIMITS[keyword]
        if not args[0].isdigit() or not 2 <= int(args[0]) <= limit:
            raise LutFormatError(f"{keyword} must be a whole number from 2 to {limit}, got {args[0]!r}", path, line)
        return int(args[0])
    if not all(_is_number(arg) for arg in args):
        raise LutFormatError(f"{keyword} needs numbers, got {' '.join(args)!r}", path, line)
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, reported just below
        values = np.array([float(arg) for arg in args], dtype=np.float64).astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise LutFormatError(f"{keyword} must be finite, got {' '.join(args)!r}", path, line)
    return values


def _parse_rows(lines: list[str], start: int, path: Path) -> tuple[np.ndarray, list[int]]:
    """Table rows as ``float32[M, 3]`` plus each row's line number.

    All numbers are converted in one numpy call (a 65³ cube has 824k of them); only when that
    fails are the rows walked again, one by one, to name the first bad line.
    """
    body = lines[start:]
    if any("#" in line for line in body):
        body = [line.split("#", 1)[0] for line in body]
    split = [line.split() for line in body]
    row_lines = [start + 1 + i for i, tokens in enumerate(split) if tokens]
    rows = [tokens for tokens in split if tokens]
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, reported just below
        values = _convert_rows(rows, row_lines, path).astype(np.float32)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise LutFormatError("non-finite value (nan, inf or beyond float32 range)", path, row_lines[bad])
    return values, row_lines


def _convert_rows(rows: list[list[str]], row_lines: list[int], path: Path) -> np.ndarray:
    if all(len(tokens) == 3 for tokens in rows):
        try:
            return np.array(list(chain.from_iterable(rows)), dtype=np.float64).reshape(-1, 3)
        except ValueError:
            pass
    return _convert_rows_one_by_one(rows, row_lines, path)


def _convert_rows_one_by_one(rows: list[list[str]], row_lines: list[int], path: Path) -> np.ndarray:
    """The slow path, taken only when the fast one failed: it names the first bad line."""
    values = []
    for tokens, line in zip(rows, row_lines):
        if tokens[0] in KEYWORD_ARITY or tokens[0] == "TITLE":
            raise LutFormatError(f"keyword {tokens[0]} after the table data; keywords go first", path, line)
        if len(tokens) != 3:
            raise LutFormatError(f"a table row needs 3 values, got {len(tokens)}", path, line)
        for token in tokens:
            if not _is_number(token):
                raise LutFormatError(f"not a number: {token!r}", path, line)
        values.append([float(token) for token in tokens])
    return np.array(values, dtype=np.float64).reshape(-1, 3)


def _build_lut(keywords: dict, rows: np.ndarray, row_lines: list[int], path: Path) -> Lut1D | Lut3D:
    title = keywords["TITLE"][0] if "TITLE" in keywords else ""
    sizes = {k: keywords[k] for k in SIZE_LIMITS if k in keywords}
    if not sizes:
        first_row = row_lines[0] if row_lines else None
        raise LutFormatError("no LUT_1D_SIZE or LUT_3D_SIZE keyword before the table", path, first_row)
    size_1d = sizes["LUT_1D_SIZE"][0] if "LUT_1D_SIZE" in sizes else 0
    size_3d = sizes["LUT_3D_SIZE"][0] if "LUT_3D_SIZE" in sizes else 0
    expected = size_1d + size_3d**3
    declared = " and ".join(f"{k} {n}" for k, (n, _) in sizes.items())
    if len(rows) < expected:
        last_size_line = max(line for _, line in sizes.values())
        raise LutFormatError(f"{declared} need(s) {expected} table rows, found {len(rows)}", path, last_size_line)
    if len(rows) > expected:
        raise LutFormatError(f"more table rows than {declared} allow(s) ({expected})", path, row_lines[expected])
    if not size_3d:
        return Lut1D(rows, *_domain(keywords, DOMAIN_KEYWORDS, path), title=title)
    cube = _table_from_rows(rows[size_1d:], size_3d)
    if not size_1d:
        return Lut3D(cube, *_domain(keywords, DOMAIN_KEYWORDS, path), title=title)
    for keyword in ("DOMAIN_MIN", "DOMAIN_MAX"):
        if keyword in keywords:
            raise LutFormatError(
                f"{keyword} is ambiguous in a file with a 1D shaper and a 3D table; "
                "use LUT_1D_INPUT_RANGE and LUT_3D_INPUT_RANGE",
                path,
                keywords[keyword][1],
            )
    shaper = Lut1D(rows[:size_1d], *_domain(keywords, ("LUT_1D_INPUT_RANGE",), path))
    return Lut3D(cube, *_domain(keywords, ("LUT_3D_INPUT_RANGE",), path), title=title, shaper=shaper)


def _domain(keywords: dict, allowed: tuple[str, ...], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The one input domain the ``allowed`` keywords give, [0, 1] by default.

    A file with a single table may give it by DOMAIN_MIN/MAX or by either INPUT_RANGE (colour 0.3.11
    wrote 3D files with LUT_1D_INPUT_RANGE); giving it twice is an error rather than a guess.
    """
    found = sorted((k for k in allowed if k in keywords), key=lambda k: keywords[k][1])
    low, high = np.zeros(3, np.float32), np.ones(3, np.float32)
    if not found:
        return low, high
    last_line = keywords[found[-1]][1]
    if len(found) > 1 and set(found) != {"DOMAIN_MIN", "DOMAIN_MAX"}:
        raise LutFormatError(f"{' and '.join(found)} both set the input domain; keep one", path, last_line)
    for keyword in found:
        values = keywords[keyword][0]
        if keyword == "DOMAIN_MIN":
            low = values
        elif keyword == "DOMAIN_MAX":
            high = values
        else:
            low, high = np.full(3, values[0]), np.full(3, values[1])
    if np.any(low >= high):
        raise LutFormatError(f"domain minimum {low.tolist()} must be below maximum {high.tolist()}", path, last_line)
    return low, high


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


# --- layout shared by .cube and Hald: red changes fastest, blue slowest ------------------------


def _rows_red_fastest(table: np.ndarray) -> np.ndarray:
    """``table[r, g, b]`` as ``[N³, 3]`` rows in file order."""
    return table.transpose(2, 1, 0, 3).reshape(-1, 3)


def _table_from_rows(rows: np.ndarray, size: int) -> np.ndarray:
    """Inverse of :func:`_rows_red_fastest`."""
    return rows.reshape(size, size, size, 3).transpose(2, 1, 0, 3)


# --- .cube writing -----------------------------------------------------------------------------


def _clean_title(title: str) -> str:
    """The spec quotes the title on one line, so quotes and line breaks cannot survive inside it."""
    return " ".join(title.replace('"', "'").splitlines())


def _format_numbers(values: np.ndarray, decimals: int | None) -> list[str]:
    flat = np.asarray(values, dtype=np.float32).ravel()
    if decimals is None:
        # shortest digits that read back to this float32; unlike str(), immune to np.set_printoptions
        # (importing colour-science switches numpy to legacy printing, which drops digits)
        return [np.format_float_positional(v, trim="-") for v in flat]
    return [f"{v:.{decimals}f}" for v in flat.tolist()]


def _format_rows(rows: np.ndarray, decimals: int | None) -> list[str]:
    cells = iter(_format_numbers(rows, decimals))
    return [f"{r} {g} {b}" for r, g, b in zip(cells, cells, cells)]


def _domain_lines(lut: Lut1D | Lut3D, decimals: int | None) -> list[str]:
    if np.all(lut.domain_min == 0) and np.all(lut.domain_max == 1):
        return []
    return [
        "DOMAIN_MIN " + " ".join(_format_numbers(lut.domain_min, decimals)),
        "DOMAIN_MAX " + " ".join(_format_numbers(lut.domain_max, decimals)),
    ]


def _input_range(lut: Lut1D | Lut3D, decimals: int | None) -> str:
    low, high = lut.domain_min, lut.domain_max
    if np.any(low != low[0]) or np.any(high != high[0]):
        raise ValueError(
            "Resolve's shaper + 3D form has one input range for all channels; "
            f"got {low.tolist()} to {high.tolist()}"
        )
    return " ".join(_format_numbers(np.array([low[0], high[0]]), decimals))


# --- Hald images -------------------------------------------------------------------------------


def _read_hald(path: Path) -> Lut3D:
    """A Hald image of level L is a square of side L³; its pixels, in reading order, walk the L² cube red fastest."""
    if not path.exists():
        raise FileNotFoundError(f"no such LUT file: {path}")
    try:
        pixels = read_image(path, dtype=np.float32, background=None, max_pixels=None)
    except ImageReadError as error:
        raise LutFormatError(f"cannot decode the image: {error}", path) from None
    height, width = pixels.shape[:2]
    level = round(width ** (1 / 3))
    if height != width or level**3 != width or level < 2:
        raise LutFormatError(f"a Hald CLUT is a square of side L³ (8, 27, 64, ...); got {width}x{height}", path)
    return Lut3D(_table_from_rows(pixels.reshape(-1, 3), level * level))


def _encode_png16(pixels: np.ndarray) -> bytes:
    """PNG bytes of a ``uint16[H, W, 3]`` image (Pillow cannot write 16-bit RGB)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="image2pipe") as container:
        stream = container.add_stream("png")
        stream.height, stream.width = pixels.shape[:2]
        stream.pix_fmt = "rgb48be"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb48le")
        for packet in (*stream.encode(frame), *stream.encode()):
            container.mux(packet)
    return buffer.getvalue()

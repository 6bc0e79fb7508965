"""Pair each reference photo with a source that shares its subject but not its grade (paper §3.5).

The RL set is unpaired: the model sees a reference look on different content and must
transfer it. Retrieval proposes sources by CLIP similarity; this module decides which
proposal to keep. A good source is *related* (cosine at least `PairingRules.sim_min`) yet
not the same picture (below `sim_max`, and not a pixel or perceptual-hash duplicate, which
catches resized, re-encoded and regraded copies), not by the same photographer, and graded
visibly differently (`colour_distance`). Quality filters drop photos too small, too
elongated or near-greyscale to show a colour grade.

Defaults, for L2-normalised ViT-B/L CLIP image embeddings: unrelated natural photos usually
score about 0.3-0.5, photos of the same kind of subject 0.6-0.85, and crops, re-encodes or
regrades of one photo above 0.9. Hence ``[0.5, 0.9]``.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from seminft_bench.colorstats import colour_distance, colour_features, mean_chroma
from seminft_bench.fileio import atomic_write_bytes
from seminft_bench.imaging import ImageReadError, read_image
from seminft_bench.pipelines.executors import run_units

DESCRIBE_SIDE = 256  # thumbnail long side for hashing and colour statistics; both look at 64 px or less
GREYSCALE_MAX_CHROMA = 3.0
"""Mean CIELAB chroma (√(a*² + b*²)) below which a photo counts as near-greyscale. Black-and-white
photos saved as RGB measure below 1, toned prints (sepia) and colour photos well above 3."""


@dataclass(frozen=True)
class ImageInfo:
    """What pairing needs to know about one photo, from a single decode."""

    path: str
    width: int
    height: int
    phash: int  # 64-bit DCT perceptual hash (imagehash.phash, hash_size=8)
    colour: np.ndarray  # `colour_features` vector, float32 [39]
    greyscale: bool  # mean chroma below `GREYSCALE_MAX_CHROMA`
    author: str | None = None


@dataclass(frozen=True)
class PairingRules:
    """Which retrieved source may be paired with a reference (see the module docstring)."""

    sim_min: float = 0.5
    sim_max: float = 0.9
    min_color_distance: float = 0.15
    """On `colour_distance`: a light white-balance shift of one photo moves it about 0.07-0.1,
    a distinctive look (teal-orange, film emulations) 0.2-0.8, black-and-white about 0.75."""
    max_source_reuse: int = 1
    min_side: int = 256
    max_aspect: float = 3.0
    reject_greyscale: bool = True
    phash_max_distance: int = 6  # Hamming distance at or below which two photos are duplicates


@dataclass(frozen=True)
class Pair:
    """A kept pair: indices into the reference and source infos, with the scores that admitted it."""

    reference: int
    source: int
    clip_similarity: float
    color_distance: float


def describe_images(
    paths: Sequence[str],
    root: Path | None = None,
    authors: Mapping[str, str] | None = None,
    workers: int = 1,
    cache_dir: Path | None = None,
) -> tuple[list[ImageInfo], list[dict]]:
    """Decode each image once into an `ImageInfo` (in ``paths`` order), or an ``unreadable`` rejection.

    ``paths`` are kept as given and resolved against ``root`` when relative; ``authors`` maps a
    path as given to its photographer. ``workers > 1`` decodes in that many processes. Decoding
    a large pool takes hours, so with ``cache_dir`` what was learnt about each file (its facts,
    or why it is unreadable) is kept there under the file's absolute path, size and modification
    time, in parts written as they fill: a later call, even after a killed one, decodes only
    files it has not seen unchanged.
    """
    authors = authors or {}
    files = [_file_identity(Path(root or "") / path) for path in paths]
    known = read_descriptions(cache_dir) if cache_dir else {}
    todo = [(index, path) for index, (path, file) in enumerate(zip(paths, files)) if file not in known]
    results, unsaved = {}, []
    for index, result in run_units(_describe_one, todo, workers=workers, shared=(root,)):
        results[index] = result
        if cache_dir and files[index] is not None:
            unsaved.append((files[index], result))
            if len(unsaved) == DESCRIPTION_PART_SIZE:
                write_descriptions(cache_dir, unsaved)
                unsaved = []
    if unsaved:
        write_descriptions(cache_dir, unsaved)
    infos, rejections = [], []
    for index, path in enumerate(paths):
        result = results[index] if index in results else known[files[index]]
        if isinstance(result, str):
            rejections.append({"path": path, "reason": "unreadable", "detail": result})
        else:
            infos.append(replace(result, path=path, author=authors.get(path)))
    return infos, rejections


def _describe_one(unit: tuple[int, str], root: Path | None) -> tuple[int, ImageInfo | str]:
    """The facts of one image (author left unset), or why it cannot be read."""
    import imagehash

    index, path = unit
    try:
        image = read_image(Path(root or "") / path, name=path)
    except ImageReadError as e:
        return index, str(e).removeprefix(f"{path}: ")
    width, height = image.size
    image.thumbnail((DESCRIBE_SIDE, DESCRIBE_SIDE), Image.Resampling.BOX)
    pixels = np.asarray(image)
    info = ImageInfo(
        path=path,
        width=width,
        height=height,
        phash=int(str(imagehash.phash(image, hash_size=8)), 16),
        colour=colour_features([pixels])[0],
        greyscale=mean_chroma(pixels) < GREYSCALE_MAX_CHROMA,
    )
    return index, info


def quality_problem(info: ImageInfo, rules: PairingRules) -> str | None:
    """Why a photo cannot show a grade well (``too_small``, ``bad_aspect``, ``greyscale``), or None."""
    if min(info.width, info.height) < rules.min_side:
        return "too_small"
    if max(info.width, info.height) > rules.max_aspect * min(info.width, info.height):
        return "bad_aspect"
    if rules.reject_greyscale and info.greyscale:
        return "greyscale"
    return None


def is_duplicate(a: ImageInfo, b: ImageInfo, rules: PairingRules) -> bool:
    """Same picture: perceptual hashes within `phash_max_distance` bits, or same size and colour statistics."""
    if (a.phash ^ b.phash).bit_count() <= rules.phash_max_distance:
        return True
    return (a.width, a.height) == (b.width, b.height) and np.array_equal(a.colour, b.colour)


def pair_references(
    reference_infos: Sequence[ImageInfo],
    source_infos: Sequence[ImageInfo],
    neighbours: np.ndarray,
    similarities: np.ndarray,
    rules: PairingRules,
) -> tuple[list[Pair], list[dict]]:
    """Keep for each reference the most similar acceptable source among its retrieved neighbours.

    ``neighbours`` and ``similarities`` are ``[R, k]`` from searching each reference embedding
    among the source embeddings, best first, ``-1`` where fewer than k were found. References
    are taken in order, so with a reuse limit earlier references get first pick and the result
    depends on the inputs only. A reference that fails `quality_problem` is rejected with that
    reason; one with no acceptable neighbour as ``unpaired``, its detail counting why each
    candidate failed.
    """
    if len(neighbours) != len(reference_infos) or np.shape(similarities) != np.shape(neighbours):
        raise ValueError(
            f"neighbours {np.shape(neighbours)} and similarities {np.shape(similarities)} "
            f"must both have one row per reference ({len(reference_infos)})"
        )
    uses: Counter[int] = Counter()
    pairs, rejections = [], []
    for index, reference in enumerate(reference_infos):
        if problem := quality_problem(reference, rules):
            rejections.append({"path": reference.path, "reason": problem, "detail": _quality_detail(reference)})
            continue
        failures: Counter[str] = Counter()
        for source_index, similarity in zip(neighbours[index].tolist(), similarities[index].tolist()):
            if source_index < 0:
                continue
            source = source_infos[source_index]
            distance = colour_distance(reference.colour, source.colour)
            failure = _candidate_failure(reference, source, similarity, distance, uses[source_index], rules)
            if failure:
                failures[failure] += 1
                continue
            uses[source_index] += 1
            pairs.append(Pair(index, source_index, float(similarity), distance))
            break
        else:
            detail = ", ".join(f"{reason}={count}" for reason, count in failures.items()) or "no neighbours"
            rejections.append({"path": reference.path, "reason": "unpaired", "detail": detail})
    return pairs, rejections


def _candidate_failure(
    reference: ImageInfo, source: ImageInfo, similarity: float, distance: float, uses: int, rules: PairingRules
) -> str | None:
    """The first rule a candidate source breaks, as a short code, or None when it is acceptable."""
    if source.path == reference.path:
        return "same_image"
    if similarity < rules.sim_min:
        return "similarity_below_min"
    if similarity > rules.sim_max:
        return "similarity_above_max"
    if is_duplicate(reference, source, rules):
        return "duplicate"
    if reference.author is not None and reference.author == source.author:
        return "same_author"
    if problem := quality_problem(source, rules):
        return f"source_{problem}"
    if distance < rules.min_color_distance:
        return "colour_too_close"
    if uses >= rules.max_source_reuse:
        return "source_reused"
    return None


def _quality_detail(info: ImageInfo) -> str:
    return f"{info.width}x{info.height}" + (", near-greyscale" if info.greyscale else "")


# --------------------------------------------------------------------------- description cache

FileIdentity = tuple[str, int, int]
"""(absolute path, size in bytes, modification time in ns): a file whose identity is unchanged
is assumed unchanged, as make and rsync assume."""

DESCRIPTION_PART_SIZE = 10_000
"""Descriptions per cache part: a killed run loses at most this many (minutes of decoding)."""

_DESCRIPTION_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("phash", pa.uint64()),
        ("colour", pa.list_(pa.float32())),
        ("greyscale", pa.bool_()),
        ("unreadable", pa.string()),  # why the file cannot be read; the other facts are then null
    ]
)


def _file_identity(path: Path) -> FileIdentity | None:
    """None when the file cannot even be listed: it is then described (and rejected) every time."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns


def read_descriptions(cache_dir: Path) -> dict[FileIdentity, ImageInfo | str]:
    """Every description in ``cache_dir``'s parts: the facts (``path`` the absolute file), or the
    reason the file is unreadable."""
    known: dict[FileIdentity, ImageInfo | str] = {}
    for part in Path(cache_dir).glob("part_*.parquet"):
        for row in pq.read_table(part).to_pylist():
            identity = (row["file"], row["size"], row["mtime_ns"])
            if row["unreadable"] is not None:
                known[identity] = row["unreadable"]
            else:
                colour = np.asarray(row["colour"], np.float32)
                known[identity] = ImageInfo(row["file"], row["width"], row["height"], row["phash"], colour, row["greyscale"])
    return known


def write_descriptions(cache_dir: Path, described: list[tuple[FileIdentity, ImageInfo | str]]) -> Path:
    """Add ``described`` to the cache as its next part, written atomically."""
    rows = []
    for (file, size, mtime_ns), result in described:
        row = {"file": file, "size": size, "mtime_ns": mtime_ns}
        if isinstance(result, str):
            row["unreadable"] = result
        else:
            row.update(
                width=result.width, height=result.height, phash=result.phash,
                colour=result.colour.tolist(), greyscale=result.greyscale,
            )
        rows.append(row)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=_DESCRIPTION_SCHEMA), buffer)
    number = max((int(part.stem.removeprefix("part_")) for part in Path(cache_dir).glob("part_*.parquet")), default=-1) + 1
    return atomic_write_bytes(Path(cache_dir) / f"part_{number:05d}.parquet", buffer.getvalue())

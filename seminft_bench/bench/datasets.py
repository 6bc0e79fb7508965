"""Evaluation sets (paper §4) from every place they live, checked once when loaded.

`load_bench_set(spec)` takes one of these specs:

- ``demo``: eight photos bundled with scikit-image, at most 256 px, each graded with
  a built-in preset P: source = the photo, reference = P(the next photo),
  target = P(the photo). Made offline in a few seconds; the default set.
- ``pst50-paired:ROOT`` and ``pst50-unpaired:ROOT``: SA-LUT's PST50 benchmark in its
  published layout (``content_709/``, ``paired_style/``, ``paired_gt/``,
  ``unpaired_style/``, files ``1.png`` to ``50.png``). Paired: source
  ``content_709/k``, reference ``paired_style/k``, target ``paired_gt/k``. Unpaired:
  source ``content_709/k``, reference ``unpaired_style/k``, no target; the published
  ``unpaired_style/`` holds 51 images and the one without a content image is not
  used (the k-to-k pairing is our reading of "numbered for easy pairing").
  A bare PST50 ROOT is refused, since only the spec says which of the two is meant.
- ``ROOT``, holding either Hugging Face Parquet shards ``data/{split}-*.parquet``
  (``seminft-data build-coldstart`` / ``build-rl``, or any dataset with ``id``,
  ``source``, ``reference`` and optionally ``target`` image columns), or the folders
  ``source/``, ``reference/`` and optionally ``target/`` with images matched by stem.

ROOT is a folder or, when no such folder exists, a Hub dataset id (``owner/name``)
read from the local Hugging Face cache only: nothing is downloaded. Keywords win over
same-named folders; write ``./demo`` for a folder called demo.

Parquet shards are read with pyarrow, not ``datasets.load_dataset``: its cache keys
local folders loosely and can serve a stale copy of another folder of the same name.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from seminft_bench.bench.samples import ROLES, BenchSet, Sample, Skipped
from seminft_bench.imaging import (
    IMAGE_SUFFIXES,
    SAMPLE_PHOTOS,
    ImageReadError,
    ImageSource,
    encode_png,
    read_image,
    sample_photo,
)
from seminft_bench.presets import Lut1D, Lut3D, Preset, apply_lut, builtin_presets, preset_from_record

VARIANTS = {"bw": "sources turned greyscale (colourisation, paper §4.3); targets stay in colour"}
PST50_LAYOUTS = {
    "pst50-paired": {"source": "content_709", "reference": "paired_style", "target": "paired_gt"},
    "pst50-unpaired": {"source": "content_709", "reference": "unpaired_style"},
}
DEMO_SIZE = 256
MAX_LISTED = 20
"""Bad samples named in a load error; the rest are counted."""

_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
_NOT_IN_FILE_NAMES = re.compile(r'[\x00-\x1f/\\:*?"<>|]')  # separators, controls, what Windows refuses
_DECODE_THREADS = min(8, os.cpu_count() or 1)


class BenchSetError(ValueError):
    """A set that cannot be loaded; the message names the set and everything wrong with it."""


@dataclass
class _Draft:
    """A sample as found, before its images are decoded, with the problems seen so far."""

    name: str
    source: ImageSource | None
    reference: ImageSource | None
    target: ImageSource | None = None
    preset: Preset | Lut3D | Lut1D | None = None
    info: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def load_bench_set(
    spec: str | os.PathLike,
    *,
    split: str = "test",
    variant: str | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
    lut_dir: str | os.PathLike | None = None,
    known_good: Callable[[Sample], bool] | None = None,
) -> BenchSet:
    """Load the set ``spec`` names (see the module docstring) and check every image decodes.

    ``split`` picks the split of a Parquet dataset (other layouts have one set and ignore
    it). ``variant`` is None or a key of `VARIANTS`. Bad samples (missing or unreadable
    images, a target whose size is not the source's, duplicate or unsafe names, an
    unusable preset record) fail the load with one message listing them all, or with
    ``skip_bad`` are left out and recorded in ``BenchSet.skipped``. ``limit`` keeps the
    first N samples of the set's order before anything is checked, so the same N are
    meant whatever is broken elsewhere. ``lut_dir`` is the folder of LUT files a
    cold-start set was built from (``--presets DIR``); without it, samples graded with a
    LUT file have no preset.

    ``known_good(sample)`` is true for a sample whose very bytes passed these checks before
    (a rerun's folder records each sample's content fingerprint): its images are not decoded
    again, which was most of a rerun's time. Any other sample, a changed file included, is
    decoded; so are the sources of ``bw``, to grey them.
    """
    if variant is not None and variant not in VARIANTS:
        raise BenchSetError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    if limit is not None and limit < 1:
        raise BenchSetError(f"limit must be at least 1, got {limit}")
    name, drafts = _find(spec, split, limit, Path(lut_dir) if lut_dir is not None else None)
    drafts = drafts[:limit]
    if not drafts:
        raise BenchSetError(f"{name}: the set is empty")
    _check_names(drafts)
    samples, skipped = _checked(drafts, grey=variant == "bw", known_good=known_good)
    if not samples:
        raise BenchSetError(_listing(f"{name}: no usable sample", skipped))
    if skipped and not skip_bad:
        headline = f"{name}: {len(skipped)} of {len(drafts)} samples are bad (--skip-bad leaves them out)"
        raise BenchSetError(_listing(headline, skipped))
    return BenchSet(f"{name}+{variant}" if variant else name, samples, skipped)


def _find(spec: str | os.PathLike, split: str, limit: int | None, lut_dir: Path | None) -> tuple[str, list[_Draft]]:
    """The set's display name and its samples in a stable order."""
    if isinstance(spec, str) and spec == "demo":
        return "demo", _demo_drafts()
    kind, _, rest = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if kind in PST50_LAYOUTS:
        if not rest:
            raise BenchSetError(f"{spec}: name the PST50 folder (or cached Hub dataset), as in {kind}:DIR")
        root, _ = _resolve(rest)
        return kind, _folder_drafts(root, PST50_LAYOUTS[kind])
    root, name = _resolve(os.fspath(spec))
    if any((root / "data").glob("*.parquet")):
        return (name if split == "test" else f"{name}-{split}"), _parquet_drafts(root, split, limit, lut_dir)
    if (root / "source").is_dir():
        layout = {role: role for role in ROLES if role != "target" or (root / role).is_dir()}
        return name, _folder_drafts(root, layout)
    if (root / "content_709").is_dir():
        raise BenchSetError(f"{root} is a PST50 tree: load it as pst50-paired:{root} or pst50-unpaired:{root}")
    raise BenchSetError(
        f"{root} is not an evaluation set: expected data/{{split}}-*.parquet shards (seminft-data build-coldstart or "
        "build-rl), source/ and reference/ (and optionally target/) image folders, or a PST50 tree (pst50-paired:DIR)"
    )


def _resolve(text: str) -> tuple[Path, str]:
    """A folder and its display name: the folder itself, or a Hub dataset's snapshot in the local cache."""
    path = Path(text).expanduser()
    if path.is_dir():
        return path, path.resolve().name
    if path.exists():
        raise BenchSetError(f"{text}: not a folder")
    if not _REPO_ID.fullmatch(text):
        raise BenchSetError(f"{text}: no such folder")
    import huggingface_hub
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        snapshot = huggingface_hub.snapshot_download(text, repo_type="dataset", local_files_only=True)
    except IncompleteSnapshotError as error:  # e.g. only the shards load_dataset fetched: enough to evaluate
        snapshot = error.snapshot_path
    except LocalEntryNotFoundError:
        raise BenchSetError(
            f"{text}: no such folder, and the Hub dataset {text!r} is not in the local Hugging Face cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}); nothing is downloaded here: fetch it first with "
            f"`hf download {text} --repo-type dataset`"
        ) from None
    return Path(snapshot), text.split("/")[1]


# --------------------------------------------------------------------------- layouts


def _parquet_drafts(root: Path, split: str, limit: int | None, lut_dir: Path | None) -> list[_Draft]:
    """Rows of ``split`` in shard order; only the first ``limit`` rows are read."""
    shards = sorted((root / "data").glob(f"{split}-[0-9]*-of-[0-9]*.parquet"))
    if not shards:
        splits = sorted({shard.name.rsplit("-", 3)[0] for shard in (root / "data").glob("*-of-*.parquet")})
        raise BenchSetError(f"{root}: no split {split!r}; its splits: {', '.join(splits) or 'none'}")
    columns = pq.read_schema(shards[0]).names
    missing = [column for column in ("id", "source", "reference") if column not in columns]
    if missing:
        raise BenchSetError(f"{root}: split {split!r} lacks the column(s) {', '.join(missing)}")
    drafts: list[_Draft] = []
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches():
            drafts += [_row_draft(row, "target" in columns, lut_dir) for row in batch.to_pylist()]
            if limit is not None and len(drafts) >= limit:
                return drafts
    return drafts


def _row_draft(row: dict, has_target: bool, lut_dir: Path | None) -> _Draft:
    images = {role: _image_cell(row.get(role)) for role in ROLES}
    draft = _Draft(
        "" if row["id"] is None else str(row["id"]),
        **images,
        info={key: value for key, value in row.items() if key not in ("id", *ROLES)},
    )
    expected = ROLES if has_target else ("source", "reference")
    draft.problems += [f"no {role} image embedded" for role in expected if images[role] is None]
    if row.get("preset") is not None and row.get("preset_params") is not None:
        try:
            draft.preset = _recorded_preset(row["preset"], row["preset_params"], lut_dir)
        except (ValueError, TypeError, OSError) as error:
            draft.problems.append(f"preset {row['preset']!r}: {error}")
    return draft


def _image_cell(cell: Mapping | None) -> bytes | None:
    """A ``datasets.Image`` cell's embedded bytes (a bare path would be relative to where the set was made)."""
    return None if cell is None else cell["bytes"]


def _recorded_preset(name: str, params_json: str, lut_dir: Path | None) -> Preset | Lut3D | Lut1D | None:
    """A builder's preset record as a `Preset`, compiled only when a method uses it.

    Compiling every record to a 33³ LUT up front (`preset_from_record`) would cost
    ~70 ms and 430 kB per sample; LUT-file records do go through it, with its hash check.
    """
    params = json.loads(params_json)
    if isinstance(params, Mapping) and "lut_file" in params:
        return preset_from_record(name, params, lut_dir) if lut_dir is not None else None
    preset = Preset.from_dict(params)
    if preset.name != name:
        raise ValueError(f"its params name {preset.name!r}")
    return preset


def _folder_drafts(root: Path, layout: Mapping[str, str]) -> list[_Draft]:
    """One sample per image in the source folder (natural order: 2 before 10); other roles matched by stem.

    Images in the other folders without a source are not samples and are ignored.
    """
    missing = [f"{folder}/" for folder in layout.values() if not (root / folder).is_dir()]
    if missing:
        raise BenchSetError(f"{root}: no folder {', '.join(missing)}")
    files = {role: _images_by_stem(root / folder) for role, folder in layout.items()}
    drafts = []
    for stem in sorted(files["source"], key=_natural_key):
        draft = _Draft(stem, None, None)
        for role, folder in layout.items():
            found = files[role].get(stem, [])
            if len(found) == 1:
                setattr(draft, role, found[0])
            elif found:
                draft.problems.append(f"{len(found)} {role} images: {', '.join(f'{folder}/{p.name}' for p in found)}")
            else:
                draft.problems.append(f"no {role} image {folder}/{stem}.*")
        drafts.append(draft)
    return drafts


def _images_by_stem(folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file():
            found.setdefault(path.stem, []).append(path)
    return found


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


@lru_cache(maxsize=1)
def _demo_images() -> tuple[tuple[str, bytes, bytes, bytes, Preset], ...]:
    """(name, source, reference, target, preset) per demo photo, PNG-encoded; presets spread over the library."""
    photos = [_fit(sample_photo(name), DEMO_SIZE) for name in SAMPLE_PHOTOS]
    presets = builtin_presets()
    made = []
    for i, (name, photo) in enumerate(zip(SAMPLE_PHOTOS, photos)):
        preset = presets[i * len(presets) // len(photos)]
        lut = preset.to_lut()
        reference = apply_lut(photos[(i + 1) % len(photos)], lut)
        target = apply_lut(photo, lut)
        made.append((f"{name}-{preset.name}", encode_png(photo), encode_png(reference), encode_png(target), preset))
    return tuple(made)


def _demo_drafts() -> list[_Draft]:
    return [_Draft(*images) for images in _demo_images()]


def _fit(photo: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(photo)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image)


# --------------------------------------------------------------------------- checks


def _check_names(drafts: list[_Draft]) -> None:
    """Names become output file names: each must be unique and safe as one."""
    counts = Counter(draft.name for draft in drafts)
    for draft in drafts:
        if not _is_file_name(draft.name):
            draft.problems.append(f"name {draft.name!r} is not safe as a file name")
        if counts[draft.name] > 1:
            draft.problems.append(f"name shared by {counts[draft.name]} samples")


def _is_file_name(name: str) -> bool:
    """Safe as one file name on any system: not hidden, not a path, no trailing dot or space, not too long."""
    if not 0 < len(name) <= 200 or _NOT_IN_FILE_NAMES.search(name):
        return False
    return name[0] not in ". " and name[-1] not in ". "


def _checked(
    drafts: list[_Draft], grey: bool, known_good: Callable[[Sample], bool] | None
) -> tuple[list[Sample], list[Skipped]]:
    """Decode every image once (in threads, pixels dropped at once), but those of samples ``known_good`` vouches
    for, and sort good samples from bad."""

    def check(draft: _Draft) -> tuple[Sample, list[str], bytes | None]:
        sample = Sample(draft.name, draft.source, draft.reference, draft.target, draft.preset, draft.info)
        if not draft.problems and not grey and known_good is not None:
            try:
                if known_good(sample):
                    return sample, [], None
            except OSError:  # a file that cannot be read: the decode says which and why
                pass
        return sample, *_decode(draft, grey)

    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        results = list(pool.map(check, drafts))
    samples, skipped = [], []
    for draft, (sample, decode_problems, grey_source) in zip(drafts, results):
        problems = draft.problems + decode_problems
        if problems:
            skipped.append(Skipped(draft.name, "; ".join(problems)))
        else:  # the very sample ``known_good`` saw; a grey source no longer maps to the target through the preset
            samples.append(replace(sample, source=grey_source, preset=None) if grey else sample)
    return samples, skipped


def _decode(draft: _Draft, grey: bool) -> tuple[list[str], bytes | None]:
    """Problems with the draft's images, and its source as a greyscale PNG when ``grey``."""
    problems, sizes, grey_source = [], {}, None
    for role in ROLES:
        src = getattr(draft, role)
        if src is None:
            continue
        try:
            image = read_image(src, name=None if isinstance(src, Path) else role)
        except ImageReadError as error:
            problems.append(str(error))
            continue
        sizes[role] = image.size
        if role == "source" and grey:
            grey_source = encode_png(image.convert("L"), compress_level=1)
    if "source" in sizes and "target" in sizes and sizes["source"] != sizes["target"]:
        (sw, sh), (tw, th) = sizes["source"], sizes["target"]
        problems.append(f"source is {sw}x{sh} but target is {tw}x{th}")
    return problems, grey_source


def _listing(headline: str, skipped: list[Skipped]) -> str:
    lines = [f"  {item.name}: {item.reason}" for item in skipped[:MAX_LISTED]]
    if len(skipped) > MAX_LISTED:
        lines.append(f"  ... and {len(skipped) - MAX_LISTED} more")
    return "\n".join([headline, *lines])

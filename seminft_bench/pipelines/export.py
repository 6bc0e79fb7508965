"""Hugging Face dataset folders: Parquet shards, a dataset card, and a push to the Hub.

A folder written here loads with ``datasets.load_dataset(DIR)``: each split is
``DIR/data/{split}-NNNNN-of-MMMMM.parquet`` and ``DIR/README.md`` is the card. The
shards are written with pyarrow directly, under the schema ``datasets`` writes itself
(``Features.arrow_schema``, whose "huggingface" metadata carries the features), with a
fixed compression and row-group size, so the same rows in the same order give
byte-identical files: a resumed build can be checked against an uninterrupted one.

A split with no rows writes no shard. ``load_dataset(DIR)`` then returns a
``DatasetDict`` without that split; a folder where every split is empty does not
load at all ("no data files"), which is why `write_card` lists only non-empty splits.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import groupby
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image, ImageDraw, ImageFont

from seminft_bench.fileio import atomic_write_text
from seminft_bench.imaging import write_png

ROW_GROUP_SIZE = 100
"""Rows per Parquet row group: fixed, so the bytes never depend on row sizes; for rows of a few
512-px PNGs it is near ``datasets``' 100 MB target (reading one row decodes its whole group)."""
COMPRESSION = "zstd"
PREVIEW_NAME = "preview.png"
HUB_TIMEOUT_S = 10.0

_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")  # what `datasets` accepts as a split name
_SHARD_GLOB = "{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].parquet"
_SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]


class PushError(RuntimeError):
    """The dataset cannot be pushed (no token, offline, Hub unreachable, nothing to push); nothing was uploaded."""


def write_split(
    out_dir: str | os.PathLike,
    split: str,
    rows: Iterable[Mapping[str, object]],
    features: datasets.Features,
    rows_per_shard: int = 500,
) -> list[Path]:
    """Stream ``rows`` into ``out_dir/data/{split}-NNNNN-of-MMMMM.parquet``; return the shard paths.

    Each row has exactly the columns of ``features``. Image columns take PNG bytes,
    ``{"bytes": ..., "path": None}``, PIL images or arrays; the bytes are always embedded.
    At most one row group of rows is held in memory. Shards are written under hidden
    temporary names and renamed once the shard count is known; shards of this split left
    by an earlier run (other counts, or a killed write) are removed.
    """
    if not _SPLIT_NAME.match(split):
        raise ValueError(f"split name must be letters, digits, '_' or '.', got {split!r}")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    data_dir = Path(out_dir) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for partial in data_dir.glob(f".{split}-*.parquet.partial"):
        partial.unlink()
    group_size = min(ROW_GROUP_SIZE, rows_per_shard)
    partials = []
    for shard, chunks in groupby(_row_groups(rows, rows_per_shard, group_size), key=lambda item: item[0]):
        partials.append(data_dir / f".{split}-{shard:05d}.parquet.partial")
        _write_shard(partials[-1], (chunk for _, chunk in chunks), features, group_size)
    shards = [data_dir / f"{split}-{i:05d}-of-{len(partials):05d}.parquet" for i in range(len(partials))]
    for partial, shard in zip(partials, shards):
        os.replace(partial, shard)
    for stale in set(data_dir.glob(_SHARD_GLOB.format(split=split))) - set(shards):
        stale.unlink()
    return shards


def split_sizes(out_dir: str | os.PathLike) -> dict[str, int]:
    """Rows per split of a folder written by `write_split`, read from the shard footers; train first."""
    sizes: dict[str, int] = {}
    for shard in sorted((Path(out_dir) / "data").glob(_SHARD_GLOB.format(split="*"))):
        split = shard.name.rsplit("-", 3)[0]
        sizes[split] = sizes.get(split, 0) + pq.read_metadata(shard).num_rows
    return dict(sorted(sizes.items(), key=lambda item: (item[0] != "train", item[0])))


def _row_groups(
    rows: Iterable[Mapping[str, object]], rows_per_shard: int, group_size: int
) -> Iterator[tuple[int, list[Mapping[str, object]]]]:
    """(shard index, rows) chunks of at most ``group_size`` rows, none straddling two shards."""
    shard, in_shard, chunk = 0, 0, []
    for row in rows:
        chunk.append(row)
        in_shard += 1
        if in_shard == rows_per_shard or len(chunk) == group_size:
            yield shard, chunk
            chunk = []
            if in_shard == rows_per_shard:
                shard, in_shard = shard + 1, 0
    if chunk:
        yield shard, chunk


def _write_shard(
    path: Path, chunks: Iterable[list[Mapping[str, object]]], features: datasets.Features, group_size: int
) -> None:
    schema = features.arrow_schema
    compression = _column_compression(features)
    with open(path, "wb") as file:
        with pq.ParquetWriter(file, schema, compression=compression) as writer:
            for chunk in chunks:
                writer.write_table(_to_table(chunk, features), row_group_size=group_size)
        file.flush()
        os.fsync(file.fileno())


def _column_compression(features: datasets.Features) -> str | dict[str, str]:
    """Encoded image bytes do not compress further: spend zstd only on the other columns."""
    images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if not images or any(pa.types.is_nested(features.arrow_schema.field(n).type) for n in features if n not in images):
        return COMPRESSION
    return {
        **{name: COMPRESSION for name in features if name not in images},
        **{f"{name}.path": COMPRESSION for name in images},
        **{f"{name}.bytes": "none" for name in images},
    }


def _to_table(rows: list[Mapping[str, object]], features: datasets.Features) -> pa.Table:
    for row in rows:
        if set(row) != set(features):
            missing, extra = sorted(set(features) - set(row)), sorted(set(row) - set(features))
            raise ValueError(f"row columns do not match the features: missing {missing}, unexpected {extra}")
    encoded = [features.encode_example(row) for row in rows]
    table = pa.Table.from_pylist(encoded, schema=features.arrow_schema)
    images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if any(row[name] is not None and row[name]["bytes"] is None for row in encoded for name in images):
        table = datasets.table.embed_table_storage(table)  # images given by path get their bytes inlined
    return table


def write_card(
    out_dir: str | os.PathLike,
    *,
    title: str,
    summary: str,
    license: str,
    sections: Mapping[str, str] | None = None,
    preview: Image.Image | None = None,
    tags: Sequence[str] = (),
    task_categories: Sequence[str] = ("image-to-image",),
) -> Path:
    """Write ``out_dir/README.md``: YAML front matter the Hub reads, then the card in markdown.

    The front matter lists each non-empty split's shards under ``configs`` (so the Hub and
    ``load_dataset`` agree on the splits) and the size category; the body gives the
    summary, rows per split, each of ``sections`` (heading → markdown) and ``preview``,
    saved as ``preview.png``. Images that sections link must sit in ``out_dir`` too
    (`push_dataset` uploads every top-level PNG). Call it after the splits are written.
    """
    out_dir = Path(out_dir)
    sizes = split_sizes(out_dir)
    front: dict[str, object] = {
        "pretty_name": title,
        "license": license,
        "task_categories": list(task_categories),
        "tags": list(tags),
        "size_categories": [_size_category(sum(sizes.values()))],
    }
    if sizes:
        data_files = [{"split": split, "path": f"data/{split}-*.parquet"} for split in sizes]
        front["configs"] = [{"config_name": "default", "data_files": data_files}]
    parts = [f"# {title}", summary.strip(), "## Splits", counter_table(sizes, "split", "rows")]
    for heading, text in (sections or {}).items():
        parts += [f"## {heading}", text.strip()]
    if preview is not None:
        write_png(preview, out_dir / PREVIEW_NAME)
        parts += ["## Preview", f"![preview]({PREVIEW_NAME})"]
    else:
        (out_dir / PREVIEW_NAME).unlink(missing_ok=True)
    text = "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n\n".join(parts)
    return atomic_write_text(out_dir / "README.md", text + "\n")


def _size_category(rows: int) -> str:
    return next((name for limit, name in _SIZE_CATEGORIES if rows < limit), "n>1M")


def counter_table(counts: Mapping[str, int], key_header: str, value_header: str = "count") -> str:
    """A markdown table of ``counts`` (e.g. a ``Counter``), largest first, with each row's share."""
    total = sum(counts.values())
    lines = [f"| {key_header} | {value_header} | share |", "|---|---:|---:|"]
    for key, count in sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))):
        share = f"{100 * count / total:.1f}%" if total else "-"
        cell = str(key).replace("|", r"\|")
        lines.append(f"| {cell} | {count} | {share} |")
    return "\n".join(lines)


def bar_chart(values: Mapping[str, float], title: str = "", bar_width: int = 400) -> Image.Image:
    """Horizontal bars, one per item in the given order, labelled and valued: a plot without matplotlib."""
    if not values:
        raise ValueError("bar_chart needs at least one value")
    font = ImageFont.load_default(size=13)
    row, pad = 20, 8
    label_width = int(max(font.getlength(str(label)) for label in values)) + 2 * pad
    top = row + pad if title else pad
    image = Image.new("RGB", (label_width + bar_width + 80, top + row * len(values) + pad), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((pad, pad), title, fill="black", font=font)
    peak = max(max(values.values()), 0) or 1
    for i, (label, value) in enumerate(values.items()):
        y = top + i * row
        draw.text((label_width - pad, y + row // 2), str(label), fill="black", font=font, anchor="rm")
        length = round(bar_width * max(value, 0) / peak)
        if length:
            draw.rectangle((label_width, y + 3, label_width + length - 1, y + row - 4), fill=(66, 110, 170))
        draw.text((label_width + length + pad, y + row // 2), f"{value:g}", fill="black", font=font, anchor="lm")
    return image


def histogram_chart(
    samples: npt.ArrayLike, bins: int = 20, value_range: tuple[float, float] | None = None, title: str = ""
) -> Image.Image:
    """A histogram of ``samples`` (e.g. similarity scores) drawn by `bar_chart`, one bar per bin."""
    counts, edges = np.histogram(np.asarray(samples, dtype=np.float64), bins=bins, range=value_range)
    labels = [f"{low:.3g} to {high:.3g}" for low, high in zip(edges[:-1], edges[1:])]
    return bar_chart(dict(zip(labels, counts.tolist())), title=title)


def push_dataset(out_dir: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload the dataset with ``datasets``' ``push_to_hub``, then its card; return the dataset's URL.

    Everything that can fail before the upload is checked first, so a failure leaves the
    Hub untouched: the folder holds shards, a token exists (``token``, ``HF_TOKEN`` or the
    saved login), offline mode is off and the Hub answers a ``whoami`` probe within
    `HUB_TIMEOUT_S` seconds. Messages name the endpoint, never the token.
    """
    out_dir = Path(out_dir)
    if not split_sizes(out_dir):
        raise PushError(f"{out_dir}: no dataset shards under data/ to push")
    token = token or huggingface_hub.get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")
    if huggingface_hub.is_offline_mode():
        raise PushError("HF_HUB_OFFLINE is set: unset it to push to the Hugging Face Hub")
    endpoint = huggingface_hub.constants.ENDPOINT
    _check_hub(endpoint, token)
    datasets.load_dataset(str(out_dir)).push_to_hub(repo_id, private=private, token=token)
    api = huggingface_hub.HfApi(endpoint=endpoint, token=token)
    api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=out_dir,
        allow_patterns=["README.md", "*.png"],
        commit_message="Upload dataset card",
    )
    return f"{endpoint}/datasets/{repo_id}"


def _check_hub(endpoint: str, token: str) -> None:
    """Ask the Hub who owns ``token``: proves the Hub is reachable and accepts the token."""
    request = urllib.request.Request(f"{endpoint}/api/whoami-v2", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=HUB_TIMEOUT_S):
            return
    except urllib.error.HTTPError as error:
        reason = "rejected the token" if error.code in (401, 403) else "answered"
        raise PushError(f"the Hugging Face Hub at {endpoint} {reason} (HTTP {error.code}); nothing uploaded") from None
    except (OSError, ValueError) as error:  # no route, refused, DNS, timeout, malformed endpoint
        cause = str(getattr(error, "reason", error)).replace(token, "***")
        raise PushError(f"cannot reach the Hugging Face Hub at {endpoint} ({cause}); nothing uploaded") from None

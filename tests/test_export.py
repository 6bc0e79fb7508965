"""Hugging Face dataset folders: deterministic shards, the card, charts and the push's early failures."""

import io
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import datasets
import huggingface_hub
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from seminft_bench.pipelines.export import (
    PushError,
    bar_chart,
    counter_table,
    histogram_chart,
    push_dataset,
    split_sizes,
    write_card,
    write_split,
)

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "source": datasets.Image(),
        "frame": datasets.Value("int32"),
        "edit": datasets.Value("string"),
    }
)


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _rows(count: int, start: int = 0):
    """A generator, as builders give: PNG bytes and the ``{"bytes", "path"}`` form alternate."""
    for i in range(start, start + count):
        image = _png(i) if i % 2 else {"bytes": _png(i), "path": None}
        yield {"id": f"s{i}", "source": image, "frame": i, "edit": None if i % 3 else f"add a hat {i}"}


def _load(out_dir, tmp_path):
    return datasets.load_dataset(str(out_dir), cache_dir=str(tmp_path / "hf_cache"))


def _file_bytes(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_round_trip_through_load_dataset(tmp_path):
    out = tmp_path / "ds"
    write_split(out, "train", _rows(7), FEATURES, rows_per_shard=3)
    write_split(out, "test", _rows(2, start=7), FEATURES)
    loaded = _load(out, tmp_path)
    assert set(loaded) == {"train", "test"}
    assert loaded["train"].features == FEATURES
    assert loaded["train"]["id"] == [f"s{i}" for i in range(7)]
    assert loaded["test"]["frame"] == [7, 8]
    assert loaded["train"]["edit"][:4] == ["add a hat 0", None, None, "add a hat 3"]
    image = loaded["test"][1]["source"]
    assert isinstance(image, Image.Image)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(_png(8)))))


def test_shard_names_counts_and_row_groups(tmp_path):
    shards = write_split(tmp_path, "train", _rows(250), FEATURES, rows_per_shard=120)
    assert [p.name for p in shards] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert [pq.read_metadata(p).num_rows for p in shards] == [120, 120, 10]
    assert [pq.read_metadata(shards[0]).row_group(i).num_rows for i in range(2)] == [100, 20]
    columns = pq.read_metadata(shards[0]).row_group(0)
    compression = {columns.column(i).path_in_schema: columns.column(i).compression for i in range(columns.num_columns)}
    # Encoded images are stored as they are; everything else is zstd-compressed.
    assert compression == {"id": "ZSTD", "source.bytes": "UNCOMPRESSED", "source.path": "ZSTD", "frame": "ZSTD", "edit": "ZSTD"}
    assert split_sizes(tmp_path) == {"train": 250}
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [p.name for p in shards]  # no temporary left


def test_same_rows_give_byte_identical_files(tmp_path):
    write_split(tmp_path / "a", "train", _rows(9), FEATURES, rows_per_shard=4)
    write_split(tmp_path / "b", "train", list(_rows(9)), FEATURES, rows_per_shard=4)
    first = _file_bytes(tmp_path / "a")
    assert first == _file_bytes(tmp_path / "b")
    write_split(tmp_path / "a", "train", _rows(9), FEATURES, rows_per_shard=4)  # rewrite in place
    assert _file_bytes(tmp_path / "a") == first
    write_split(tmp_path / "b", "train", _rows(9, start=1), FEATURES, rows_per_shard=4)
    assert _file_bytes(tmp_path / "b") != first


def test_rewrite_removes_stale_shards_of_that_split_only(tmp_path):
    data_dir = tmp_path / "data"
    write_split(tmp_path, "train", _rows(7), FEATURES, rows_per_shard=3)
    test_shards = write_split(tmp_path, "test", _rows(2), FEATURES)
    (data_dir / ".train-00000.parquet.partial").write_bytes(b"left by a killed run")
    write_split(tmp_path, "train", _rows(2), FEATURES, rows_per_shard=3)
    names = sorted(p.name for p in data_dir.iterdir())
    assert names == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    assert test_shards[0].exists()


def test_empty_split_writes_no_shard_and_is_absent_when_loaded(tmp_path):
    out = tmp_path / "ds"
    write_split(out, "train", _rows(3), FEATURES)
    write_split(out, "test", _rows(2), FEATURES)
    assert write_split(out, "test", iter(()), FEATURES) == []  # also clears the earlier test shards
    assert split_sizes(out) == {"train": 3}
    assert set(_load(out, tmp_path)) == {"train"}
    write_split(out, "train", [], FEATURES)
    with pytest.raises(FileNotFoundError, match="doesn't contain any data files"):  # every split empty
        _load(out, tmp_path)


def test_bad_rows_and_arguments_are_named(tmp_path):
    row = next(_rows(1))
    with pytest.raises(ValueError, match=r"missing \['edit'\], unexpected \['note'\]"):
        write_split(tmp_path, "train", [{**{k: v for k, v in row.items() if k != "edit"}, "note": 1}], FEATURES)
    with pytest.raises(ValueError, match="split name"):
        write_split(tmp_path, "train-2", [row], FEATURES)
    with pytest.raises(ValueError, match="rows_per_shard"):
        write_split(tmp_path, "train", [row], FEATURES, rows_per_shard=0)


def test_image_path_is_embedded_as_bytes(tmp_path):
    path = tmp_path / "frame.png"
    path.write_bytes(_png(3))
    row = {"id": "p", "source": str(path), "frame": 0, "edit": None}
    shard = write_split(tmp_path / "ds", "train", [row], FEATURES)[0]
    stored = pq.read_table(shard).column("source")[0].as_py()
    assert stored["bytes"] == _png(3)


def _card(out, preview=True):
    return write_card(
        out,
        title="Tiny cold-start",
        summary="Quadruplets for tests.",
        license="cc-by-4.0",
        sections={"Rejections": counter_table({"blurred": 3, "scene cut": 5}, "reason")},
        preview=Image.new("RGB", (32, 16), (200, 30, 30)) if preview else None,
        tags=["preset-transfer"],
    )


def test_card_front_matter_splits_and_preview(tmp_path):
    out = tmp_path / "ds"
    write_split(out, "train", _rows(5), FEATURES)
    write_split(out, "test", _rows(2, start=5), FEATURES)
    text = _card(out).read_text()
    _, front_text, body = text.split("---\n", 2)
    front = yaml.safe_load(front_text)
    assert front["license"] == "cc-by-4.0"
    assert front["task_categories"] == ["image-to-image"]
    assert front["size_categories"] == ["n<1K"]
    assert front["configs"] == [
        {
            "config_name": "default",
            "data_files": [
                {"split": "train", "path": "data/train-*.parquet"},
                {"split": "test", "path": "data/test-*.parquet"},
            ],
        }
    ]
    assert "| train | 5 | 71.4% |" in body and "| test | 2 | 28.6% |" in body
    assert "## Rejections" in body and "| scene cut | 5 | 62.5% |" in body
    assert "![preview](preview.png)" in body
    assert Image.open(out / "preview.png").size == (32, 16)
    loaded = _load(out, tmp_path)  # the card's configs drive load_dataset now
    assert {name: len(split) for name, split in loaded.items()} == {"train": 5, "test": 2}
    _card(out, preview=False)
    assert not (out / "preview.png").exists()


def test_counter_table_orders_largest_first_and_escapes_pipes():
    table = counter_table({"b": 1, "a|x": 3, "c": 1}, "reason", "pairs").splitlines()
    assert table[0] == "| reason | pairs | share |"
    assert table[2:] == ["| a\\|x | 3 | 60.0% |", "| b | 1 | 20.0% |", "| c | 1 | 20.0% |"]


def _bar_lengths(chart: Image.Image) -> list[int]:
    """Length in pixels of each bar, read from the rows where bar colour is found."""
    bar = np.all(np.asarray(chart) == (66, 110, 170), axis=-1)
    rows = np.flatnonzero(bar.any(axis=1))
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    return [int(bar[band[0]].sum()) for band in bands]


def test_bar_chart_draws_proportional_bars():
    chart = bar_chart({"warm-film": 4, "teal": 2, "mono": 0, "matte": 1}, title="presets")
    assert _bar_lengths(chart) == [400, 200, 100]
    png = io.BytesIO()
    chart.save(png, format="PNG")
    assert Image.open(png).size == chart.size
    with pytest.raises(ValueError):
        bar_chart({})


def test_histogram_chart_is_a_bar_per_bin():
    chart = histogram_chart([0.1, 0.12, 0.5, 0.52, 0.55, 0.9], bins=4, value_range=(0, 1), title="similarity")
    bins = {"0 to 0.25": 2, "0.25 to 0.5": 0, "0.5 to 0.75": 3, "0.75 to 1": 1}
    np.testing.assert_array_equal(np.asarray(chart), np.asarray(bar_chart(bins, title="similarity")))
    assert _bar_lengths(chart) == [267, 400, 133]


@pytest.fixture
def no_upload(monkeypatch):
    """Record any attempt to upload; the failures under test must come before one."""
    calls = []
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", lambda *a, **k: calls.append("push_to_hub"))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda *a, **k: calls.append("upload_folder"))
    return calls


@pytest.fixture
def dataset_dir(tmp_path):
    write_split(tmp_path / "ds", "train", _rows(2), FEATURES)
    _card(tmp_path / "ds")
    return tmp_path / "ds"


def test_push_without_token_fails_before_uploading(dataset_dir, tmp_path, monkeypatch, no_upload):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    with pytest.raises(PushError, match="no Hugging Face token.*HF_TOKEN"):
        push_dataset(dataset_dir, "someone/tiny")
    assert no_upload == []


def test_push_offline_fails_before_uploading(dataset_dir, monkeypatch, no_upload):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE"):
        push_dataset(dataset_dir, "someone/tiny", token="hf_notARealToken123")
    assert no_upload == []


def test_push_with_unreachable_hub_names_the_endpoint_not_the_token(dataset_dir, monkeypatch, no_upload):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(PushError) as error:
        push_dataset(dataset_dir, "someone/tiny", token="hf_notARealToken123")
    message = str(error.value)
    assert "cannot reach the Hugging Face Hub at http://127.0.0.1:9" in message
    assert "hf_notARealToken123" not in message and error.value.__cause__ is None
    assert no_upload == []


def test_push_of_a_folder_without_shards_fails(tmp_path, no_upload):
    with pytest.raises(PushError, match="no dataset shards"):
        push_dataset(tmp_path, "someone/tiny", token="hf_notARealToken123")
    assert no_upload == []


class _RejectingHub(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_push_with_a_rejected_token_fails_before_uploading(dataset_dir, monkeypatch, no_upload):
    server = HTTPServer(("127.0.0.1", 0), _RejectingHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    try:
        with pytest.raises(PushError, match=f"Hub at {endpoint} rejected the token \\(HTTP 401\\)") as error:
            push_dataset(dataset_dir, "someone/tiny", token="hf_notARealToken123")
    finally:
        server.shutdown()
    assert "hf_notARealToken123" not in str(error.value)
    assert no_upload == []

"""CLIP embedding cache: clip-retrieval layout, unit vectors, incremental runs, bad inputs."""

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from skimage import data

from seminft_bench.errors import MissingWeightsError
from seminft_bench.imaging import encode_png
from seminft_bench.pipelines.embeddings import (
    embed_images,
    iter_embedding_shards,
    load_clip,
    read_embeddings,
)

MODEL = "ViT-S-32"
"""The smallest built-in open_clip config (ViT-B-32 at half width): quick to build on CPU."""

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="not semantic"):
        model, preprocess = load_clip(MODEL, pretrained=None, device="cpu")
    return model, preprocess


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in PHOTOS:
        path = folder / f"{name}.png"
        path.write_bytes(encode_png(getattr(data, name)()[::4, ::4]))
        paths.append(str(path))
    return paths


class ForwardCounter:
    """Counts images passed through the vision tower, to see what a call actually embedded."""

    def __init__(self, model):
        self.images = 0
        self.handle = model.visual.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.images += inputs[0].shape[0]


def test_layout_unit_norms_and_determinism(clip, photos, tmp_path):
    model, preprocess = clip
    summary = embed_images(photos + [photos[0]], tmp_path, model, preprocess, batch_size=2, num_workers=2, shard_size=3)
    assert summary.embedded == 5 and summary.already_present == 0 and summary.rejections == []
    assert sorted(p.name for p in (tmp_path / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_1.npy"]
    assert sorted(p.name for p in (tmp_path / "metadata").iterdir()) == ["metadata_0.parquet", "metadata_1.parquet"]
    assert pq.read_table(tmp_path / "metadata" / "metadata_1.parquet").column("image_path").to_pylist() == photos[3:]
    paths, vectors = read_embeddings(tmp_path)
    assert paths == photos
    assert vectors.dtype == np.float32 and vectors.shape == (5, model.visual.output_dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])

    copy = tmp_path / "copy.png"
    copy.write_bytes(open(photos[0], "rb").read())
    embed_images([copy], tmp_path / "again", model, preprocess, num_workers=0)
    (_,), (again,) = read_embeddings(tmp_path / "again")
    np.testing.assert_allclose(again, vectors[0], atol=1e-5)


def test_second_run_embeds_only_new_images(clip, photos, tmp_path):
    model, preprocess = clip
    embed_images(photos[:3], tmp_path, model, preprocess, num_workers=0)
    counter = ForwardCounter(model)
    try:
        summary = embed_images(photos, tmp_path, model, preprocess, num_workers=0)
    finally:
        counter.handle.remove()
    assert counter.images == 2
    assert summary.embedded == 2 and summary.already_present == 3
    assert [p.name for p in summary.shards] == ["metadata_1.parquet"]
    paths, vectors = read_embeddings(tmp_path)
    assert paths == photos and len(vectors) == 5


def encode_png16(rgb16):
    """A 16-bit-per-channel RGB PNG (Pillow writes only 8-bit colour PNGs)."""
    codec = av.CodecContext.create("png", "w")
    codec.height, codec.width = rgb16.shape[:2]
    codec.pix_fmt = "rgb48be"
    frame = av.VideoFrame.from_ndarray(rgb16, format="rgb48le").reformat(format="rgb48be")
    return b"".join(bytes(packet) for packet in [*codec.encode(frame), *codec.encode(None)])


def write_bad_images(folder):
    """Files no embedding can come from, by the rejection reason expected, plus odd modes that must be read."""
    png = encode_png(data.coffee()[::8, ::8])
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    Image.new("RGB", (4, 4), (200, 10, 10)).save(folder / "tiny.png")
    Image.fromarray(data.chelsea()[::4, ::4]).convert("CMYK").save(folder / "cmyk.jpg")
    (folder / "deep16.png").write_bytes(encode_png16(data.astronaut()[::8, ::8].astype(np.uint16) * 257))
    rgba = np.dstack([data.rocket()[::8, ::8], np.full(data.rocket()[::8, ::8].shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    unreadable = ["empty.png", "truncated.png", "garbage.jpg", "missing.png"]
    readable = ["cmyk.jpg", "deep16.png", "alpha.png"]
    return [str(folder / n) for n in unreadable], str(folder / "tiny.png"), [str(folder / n) for n in readable]


def test_bad_inputs_are_recorded_and_skipped(clip, tmp_path):
    model, preprocess = clip
    unreadable, tiny, readable = write_bad_images(tmp_path)
    summary = embed_images(unreadable + [tiny] + readable, tmp_path / "emb", model, preprocess, num_workers=2)
    reasons = {r["path"]: r["reason"] for r in summary.rejections}
    assert reasons == {**dict.fromkeys(unreadable, "unreadable"), tiny: "too_small"}
    assert all(r["detail"] for r in summary.rejections)
    paths, vectors = read_embeddings(tmp_path / "emb")
    assert paths == readable
    assert np.isfinite(vectors).all()


def test_nothing_readable_writes_no_shard(clip, tmp_path):
    model, preprocess = clip
    (tmp_path / "empty.png").write_bytes(b"")
    summary = embed_images([tmp_path / "empty.png"], tmp_path / "emb", model, preprocess, num_workers=0)
    assert summary.embedded == 0 and summary.shards == [] and len(summary.rejections) == 1
    with pytest.raises(FileNotFoundError, match="no embeddings"):
        read_embeddings(tmp_path / "emb")


def test_vectors_left_without_metadata_by_a_killed_run_are_replaced(clip, photos, tmp_path):
    model, preprocess = clip
    (tmp_path / "img_emb").mkdir()
    np.save(tmp_path / "img_emb" / "img_emb_0.npy", np.zeros((4, 3), np.float32))
    summary = embed_images(photos[:1], tmp_path, model, preprocess, num_workers=0)
    assert [p.name for p in summary.shards] == ["metadata_0.parquet"]
    paths, vectors = read_embeddings(tmp_path)
    assert paths == photos[:1] and vectors.shape == (1, model.visual.output_dim)


def write_clip_retrieval_shard(folder, number, paths, vectors, **extra_columns):
    """A shard as clip-retrieval writes it: float16 vectors, zero-padded numbers, extra columns."""
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    np.save(folder / "img_emb" / f"img_emb_{number}.npy", vectors)
    pq.write_table(pa.table({"image_path": paths, **extra_columns}), folder / "metadata" / f"metadata_{number}.parquet")


def unit_vectors(rng, n, dim=8):
    v = rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)


def test_reads_a_clip_retrieval_folder_in_shard_order(tmp_path):
    rng = np.random.default_rng(0)
    first, second = unit_vectors(rng, 3), unit_vectors(rng, 2)
    write_clip_retrieval_shard(tmp_path, "10", ["k.jpg", "l.jpg"], second, caption=["k", "l"])
    write_clip_retrieval_shard(tmp_path, "02", ["a.jpg", "b.jpg", "c.jpg"], first, caption=["a", "b", "c"])
    shards = list(iter_embedding_shards(tmp_path))
    assert [paths for paths, _ in shards] == [["a.jpg", "b.jpg", "c.jpg"], ["k.jpg", "l.jpg"]]
    paths, vectors = read_embeddings(tmp_path)
    assert paths == ["a.jpg", "b.jpg", "c.jpg", "k.jpg", "l.jpg"]
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, np.concatenate([first, second]).astype(np.float32))


def test_new_shards_follow_existing_numbers(clip, photos, tmp_path):
    model, preprocess = clip
    write_clip_retrieval_shard(tmp_path, "7", [photos[0]], np.ones((1, model.visual.output_dim), np.float32))
    summary = embed_images(photos[:2], tmp_path, model, preprocess, num_workers=0)
    assert summary.embedded == 1 and [p.name for p in summary.shards] == ["metadata_8.parquet"]


def test_row_count_mismatch_is_an_error(tmp_path):
    rng = np.random.default_rng(1)
    write_clip_retrieval_shard(tmp_path, 0, ["a.jpg", "b.jpg"], unit_vectors(rng, 3))
    with pytest.raises(ValueError, match=r"names 2 images"):
        read_embeddings(tmp_path)


def test_dimension_mismatch_is_an_error(tmp_path):
    rng = np.random.default_rng(2)
    write_clip_retrieval_shard(tmp_path, 0, ["a.jpg"], unit_vectors(rng, 1, dim=8))
    write_clip_retrieval_shard(tmp_path, 1, ["b.jpg"], unit_vectors(rng, 1, dim=4))
    with pytest.raises(ValueError, match="4-dimensional vectors, but earlier shards have 8"):
        read_embeddings(tmp_path)


def test_missing_vectors_or_image_path_column_is_an_error(tmp_path):
    write_clip_retrieval_shard(tmp_path, 0, ["a.jpg"], unit_vectors(np.random.default_rng(3), 1))
    pq.write_table(pa.table({"url": ["a.jpg"]}), tmp_path / "metadata" / "metadata_0.parquet")
    with pytest.raises(ValueError, match="image_path column"):
        read_embeddings(tmp_path)
    (tmp_path / "img_emb" / "img_emb_0.npy").unlink()
    with pytest.raises(FileNotFoundError, match="img_emb_0.npy are missing"):
        read_embeddings(tmp_path)


def test_missing_weights_name_the_tag_and_the_cache(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"ViT-B-32/laion2b_s34b_b79k .*not in the local cache.*--clip-pretrained"):
        load_clip("ViT-B-32", "laion2b_s34b_b79k", device="cpu", cache_dir=tmp_path)
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "ViT-B-32.pt")):
        load_clip("ViT-B-32", "openai", device="cpu", cache_dir=tmp_path)
    with pytest.raises(MissingWeightsError, match="not a file and not a known open_clip tag"):
        load_clip("ViT-B-32", str(tmp_path / "weights.safetensors"), device="cpu")


def test_local_weights_file_is_loaded(clip, tmp_path):
    model, _ = clip
    weights = tmp_path / "clip.pt"
    torch.save(model.state_dict(), weights)
    loaded, _ = load_clip(MODEL, weights, device="cpu")
    assert not loaded.training
    torch.testing.assert_close(loaded.visual.proj, model.visual.proj)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_embeddings_are_fp16_model_and_match_cpu(photos, tmp_path):
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model, preprocess = load_clip(MODEL, None, device="cpu")
    embed_images(photos, tmp_path / "cpu", model, preprocess, num_workers=0)
    weights = tmp_path / "clip.pt"
    torch.save(model.state_dict(), weights)
    gpu_model, _ = load_clip(MODEL, weights, device="cuda")
    assert gpu_model.visual.conv1.weight.dtype == torch.float16
    embed_images(photos, tmp_path / "gpu", gpu_model, preprocess, num_workers=2)
    _, cpu_vectors = read_embeddings(tmp_path / "cpu")
    _, gpu_vectors = read_embeddings(tmp_path / "gpu")
    np.testing.assert_allclose(np.linalg.norm(gpu_vectors, axis=1), 1.0, atol=1e-5)
    assert (np.sum(cpu_vectors * gpu_vectors, axis=1) > 0.99).all()


def test_random_weights_are_the_same_in_every_process():
    """Workers that each build the random-init model must agree, or a pool's shards would not compare."""
    with pytest.warns(UserWarning, match="random weights"):
        first, _ = load_clip("ViT-S-32", None)
    torch.manual_seed(1234)  # the caller's RNG state must not matter
    with pytest.warns(UserWarning, match="random weights"):
        second, _ = load_clip("ViT-S-32", None)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)

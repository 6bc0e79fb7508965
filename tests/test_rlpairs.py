"""The RL pair builder end to end: sample photos, a random-init open_clip, FAISS, pairing, export."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seminft_bench.pipelines import pairing, rlpairs
from seminft_bench.pipelines.embeddings import read_embeddings
from seminft_bench.pipelines.rlpairs import RLConfig, build_rl
from seminft_bench.pipelines.samples import write_sample_photos

# Random CLIP weights put every photo near every other: open the similarity window wide.
LOOSE = dict(clip_model="ViT-S-32", clip_pretrained=None, sim_min=-1.0, sim_max=0.9999, min_side=128, eval_count=3)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_sample_photos(folder, crops_per_photo=2)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@pytest.fixture(scope="module")
def built(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "ds"
    with pytest.warns(UserWarning, match="random weights"):
        summary = build_rl(RLConfig(images=str(photos), out=str(out), **LOOSE))
    return out, summary


def shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


def test_pairs_follow_the_rules(built, load_hf):
    out, summary = built
    ds = load_hf(out)
    rows = [row for split in ds.values() for row in split]
    assert summary.counts["test"] == 3 and len(rows) == sum(summary.counts.values()) > 3
    references = [row["reference_path"] for row in rows]
    assert len(set(references)) == len(references)  # each reference at most once
    sources = [row["source_path"] for row in rows]
    assert len(set(sources)) == len(sources)  # max_source_reuse = 1
    for row in rows:
        assert row["source_path"] != row["reference_path"]
        assert row["color_distance"] >= 0.15 and -1.0 <= row["clip_similarity"] <= 0.9999
        assert row["source"].mode == "RGB" and row["reference"].mode == "RGB"


def test_bad_images_and_card(built):
    out, summary = built
    rejected = [json.loads(line) for line in (out / "rejections.jsonl").read_text().splitlines()]
    assert any(r["path"].endswith("broken.png") and r["reason"] == "unreadable" for r in rejected)
    card = (out / "README.md").read_text()
    assert "recall@10" in card and (out / "similarity.png").exists() and (out / "color_distance.png").exists()
    assert summary.recall == pytest.approx(1.0)  # a pool this small gets exact search


def test_rerun_reuses_embeddings_and_descriptions_and_gives_the_same_bytes(built, photos, tmp_path, monkeypatch):
    out, _ = built
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    described = []
    monkeypatch.setattr(pairing, "_describe_one", lambda unit, root: described.append(unit))
    with pytest.warns(UserWarning, match="random weights"):
        build_rl(RLConfig(images=str(photos), out=str(copy), **LOOSE))
    assert described == []
    assert shard_bytes(copy) == shard_bytes(out)
    assert (copy / "rejections.jsonl").read_bytes() == (out / "rejections.jsonl").read_bytes()


def files_under(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_precomputed_embeddings_skip_the_model(built, photos, tmp_path):
    out, _ = built
    embeddings = out / ".work" / "embeddings"
    before = files_under(embeddings)
    options = dict(LOOSE, clip_pretrained="no-such-tag")  # would fail if the model were loaded
    build_rl(RLConfig(images=str(photos), out=str(tmp_path / "ds"), embeddings=str(embeddings), **options))
    assert shard_bytes(tmp_path / "ds") == shard_bytes(out)
    assert files_under(embeddings) == before  # the user's folder is only read
    assert list((tmp_path / "ds" / ".work" / "descriptions").glob("part_*.parquet"))


def test_the_dataset_does_not_depend_on_how_the_embeddings_are_sharded(built, photos, tmp_path, monkeypatch):
    out, _ = built
    paths, vectors = read_embeddings(out / ".work" / "embeddings")
    shuffled = np.random.default_rng(0).permutation(len(paths))
    for number, rows in enumerate(np.array_split(shuffled, -(-len(paths) // 3))):  # 3 rows a shard, any order
        emb = tmp_path / "emb"
        (emb / "img_emb").mkdir(parents=True, exist_ok=True)
        (emb / "metadata").mkdir(exist_ok=True)
        np.save(emb / "img_emb" / f"img_emb_{number}.npy", vectors[rows])
        pq.write_table(pa.table({"image_path": [paths[i] for i in rows]}), emb / "metadata" / f"metadata_{number}.parquet")
    monkeypatch.setattr(rlpairs, "CHUNK_ROWS", 4)  # index, exact search and search read 4 rows at a time
    build_rl(RLConfig(images=str(photos), out=str(tmp_path / "ds"), embeddings=str(tmp_path / "emb"), **LOOSE))
    assert shard_bytes(tmp_path / "ds") == shard_bytes(out)


def test_listing_with_authors_and_missing_pool(photos, tmp_path):
    from seminft_bench.pipelines.rlpairs import list_pool

    listing = tmp_path / "listing.csv"
    names = sorted(p.name for p in photos.glob("*.png"))[:4]
    listing.write_text("path,author\n" + "".join(f"{photos / n},ann\n" for n in names))
    pool = list_pool(listing)
    assert len(pool.paths) == 4 and set(pool.authors.values()) == {"ann"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        list_pool(tmp_path / "empty")


def test_embedding_on_ray_gives_the_same_pairs(built, photos, tmp_path, load_hf):
    pytest.importorskip("ray")
    out, _ = built
    with pytest.warns(UserWarning, match="random weights"):
        build_rl(RLConfig(images=str(photos), out=str(tmp_path / "ray"), **LOOSE), workers=2, executor="ray")

    def pairs(folder):
        rows = [row for split in load_hf(folder).values() for row in split]
        return {row["id"]: (row["clip_similarity"], row["color_distance"]) for row in rows}

    # One thread per Ray worker sums the ViT's products in another order: same pairs, floats within 1e-5.
    here, there = pairs(out), pairs(tmp_path / "ray")
    assert here.keys() == there.keys()
    differences = [np.abs(np.subtract(here[key], there[key])).max() for key in here]
    assert max(differences) < 1e-5, differences

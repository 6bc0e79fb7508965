"""Retrieval for the RL pair builder: (1) our FAISS index against exact search, (2) embedding throughput.

    .venv/bin/python benchmarks/bench_retrieval.py [--part 1|2|all] [--num-vectors 1000000] [--images 500]

(1) Index: ``--num-vectors`` clustered synthetic unit vectors (Gaussian blobs of
``--spread`` around ``--clusters`` random directions, a stand-in for CLIP embeddings; a
larger spread blurs the clusters and makes retrieval harder) are generated chunk by
chunk from the seed, so the pool is never materialised outside the indexes. The index that
`choose_index` picks is built from those chunks (training + adding timed), its search knob
tuned to recall@10 ≥ ``--target`` on 500 tuning queries, and then timed on 1,000 other
queries (pool vectors plus small noise, so each query lies near the data but is none of
it). The exact baseline is a faiss ``IndexFlatIP`` holding the same vectors, searched with
the same queries and thread count; it also supplies the true neighbours for recall@10.
The target is recall@10 ≥ 0.95 at ≥ 20× exact's queries/s.

(2) Embedding: ``--images`` graded crops of scikit-image's photos embedded by our path
(`embed_images`: parallel decoding, batches, shards on disk) and by a plain loop that
opens, preprocesses and encodes one image at a time, with the same random-init open_clip
ViT-B-32 (no weights can be downloaded here). Target: ours ≥ 3× the plain loop.
"""

import argparse
import time
from pathlib import Path

import faiss
import numpy as np

from seminft_bench.pipelines.retrieval import (
    build_index,
    choose_index,
    measure_recall,
    sample_vectors,
    search,
    tune_recall,
)

K = 10
TARGET_SPEEDUP = 20.0
TUNING_QUERIES = 500
CHUNK = 50_000
QUERY_NOISE = 0.2


def clustered_chunks(num_vectors: int, dim: int, clusters: int, spread: float, seed: int):
    """A callable yielding the pool in float32 chunks; every call yields the same vectors."""
    centres = np.random.default_rng(seed).standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def chunks():
        for number, start in enumerate(range(0, num_vectors, CHUNK)):
            rng = np.random.default_rng([seed, number])
            count = min(CHUNK, num_vectors - start)
            noise = rng.standard_normal((count, dim), dtype=np.float32) * (spread / np.sqrt(dim))
            points = centres[rng.integers(clusters, size=count)] + noise
            yield points / np.linalg.norm(points, axis=1, keepdims=True)

    return chunks


def queries_near(shards, num_vectors: int, count: int, seed: int) -> np.ndarray:
    """Pool vectors moved by a little noise and renormalised."""
    picked = sample_vectors(shards, num_vectors, count, seed)
    rng = np.random.default_rng(seed)
    moved = picked + rng.standard_normal(picked.shape, dtype=np.float32) * (QUERY_NOISE / np.sqrt(picked.shape[1]))
    return np.ascontiguousarray(moved / np.linalg.norm(moved, axis=1, keepdims=True))


def timed(run):
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def bench_index(args: argparse.Namespace) -> None:
    shards = clustered_chunks(args.num_vectors, args.dim, args.clusters, args.spread, args.seed)
    factory = choose_index(args.num_vectors, args.dim, args.memory_budget)
    print(f"pool: {args.num_vectors} x {args.dim} float32 in {args.clusters} clusters of spread {args.spread}; "
          f"{faiss.omp_get_max_threads()} threads; index {factory}")
    tuning_queries = queries_near(shards, args.num_vectors, TUNING_QUERIES, args.seed + 1)
    test_queries = queries_near(shards, args.num_vectors, args.queries, args.seed + 2)

    exact = faiss.IndexFlatIP(args.dim)
    for chunk in shards():
        exact.add(chunk)
    tuning_truth = exact.search(tuning_queries, K)[1]
    (_, exact_ids), exact_seconds = timed(lambda: exact.search(test_queries, K))

    index, build_seconds = timed(lambda: build_index(shards, args.num_vectors, args.dim, factory, seed=args.seed))
    tuning, tune_seconds = timed(lambda: tune_recall(index, tuning_queries, tuning_truth, K, args.target))
    search(index, test_queries[:10], K)  # warm-up
    _, ours_seconds = timed(lambda: search(index, test_queries, K))
    recall = measure_recall(index, test_queries, exact_ids, K)

    exact_rate, ours_rate = args.queries / exact_seconds, args.queries / ours_seconds
    speedup = ours_rate / exact_rate
    print(f"build (train + add)      {build_seconds:8.1f} s   tuning {tune_seconds:.1f} s: "
          f"{tuning.parameter}={tuning.value}, recall@{K} {tuning.recall:.3f} on {TUNING_QUERIES} tuning queries")
    print(f"exact IndexFlatIP        {exact_rate:8.1f} queries/s   recall@{K} 1.000")
    print(f"ours {factory:19s} {ours_rate:8.1f} queries/s   recall@{K} {recall:.3f} on {args.queries} test queries")
    print(f"ours/exact {speedup:.1f}x")
    verdict = "met" if recall >= args.target and speedup >= TARGET_SPEEDUP else "NOT met"
    print(f"target recall@{K} >= {args.target} at >= {TARGET_SPEEDUP:.0f}x exact: {verdict}")


def embedding_throughput(num_images: int, workers: int, batch_size: int) -> None:
    """Part (2): our loader + model path against a plain one-image-at-a-time open_clip loop, same images.

    The plain loop is what a first script does: open_clip's default float32 model, open,
    preprocess and encode one image at a time. Ours is `embed_images` with `load_clip`'s
    precision for this machine; both models hold the same (seeded random) weights, and the
    lowest cosine between the two embeddings of an image is printed beside the speed.
    """
    import tempfile
    import warnings

    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    from seminft_bench.pipelines.embeddings import default_precision, embed_images, load_clip, read_embeddings
    from seminft_bench.pipelines.samples import write_sample_photos

    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "photos"
        crops = -(-num_images // 8)  # write_sample_photos makes 8 photos × crops
        paths = [str(p) for p in write_sample_photos(pool, crops_per_photo=crops)][:num_images]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, preprocess = load_clip("ViT-B-32", None)
            plain_model, _, plain_preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        plain_model.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        plain_model.eval()
        start = time.perf_counter()
        embed_images(paths, Path(tmp) / "emb", model, preprocess, batch_size=batch_size, num_workers=workers, min_side=1)
        ours = time.perf_counter() - start

        plain_vectors = []
        start = time.perf_counter()
        with torch.no_grad():
            for path in paths:  # what a first script does: open, preprocess, encode, one at a time
                features = plain_model.encode_image(plain_preprocess(Image.open(path).convert("RGB")).unsqueeze(0))
                plain_vectors.append(features / features.norm(dim=-1, keepdim=True))
        plain = time.perf_counter() - start
        embedded, vectors = read_embeddings(Path(tmp) / "emb")
        reference = torch.cat(plain_vectors).numpy()[[paths.index(p) for p in embedded]]
        agreement = float(np.min(np.sum(vectors * reference, axis=1)))
    precision = default_precision(torch.device("cpu"))
    print(f"\n(2) embedding {len(paths)} photos, random-init open_clip ViT-B-32 on {torch.get_num_threads()} CPU threads")
    print(f"ours (batch {batch_size}, {workers} decoding workers, {precision}, shards written): {ours:.1f} s = {len(paths) / ours:.1f} images/s")
    print(f"plain one-at-a-time open_clip loop (fp32):                          {plain:.1f} s = {len(paths) / plain:.1f} images/s")
    print(f"lowest cosine between our embedding and the plain loop's, per image: {agreement:.5f}")
    ratio = plain / ours
    print(f"ours / plain speed: {ratio:.2f}× (target ≥ 3×: {'met' if ratio >= 3 else 'not met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--spread", type=float, default=1.0,
                        help="noise norm around each unit centre: 1 puts points at cosine 0.71 from it")
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--target", type=float, default=0.95, help="recall@10 the index is tuned to reach")
    parser.add_argument("--memory-budget", type=int, default=None, help="bytes the index may use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=500, help="(2) photos to embed")
    parser.add_argument("--workers", type=int, default=1, help="(2) decoding workers of our loader (1 leaves the 2 vCPUs here to the model)")
    parser.add_argument("--batch-size", type=int, default=64, help="(2) our batch size (the builder's default)")
    parser.add_argument("--part", choices=("1", "2", "all"), default="all")
    args = parser.parse_args()
    if args.part in ("1", "all"):
        bench_index(args)
    if args.part in ("2", "all"):
        embedding_throughput(args.images, args.workers, args.batch_size)


if __name__ == "__main__":
    main()

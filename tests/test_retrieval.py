import faiss
import numpy as np
import pytest

from seminft_bench.pipelines.retrieval import (
    build_index,
    choose_index,
    exact_search,
    measure_recall,
    sample_vectors,
    search,
    tune_recall,
)

GIB = 2**30


def clustered_unit_vectors(count: int, dim: int, points_seed: int = 0, clusters: int = 50, spread: float = 0.35):
    """Gaussian blobs around fixed random directions, normalised: a stand-in for CLIP embeddings."""
    centres = np.random.default_rng(0).standard_normal((clusters, dim))
    rng = np.random.default_rng(points_seed + 1)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(clusters, size=count)] + spread * rng.standard_normal((count, dim)) / np.sqrt(dim)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


@pytest.fixture(scope="module")
def pool():
    return clustered_unit_vectors(20_000, 64)


@pytest.fixture(scope="module")
def queries(pool):
    return sample_vectors([pool], len(pool), 200, seed=7)


def test_choose_index_follows_size_and_memory():
    assert choose_index(500, 768) == "Flat"
    assert choose_index(9_999, 768) == "Flat"
    assert choose_index(20_000, 768) == "IVF512,Flat"
    assert choose_index(1_000_000, 768) == "IVF4096,Flat"
    assert choose_index(1_000_000, 768, memory_budget_bytes=8 * GIB) == "IVF4096,Flat"
    # 1M x 768 floats need 3 GB flat: a 1 GB budget forces product quantisation
    assert choose_index(1_000_000, 768, memory_budget_bytes=1 * GIB) == "IVF4096,PQ64x8"
    assert choose_index(10_000_000, 768) == "IVF16384,PQ64x8"
    # 10M vectors in 300 MB leave about 25 bytes per vector after the ids and centroids
    assert choose_index(10_000_000, 768, memory_budget_bytes=300_000_000) == "IVF16384,PQ16x8"
    assert choose_index(10_000_000, 100, memory_budget_bytes=300_000_000) == "IVF16384,PQ20x8"


def test_choose_index_rejects_an_impossible_budget():
    with pytest.raises(ValueError, match="fits"):
        choose_index(10_000_000, 768, memory_budget_bytes=10_000_000)


def test_every_choice_is_a_valid_inner_product_factory():
    for num_vectors, budget in [(100, None), (50_000, None), (2_000_000, None), (2_000_000, 100_000_000)]:
        index = faiss.index_factory(96, choose_index(num_vectors, 96, budget), faiss.METRIC_INNER_PRODUCT)
        assert index.metric_type == faiss.METRIC_INNER_PRODUCT


def test_small_pool_is_exact_and_self_is_nearest():
    vectors = clustered_unit_vectors(2_000, 32)
    index = build_index([vectors], len(vectors), 32)
    assert isinstance(index, faiss.IndexFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT
    similarities, ids = search(index, vectors[:50], 5)
    np.testing.assert_array_equal(ids[:, 0], np.arange(50))
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(similarities, axis=1) <= 0)
    assert tune_recall(index, vectors[:50], exact_search([vectors], vectors[:50], 5)[1], k=5).recall == 1.0


def test_exact_search_over_shards_matches_one_flat_index(pool, queries):
    flat = faiss.IndexFlatIP(pool.shape[1])
    flat.add(pool)
    expected_sims, expected_ids = flat.search(queries, 10)
    sims, ids = exact_search([pool[:7_000], pool[7_000:7_003], pool[7_003:]], queries, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(sims, expected_sims, atol=1e-5)


def test_recall_tuning_reaches_the_target_with_ivf(pool, queries):
    index = build_index([pool], len(pool), 64)
    assert faiss.extract_index_ivf(index).nlist == 512
    exact_ids = exact_search([pool], queries, 10)[1]
    index.nprobe = 1
    untuned = measure_recall(index, queries, exact_ids, 10)
    tuning = tune_recall(index, queries, exact_ids, k=10, target=0.95)
    assert untuned < 0.95 <= tuning.recall
    assert tuning.parameter == "nprobe" and index.nprobe == tuning.value < 512
    index.nprobe = tuning.value - 1
    assert measure_recall(index, queries, exact_ids, 10) < 0.95  # the smallest value that reaches it
    # held-out queries (fresh points near the data) reach about the same recall
    held_out = clustered_unit_vectors(200, 64, points_seed=1)
    index.nprobe = tuning.value
    assert measure_recall(index, held_out, exact_search([pool], held_out, 10)[1], 10) >= 0.9


def test_streamed_shards_build_the_same_index_as_one_array(pool, queries):
    def chunks():
        return (pool[i : i + 3_000] for i in range(0, len(pool), 3_000))

    whole = build_index([pool], len(pool), 64, factory="IVF64,Flat", seed=3)
    streamed = build_index(chunks, len(pool), 64, factory="IVF64,Flat", seed=3)
    whole.nprobe = streamed.nprobe = 4
    np.testing.assert_array_equal(search(whole, queries, 10)[1], search(streamed, queries, 10)[1])


def test_pq_index_trains_from_streamed_shards(pool, queries):
    index = build_index(lambda: np.array_split(pool, 4), len(pool), 64, factory="IVF64,PQ16x8")
    assert index.ntotal == len(pool)
    # 16-byte codes blur the close neighbours of a cluster: recall stays modest, far above chance
    tuning = tune_recall(index, queries, exact_search([pool], queries, 10)[1], k=10, target=0.3)
    assert tuning.recall >= 0.3


def test_same_index_with_one_and_two_threads(pool, queries):
    threads = faiss.omp_get_max_threads()
    results = []
    try:
        for count in (1, 2):
            faiss.omp_set_num_threads(count)
            index = build_index([pool], len(pool), 64, factory="IVF128,Flat", seed=5)
            index.nprobe = 8
            results.append(search(index, queries, 10))
    finally:
        faiss.omp_set_num_threads(threads)
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][0], results[1][0])


def test_seed_changes_the_training_sample(pool):
    centroids = []
    for seed in (0, 1):
        index = build_index([pool], len(pool), 64, factory="IVF64,Flat", seed=seed)
        centroids.append(faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, 64))
    assert not np.array_equal(*centroids)


def test_bad_shards_are_refused(pool):
    with pytest.raises(TypeError, match="callable"):
        build_index(iter([pool]), len(pool), 64, factory="IVF64,Flat")
    with pytest.raises(ValueError, match="L2-normalised"):
        build_index([pool * 2], len(pool), 64, factory="Flat")
    with pytest.raises(ValueError, match="shape"):
        build_index([pool[:, :32]], len(pool), 64, factory="Flat")
    with pytest.raises(ValueError, match="announced"):
        build_index([pool], len(pool) + 1, 64, factory="Flat")

"""Pairing rules: related but not duplicate, other author, different grade, limited reuse, quality."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage import data

from seminft_bench.colorstats import colour_distance
from seminft_bench.pipelines import pairing
from seminft_bench.pipelines.pairing import (
    ImageInfo,
    Pair,
    PairingRules,
    describe_images,
    is_duplicate,
    pair_references,
    quality_problem,
)
from seminft_bench.presets import apply_lut, builtin_presets

RULES = PairingRules()


def _info(path, phash=0, shift=0.0, *, width=512, height=512, greyscale=False, author=None) -> ImageInfo:
    """A synthetic photo; ``shift`` moves its colour vector, so distances between infos are known."""
    colour = np.full(39, 0.1, np.float32)
    colour[0] += shift
    return ImageInfo(path, width, height, phash, colour, greyscale, author)


REFERENCE = _info("ref.jpg", phash=0)
FAR_HASH = (1 << 64) - 1  # all 64 bits differ from the reference's hash


def _pair_one(sources, similarities, rules=RULES, reference=REFERENCE):
    neighbours = np.arange(len(sources))[None]
    return pair_references([reference], sources, neighbours, np.asarray([similarities], np.float32), rules)


def test_keeps_the_most_similar_source_in_the_window():
    sources = [_info("dup.jpg", FAR_HASH, 1.0), _info("related.jpg", FAR_HASH, 0.5), _info("other.jpg", FAR_HASH, 1.0)]
    pairs, rejections = _pair_one(sources, [0.97, 0.7, 0.6])
    assert pairs == [Pair(0, 1, pytest.approx(0.7), pytest.approx(0.5))] and rejections == []


def test_unrelated_and_near_duplicate_similarities_leave_a_reference_unpaired():
    sources = [_info("dup.jpg", FAR_HASH, 1.0), _info("unrelated.jpg", FAR_HASH, 1.0)]
    pairs, rejections = _pair_one(sources, [0.95, 0.2])
    assert pairs == []
    assert rejections == [
        {"path": "ref.jpg", "reason": "unpaired", "detail": "similarity_above_max=1, similarity_below_min=1"}
    ]


def test_perceptual_hash_and_pixel_duplicates_are_skipped():
    six_bits, seven_bits = 0b111111, 0b1111111
    sources = [
        _info("regraded.jpg", six_bits, 1.0),
        _info("same-pixels.jpg", FAR_HASH, 0.0),
        _info("distinct.jpg", seven_bits, 1.0),
    ]
    pairs, _ = _pair_one(sources, [0.8, 0.8, 0.8])
    assert [pair.source for pair in pairs] == [2]
    assert is_duplicate(REFERENCE, sources[0], RULES) and is_duplicate(REFERENCE, sources[1], RULES)
    resized = _info("same-colour-other-size.jpg", FAR_HASH, 0.0, width=256, height=256)
    assert not is_duplicate(REFERENCE, resized, RULES)


def test_same_author_is_skipped_only_when_both_are_known():
    reference = _info("ref.jpg", author="ann")
    same, unknown = _info("a.jpg", FAR_HASH, 1.0, author="ann"), _info("b.jpg", FAR_HASH, 1.0)
    pairs, _ = _pair_one([same, unknown], [0.8, 0.7], reference=reference)
    assert [pair.source for pair in pairs] == [1]
    _, rejections = _pair_one([same], [0.8], reference=reference)
    assert rejections[0]["detail"] == "same_author=1"
    pairs, _ = _pair_one([same], [0.8], reference=_info("ref.jpg"))
    assert len(pairs) == 1


def test_colour_distance_threshold_and_stored_value():
    close, graded = _info("close.jpg", FAR_HASH, 0.1), _info("graded.jpg", FAR_HASH, 0.3)
    assert colour_distance(REFERENCE.colour, graded.colour) == pytest.approx(0.3)
    pairs, _ = _pair_one([close, graded], [0.8, 0.7])
    assert [pair.source for pair in pairs] == [1] and pairs[0].color_distance == pytest.approx(0.3)
    pairs, _ = _pair_one([close, graded], [0.8, 0.7], PairingRules(min_color_distance=0.05))
    assert [pair.source for pair in pairs] == [0]


def test_source_reuse_limit_goes_to_earlier_references_first():
    references = [_info("r0.jpg"), _info("r1.jpg"), _info("r2.jpg")]
    sources = [_info("s0.jpg", FAR_HASH, 1.0), _info("s1.jpg", FAR_HASH, 1.0)]
    neighbours, similarities = np.array([[0, 1]] * 3), np.array([[0.8, 0.7]] * 3, np.float32)
    pairs, rejections = pair_references(references, sources, neighbours, similarities, RULES)
    assert [(p.reference, p.source) for p in pairs] == [(0, 0), (1, 1)]
    assert rejections == [{"path": "r2.jpg", "reason": "unpaired", "detail": "source_reused=2"}]
    pairs, _ = pair_references(references, sources, neighbours, similarities, PairingRules(max_source_reuse=2))
    assert [(p.reference, p.source) for p in pairs] == [(0, 0), (1, 0), (2, 1)]


@pytest.mark.parametrize(
    ("info", "rules", "problem"),
    [
        (_info("a", width=200, height=800), RULES, "too_small"),
        (_info("a", width=1000, height=300), RULES, "bad_aspect"),
        (_info("a", width=900, height=300), RULES, None),
        (_info("a", greyscale=True), RULES, "greyscale"),
        (_info("a", greyscale=True), PairingRules(reject_greyscale=False), None),
        (_info("a", width=128, height=128), PairingRules(min_side=128), None),
    ],
)
def test_quality_problem(info, rules, problem):
    assert quality_problem(info, rules) == problem


def test_quality_filters_apply_to_references_and_sources():
    tiny_reference = _info("tiny.jpg", width=100, height=80)
    _, rejections = _pair_one([_info("s.jpg", FAR_HASH, 1.0)], [0.8], reference=tiny_reference)
    assert rejections == [{"path": "tiny.jpg", "reason": "too_small", "detail": "100x80"}]
    sources = [_info("grey.jpg", FAR_HASH, 1.0, greyscale=True), _info("wide.jpg", FAR_HASH, 1.0, width=2000)]
    _, rejections = _pair_one(sources, [0.8, 0.7])
    assert rejections[0]["detail"] == "source_greyscale=1, source_bad_aspect=1"


def test_missing_neighbours_and_the_reference_itself_are_never_paired():
    pool = [REFERENCE, _info("s.jpg", FAR_HASH, 1.0)]
    neighbours, similarities = np.array([[0, -1, -1]]), np.array([[1.0, -1.0, -1.0]], np.float32)
    _, rejections = pair_references([REFERENCE], pool, neighbours, similarities, RULES)
    assert rejections[0]["detail"] == "same_image=1"
    _, rejections = pair_references([REFERENCE], pool, np.array([[-1]]), np.array([[-1.0]], np.float32), RULES)
    assert rejections[0]["detail"] == "no neighbours"
    with pytest.raises(ValueError, match="one row per reference"):
        pair_references([REFERENCE, REFERENCE], pool, neighbours, similarities, RULES)


def test_same_inputs_same_pairs():
    rng = np.random.default_rng(0)
    infos = [
        ImageInfo(f"{i}.jpg", 512, 400, int(rng.integers(2**63)), rng.random(39, dtype=np.float32), False, f"a{i % 7}")
        for i in range(200)
    ]
    neighbours = np.stack([rng.permutation(200)[:10] for _ in range(200)])
    similarities = -np.sort(-rng.uniform(0.3, 1.0, (200, 10)).astype(np.float32), axis=1)
    first = pair_references(infos, infos, neighbours, similarities, RULES)
    assert first == pair_references(infos, infos, neighbours.copy(), similarities.copy(), RULES)
    assert len(first[0]) > 50
    assert len({pair.source for pair in first[0]}) == len(first[0])  # reuse limit 1


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Real photos on disk: one, a regraded copy, a resized copy, a greyscale, a tiny, a corrupt file
    and a regraded photo of different content (the only acceptable source)."""
    folder = tmp_path_factory.mktemp("photos")
    looks = {preset.name: preset for preset in builtin_presets()}
    astronaut = data.astronaut()
    Image.fromarray(astronaut).save(folder / "astronaut.png")
    Image.fromarray(apply_lut(astronaut, looks["faded-matte"].to_lut(17))).save(folder / "astronaut-matte.png")
    Image.fromarray(astronaut).resize((384, 384)).save(folder / "astronaut-small.jpg", quality=90)
    Image.fromarray(data.camera()).convert("RGB").save(folder / "camera.png")
    Image.fromarray(data.chelsea()[::4, ::4]).save(folder / "tiny.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(apply_lut(data.coffee(), looks["teal-orange"].to_lut(17))).save(folder / "coffee-teal.png")
    return folder


NAMES = ["astronaut.png", "astronaut-matte.png", "astronaut-small.jpg", "camera.png", "tiny.png", "corrupt.jpg",
         "coffee-teal.png"]


def test_end_to_end_on_real_photos(photo_folder):
    infos, rejections = describe_images(NAMES, root=photo_folder, authors={"camera.png": "ann"})
    assert [info.path for info in infos] == [name for name in NAMES if name != "corrupt.jpg"]
    assert len(rejections) == 1 and rejections[0]["path"] == "corrupt.jpg"
    assert rejections[0]["reason"] == "unreadable" and str(photo_folder) not in rejections[0]["detail"]
    by_name = {info.path: info for info in infos}
    assert (by_name["astronaut.png"].width, by_name["astronaut.png"].height) == (512, 512)
    assert (by_name["tiny.png"].width, by_name["tiny.png"].height) == (113, 75)
    assert by_name["camera.png"].greyscale and by_name["camera.png"].author == "ann"
    assert not any(by_name[name].greyscale for name in ("astronaut.png", "astronaut-matte.png", "coffee-teal.png"))
    assert by_name["astronaut.png"].colour.shape == (39,)

    reference, sources = by_name["astronaut.png"], infos[1:]
    assert is_duplicate(reference, by_name["astronaut-matte.png"], RULES)  # strongly regraded, same picture
    assert is_duplicate(reference, by_name["astronaut-small.jpg"], RULES)
    assert not is_duplicate(reference, by_name["coffee-teal.png"], RULES)
    neighbours = np.array([[0, 1, 2, 3, 4, 5]])
    similarities = np.array([[0.89, 0.88, 0.8, 0.75, 0.6, 0.55]], np.float32)
    sources = [*sources, reference]  # the pool holds the reference itself too
    pairs, rejections = pair_references([reference], sources, neighbours, similarities, RULES)
    assert [sources[pair.source].path for pair in pairs] == ["coffee-teal.png"]
    assert pairs[0].color_distance > RULES.min_color_distance
    assert rejections == []

    _, rejections = pair_references([reference], sources, neighbours[:, :4], similarities[:, :4], RULES)
    assert rejections[0]["detail"] == "duplicate=2, source_greyscale=1, source_too_small=1"


def test_parallel_description_matches_serial(photo_folder):
    serial = describe_images(NAMES, root=photo_folder)
    parallel = describe_images(NAMES, root=photo_folder, workers=2)
    assert [info.path for info in parallel[0]] == [info.path for info in serial[0]]
    for a, b in zip(serial[0], parallel[0]):
        assert (a.width, a.height, a.phash, a.greyscale) == (b.width, b.height, b.phash, b.greyscale)
        np.testing.assert_array_equal(a.colour, b.colour)
    assert parallel[1] == serial[1]


@pytest.fixture
def counted(monkeypatch):
    """The paths `describe_images` decodes (serially, in this process), in call order."""
    calls = []
    describe_one = pairing._describe_one

    def counting(unit, root):
        calls.append(unit[1])
        return describe_one(unit, root)

    monkeypatch.setattr(pairing, "_describe_one", counting)
    return calls


def _facts(infos):
    return [(i.path, i.width, i.height, i.phash, i.colour.tobytes(), i.greyscale, i.author) for i in infos]


def test_cached_descriptions_are_not_decoded_again(photo_folder, tmp_path, counted):
    cache = tmp_path / "descriptions"
    first = describe_images(NAMES, root=photo_folder, cache_dir=cache)
    assert sorted(counted) == sorted(NAMES) and list(cache.glob("part_*.parquet"))
    counted.clear()
    again = describe_images(NAMES, root=photo_folder, authors={"camera.png": "ann"}, cache_dir=cache)
    assert counted == []
    assert again[1] == first[1] and again[1][0]["path"] == "corrupt.jpg"  # unreadable, still reported
    assert _facts(again[0]) == [f[:-1] + ("ann" if f[0] == "camera.png" else None,) for f in _facts(first[0])]
    # Paths given another way (absolute, no root) name the same files.
    describe_images([str(photo_folder / name) for name in NAMES], cache_dir=cache)
    assert counted == []


def test_changed_files_are_described_again(photo_folder, tmp_path, counted):
    folder, cache = tmp_path / "photos", tmp_path / "descriptions"
    shutil.copytree(photo_folder, folder)
    first, _ = describe_images(NAMES, root=folder, cache_dir=cache)
    counted.clear()
    os.utime(folder / "camera.png", ns=(0, 10**18))  # touched: same bytes, new modification time
    Image.fromarray(data.coffee()).save(folder / "coffee-teal.png")  # regraded photo replaced
    second, rejections = describe_images(NAMES, root=folder, cache_dir=cache)
    assert sorted(counted) == ["camera.png", "coffee-teal.png"] and len(rejections) == 1
    assert [info.path for info in second] == [info.path for info in first]
    assert second[-1].path == "coffee-teal.png" and second[-1].colour.tobytes() != first[-1].colour.tobytes()
    counted.clear()
    describe_images(NAMES, root=folder, cache_dir=cache)
    assert counted == []


def test_a_killed_description_run_keeps_its_finished_parts(photo_folder, tmp_path, counted, monkeypatch):
    cache = tmp_path / "descriptions"
    monkeypatch.setattr(pairing, "DESCRIPTION_PART_SIZE", 2)
    counting = pairing._describe_one

    def killed_at_the_fifth(unit, root):
        if len(counted) == 4:
            raise KeyboardInterrupt
        return counting(unit, root)

    monkeypatch.setattr(pairing, "_describe_one", killed_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        describe_images(NAMES, root=photo_folder, cache_dir=cache)
    assert len(list(cache.glob("part_*.parquet"))) == 2 and not list(cache.glob(".*"))
    monkeypatch.setattr(pairing, "_describe_one", counting)
    counted.clear()
    resumed = describe_images(NAMES, root=photo_folder, cache_dir=cache)
    assert counted == NAMES[4:]
    assert _facts(resumed[0]) == _facts(describe_images(NAMES, root=photo_folder)[0])

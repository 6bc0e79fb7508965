"""RL rewards: Eq. 5–6 against scipy's z-scores, the colour reward on real photos, the VLM reward through a
served model, and offline samples' validation."""

import json

import numpy as np
import pytest
import skimage.data
from PIL import Image
from scipy import stats

from seminft_bench.model.rewards import (
    ColorStatsReward,
    OfflineSamplesError,
    Triple,
    VLMReward,
    WeightedReward,
    draw_offline,
    group_normalize,
    load_offline_samples,
)
from seminft_bench.vlm.testserver import Answer, PlantedServer

SOURCE = Image.fromarray(skimage.data.astronaut()[::8, ::8])
REFERENCE = Image.fromarray(skimage.data.coffee()[::8, ::8])


def test_group_normalize_is_eq_5_over_the_union_with_population_std():
    online, offline = [1.0, 2.0, 3.0, 3.5, 0.2, 4.9], [4.0, 1.0, 2.5]
    r_online, r_offline = group_normalize(online, offline)
    z = stats.zscore(np.array(online + offline), ddof=0)  # population σ over both sets
    expected = 0.5 * np.clip(z, -1, 1) + 0.5
    np.testing.assert_allclose(np.concatenate([r_online, r_offline]), expected, rtol=0, atol=1e-12)
    assert r_online.shape == (6,) and r_offline.shape == (3,)
    # by hand: [1, 2, 3] ∪ [4] has μ = 2.5, σ = √1.25
    r, anchors = group_normalize([1, 2, 3], [4])
    np.testing.assert_allclose(r, [0.0, 0.5 - 0.25 / 1.25**0.5, 0.5 + 0.25 / 1.25**0.5])
    np.testing.assert_allclose(anchors, [1.0])


def test_group_normalize_gives_one_half_for_equal_scores_and_refuses_failures():
    r, anchors = group_normalize([3.0, 3.0], [3.0])
    assert np.array_equal(r, [0.5, 0.5]) and np.array_equal(anchors, [0.5])
    r, anchors = group_normalize([2.0], [])
    assert np.array_equal(r, [0.5]) and anchors.size == 0
    with pytest.raises(ValueError, match="non-finite"):
        group_normalize([1.0, float("nan")], [2.0])


def test_color_stats_reward_is_five_for_the_reference_and_falls_with_the_distance():
    from seminft_bench.bench.metrics import color

    reward = ColorStatsReward(scale=20.0)
    grey = SOURCE.convert("L").convert("RGB")
    scores = reward.score([Triple("same", SOURCE, REFERENCE, REFERENCE), Triple("src", SOURCE, REFERENCE, SOURCE),
                           Triple("grey", SOURCE, REFERENCE, grey)])  # fmt: skip
    assert scores[0] == pytest.approx(5.0)
    for score, prediction in zip(scores[1:], (SOURCE, grey)):
        assert score == pytest.approx(5 * np.exp(-color(prediction, REFERENCE) / 20.0))  # the metric, imported
        assert 0 < score < 5


def test_a_reward_that_cannot_score_gives_none_and_counts_it(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    reward = ColorStatsReward()
    assert reward.score([Triple("bad", SOURCE, REFERENCE, broken), Triple("ok", SOURCE, REFERENCE, REFERENCE)])[0] is None
    assert len(reward.failures) == 1 and "bad" in reward.failures[0]
    both = WeightedReward([(ColorStatsReward(), 1.0), (ColorStatsReward(scale=5.0), 3.0)])
    scores = both.score([Triple("bad", SOURCE, REFERENCE, broken), Triple("src", SOURCE, REFERENCE, SOURCE)])
    expected = 0.25 * ColorStatsReward().score([Triple("s", SOURCE, REFERENCE, SOURCE)])[0] + 0.75 * ColorStatsReward(
        scale=5.0).score([Triple("s", SOURCE, REFERENCE, SOURCE)])[0]  # fmt: skip
    assert scores[0] is None and scores[1] == pytest.approx(expected)


def test_vlm_reward_is_eq_4_of_the_served_logprobs_and_a_low_mass_reply_fails():
    def plan(seen):
        if seen.images[1].size == (8, 8):  # the "prediction" of the second triple: most mass off the scores
            return Answer("I", logprobs={"I": -0.01, "4": -6.0})
        return Answer("4", logprobs={"4": np.log(0.6), "3": np.log(0.3), "5": np.log(0.1)})

    with PlantedServer(plan) as server:
        reward = VLMReward.from_name("qwen3-vl-8b", base_url=server.openai_url)
        tiny = Image.new("RGB", (8, 8), (200, 30, 30))
        scores = reward.score([Triple("a", SOURCE, REFERENCE, SOURCE), Triple("b", SOURCE, REFERENCE, tiny)])
        reward.close()
    assert scores[0] == pytest.approx(0.6 * 4 + 0.3 * 3 + 0.1 * 5)
    assert scores[1] is None and len(reward.failures) == 1
    assert reward.settings()["mode"] == "reward" and reward.settings()["endpoint"]


def write_offline(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in (("source.png", SOURCE), ("reference.png", REFERENCE)):
        image.save(folder / name)
    path = folder / "offline.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def record(i, **changes):
    return {"id": f"s{i}", "source": "source.png", "reference": "reference.png", "image": "source.png", "score": 2.0,
            "note": "example", **changes}  # fmt: skip


def test_offline_samples_load_and_draw_distinct_records(tmp_path):
    samples = load_offline_samples(write_offline(tmp_path, [record(i, score=float(i)) for i in range(5)]))
    assert [s.score for s in samples] == [0.0, 1.0, 2.0, 3.0, 4.0] and samples[0].image.size == SOURCE.size
    drawn = draw_offline(samples, 3, np.random.default_rng(0))
    assert len({s.id for s in drawn}) == 3
    assert len(draw_offline(samples, 9, np.random.default_rng(0))) == 5


def test_bad_offline_samples_are_all_named_in_one_error(tmp_path):
    records = [record(0), record(0), record(1, score=6), record(2, image="missing.png"), record(3, score=None)]
    with pytest.raises(OfflineSamplesError) as error:
        load_offline_samples(write_offline(tmp_path, records))
    message = str(error.value)
    assert "4 unusable" in message and "duplicate id" in message and "[0, 5], got 6" in message
    assert "missing.png does not exist" in message and "lacks score" in message
    with pytest.raises(OfflineSamplesError, match="no such"):
        load_offline_samples(tmp_path / "nothing.jsonl")

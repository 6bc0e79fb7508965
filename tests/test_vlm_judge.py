"""Judges against a real local HTTP server speaking the OpenAI and Gemini protocols.

The server plants scores, faults (429 with Retry-After, 500/503, stalls past the client
timeout, dropped connections, 400) and unparseable replies. Every pair must end with
its planted score or a recorded failure (never a 0), the ledger must match what the
server billed, a rerun must only ask again what failed, and no key may reach a file.
"""

import json
import math
from collections import Counter

import numpy as np
import pytest
import skimage.data

from seminft_bench.vlm import Judge, JudgeUnavailable, Pair, ResponseCache, RetryPolicy, Transport
from seminft_bench.vlm.clients import OpenAIClient
from seminft_bench.vlm.prompts import SYSTEM_PROMPT, build_prompt
from seminft_bench.vlm.testserver import Answer, Drop, Fault, PlantedServer, Stall

KEYS = {
    "OPENAI_API_KEY": "sk-test-openai-0123456789abcdef",
    "GEMINI_API_KEY": "gemini-test-key-0123456789",
    "VLLM_API_KEY": "vllm-test-key-0123456789",
}
JUDGES = [  # judge name, the variable its key comes from, the server URL it is pointed at, the model id it sends
    ("gpt-4o", "OPENAI_API_KEY", "openai_url", "gpt-4o"),
    ("gemini-2.5-flash", "GEMINI_API_KEY", "gemini_url", "gemini-2.5-flash"),
    ("qwen3-vl-32b", "VLLM_API_KEY", "openai_url", "Qwen/Qwen3-VL-32B-Instruct"),
]
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)
TIMEOUT_S = 0.5


def code_colour(index: int) -> tuple[int, int, int]:
    return (30 + 20 * index, 90, 160)


def make_pairs(count: int) -> list[Pair]:
    photo = skimage.data.astronaut()
    return [
        Pair(f"pair{i}", photo[40 * i : 40 * i + 48, 100:140], np.full((36, 44, 3), code_colour(i), np.uint8))
        for i in range(count)
    ]


def planted_index(seen) -> tuple[int, int]:
    """(pair index, position of the prediction among the images): the prediction is the flat image."""
    for position, image in enumerate(seen.images):
        low, high = image.getextrema()[0]
        if high - low <= 4:
            return round((image.getpixel((0, 0))[0] - 30) / 20), position
    raise AssertionError("no planted prediction among the images")


class Recorder:
    """Wraps a plan; counts requests per pair and keeps the last request seen."""

    def __init__(self, plan):
        self.plan = plan
        self.requests = Counter()
        self.last = None

    def __call__(self, seen):
        index, position = planted_index(seen)
        self.requests[index] += 1
        self.last = seen
        return self.plan(seen, index, position)


@pytest.fixture
def keys(monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def make_judge(name, server, url_attr, cache_dir, **options):
    return Judge.from_name(
        name,
        base_url=getattr(server, url_attr),
        timeout=TIMEOUT_S,
        cache=ResponseCache(cache_dir),
        transport=Transport(4, FAST_RETRY),
        **options,
    )


def faulty_plan(key):
    def plan(seen, index, position):
        first = seen.attempt == 0
        if index == 0:
            return Answer('{"score": 0, "reasoning": "unrelated palettes"}')  # a real 0, not a failure
        if index == 1:
            return Fault(429, "slow down", retry_after=0.05) if first else Answer('{"score": [4], "reasoning": "r1"}')
        if index == 2:
            return Fault(500, "internal") if first else Answer('{"score": 3, "reasoning": "r2"}')
        if index == 3:
            return Stall(10.0) if first else Answer('{"score": 5, "reasoning": "r3"}')
        if index == 4:
            return Drop() if first else Answer('```json\n{"score": 2, "reasoning": "r4"}\n```')
        if index == 5:
            prose = 'Sure: {"score": [1], "reasoning": "r5"} Done.'
            return Answer("They look alike to me.") if first else Answer(prose)
        if index == 6:
            return Answer("I cannot judge colours.")  # never parses
        if index == 7:
            return Fault(400, f"image rejected; request signed with {key}")  # providers may echo the key
        if index == 8:
            return Fault(503, "overloaded")  # never recovers
        return Answer('"score": [2.5], "reasoning": "the paper\'s own form".')

    return plan


PLANTED = {0: 0.0, 1: 4.0, 2: 3.0, 3: 5.0, 4: 2.0, 5: 1.0, 9: 2.5}
FAILURES = {6: "unparseable reply", 7: "HTTP 400", 8: "HTTP 503"}
REQUESTS = {0: 1, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 3, 7: 1, 8: 3, 9: 1}
ANSWERED = 1 + 1 + 1 + 1 + 1 + 2 + 3 + 0 + 0 + 1  # replies the server delivered (and billed)


def assert_no_secret_in(folder, texts=()):
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in KEYS.values():
                assert value.encode() not in data, f"a key leaked into {path}"
    for text in texts:
        for value in KEYS.values():
            assert value not in text


@pytest.mark.parametrize("name, key_env, url_attr, model", JUDGES)
def test_planted_scores_faults_costs_and_rerun(tmp_path, keys, name, key_env, url_attr, model):
    plan = Recorder(faulty_plan(KEYS[key_env]))
    pairs = make_pairs(10)
    with PlantedServer(plan, api_key=KEYS[key_env]) as server:
        judge = make_judge(name, server, url_attr, tmp_path / "cache")
        results = judge.score_pairs(pairs)
        assert not server.errors, server.errors[0]

        # The request: Fig. 8 evaluation prompt, the judge's model id, images in the order (reference, prediction).
        assert plan.last.model == model and plan.last.system == SYSTEM_PROMPT
        assert plan.last.text == build_prompt("evaluation").user and not plan.last.reward
        assert len(plan.last.images) == 2 and planted_index(plan.last)[1] == 1

        by_index = {int(r.name[4:]): r for r in results}
        for index, score in PLANTED.items():
            assert (by_index[index].score, by_index[index].error) == (score, None), by_index[index]
        assert by_index[1].reasoning == "r1" and by_index[9].reasoning == "the paper's own form"
        for index, error in FAILURES.items():
            failed = by_index[index]
            assert failed.score is None and error in failed.error
        assert by_index[6].raw == "I cannot judge colours." and "gave up after 3 attempts" in by_index[6].error
        assert "image rejected" in by_index[7].error and "[REDACTED]" in by_index[7].error
        assert dict(plan.requests) == REQUESTS  # 4xx at once; transient faults retried; 3 attempts at most

        # Every delivered reply is in the ledger exactly once, with the tokens the server billed.
        entry = judge.ledger.entries[name]
        assert (entry.calls, entry.cached) == (ANSWERED, 0)
        assert (entry.input_tokens, entry.output_tokens) == (server.billed_input_tokens, server.billed_output_tokens)
        assert sum(r.usage.input_tokens for r in results) == entry.input_tokens

        # A rerun takes every success from the cache and asks only the failures again.
        server.reset_counts()
        plan.requests.clear()
        again = make_judge(name, server, url_attr, tmp_path / "cache").score_pairs(pairs)
        assert [(r.score, r.reasoning) for r in again] == [(r.score, r.reasoning) for r in results]
        assert all(r.cached and r.usage.input_tokens == 0 for r in again if r.error is None)
        assert dict(plan.requests) == {6: 3, 7: 1, 8: 3}
        assert server.billed_input_tokens == 3 * 100  # only pair 6's unparseable replies were paid again

    records = [json.dumps(r.to_record()) for r in results + again]
    assert_no_secret_in(tmp_path, records)


@pytest.mark.parametrize("name, key_env, url_attr, model", JUDGES[:2])
def test_reward_is_eq4_from_top_logprobs(tmp_path, keys, name, key_env, url_attr, model):
    logprobs = {"4": math.log(0.5), " 3": math.log(0.2), "5": math.log(0.1), "The": math.log(0.15)}

    def plan(seen, index, position):
        assert seen.reward and seen.text == build_prompt("reward").user
        if index == 0:
            return Answer("4", logprobs=logprobs, output_tokens=1)
        if index == 1:
            return Answer("4", logprobs=None, output_tokens=1)  # a server that ignores the logprobs request
        return Answer("Sure", logprobs={"Sure": -0.1, "I": -2.5}, output_tokens=1)  # no score token at all

    recorder = Recorder(plan)
    with PlantedServer(recorder, api_key=KEYS[key_env]) as server:
        results = make_judge(name, server, url_attr, tmp_path, reward=True).score_pairs(make_pairs(3))
        assert not server.errors, server.errors[0]
    assert results[0].score == pytest.approx((4 * 0.5 + 3 * 0.2 + 5 * 0.1) / 0.8)
    assert results[0].mode == "reward" and results[0].reasoning is None
    assert results[1].score is None and "no token log-probabilities" in results[1].error
    assert results[2].score is None and "none of the scoring tokens" in results[2].error
    assert dict(recorder.requests) == {0: 1, 1: 1, 2: 3}


def test_both_orders_report_each_and_the_mean(tmp_path, keys):
    def plan(seen, index, position):
        return Answer(f'{{"score": {4 if position == 1 else 2}, "reasoning": "prediction at {position}"}}')

    recorder = Recorder(plan)
    with PlantedServer(recorder) as server:
        [result] = make_judge("gpt-4o", server, "openai_url", tmp_path, both_orders=True).score_pairs(make_pairs(1))
    assert result.order_scores == {"reference_first": 4.0, "prediction_first": 2.0}
    assert result.score == 3.0 and result.reasoning == "prediction at 1"
    assert recorder.requests[0] == 2 and result.to_record()["order_scores"] == result.order_scores


def test_missing_keys_and_models_say_what_to_provide(tmp_path, keys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(JudgeUnavailable, match="gpt-4o.*OPENAI_API_KEY"):
        Judge.from_name("gpt-4o")
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(JudgeUnavailable, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        Judge.from_name("gemini-2.5-flash")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(JudgeUnavailable, match="--base-url|hf download"):
        Judge.from_name("qwen3-vl-8b")
    with pytest.raises(ValueError, match="unknown judge"):
        Judge.from_name("gpt-5")


def test_gemini_falls_back_to_google_api_key(tmp_path, keys, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", "google-test-key-0123456789")
    with PlantedServer(lambda seen: Answer('{"score": 5}'), api_key="google-test-key-0123456789") as server:
        [result] = make_judge("gemini-2.5-flash", server, "gemini_url", tmp_path).score_pairs(make_pairs(1))
    assert result.score == 5.0


def test_images_are_resized_to_the_long_side(tmp_path, keys):
    seen_sizes = []

    def plan(seen):
        seen_sizes.extend(image.size for image in seen.images)
        return Answer('{"score": 3}')

    pair = Pair("big", np.zeros((300, 120, 3), np.uint8), skimage.data.coffee())  # coffee is 600×400
    with PlantedServer(plan) as server:
        make_judge("gpt-4o", server, "openai_url", tmp_path, max_side=150).score_pairs([pair])
    assert seen_sizes == [(60, 150), (150, 100)]


def test_an_unreadable_image_fails_its_pair_only(tmp_path, keys):
    broken = Pair("broken", b"not an image", np.zeros((8, 8, 3), np.uint8))
    with PlantedServer(lambda seen: Answer('{"score": 3}')) as server:
        results = make_judge("gpt-4o", server, "openai_url", tmp_path).score_pairs([broken, *make_pairs(1)])
        assert server.calls == 1
    assert results[0].score is None and "not an image" in results[0].error
    assert results[1].score == 3.0


def test_reward_refuses_a_reply_with_little_mass_on_the_scores(tmp_path, keys):
    def plan(seen, index, position):
        if index == 0:
            return Answer("I", logprobs={"I": -0.0001, "3": -14.0}, output_tokens=1)  # a refusal, not a 3
        return Answer("3", logprobs={"3": math.log(0.3), "4": math.log(0.1), "I": math.log(0.6)}, output_tokens=1)

    recorder = Recorder(plan)
    with PlantedServer(recorder) as server:
        strict = make_judge("gpt-4o", server, "openai_url", tmp_path / "a", reward=True).score_pairs(make_pairs(2))
        lenient = make_judge("gpt-4o", server, "openai_url", tmp_path / "b", reward=True, min_mass=0.35)
        loose = lenient.score_pairs(make_pairs(2))
    assert strict[0].score is None and "below the minimum 0.5" in strict[0].error and strict[0].raw == "I"
    assert strict[1].score is None and "probability 0.4, below the minimum 0.5" in strict[1].error
    assert loose[0].score is None and loose[1].score == pytest.approx((3 * 0.3 + 4 * 0.1) / 0.4)
    assert recorder.requests == {0: 6, 1: 4}  # refusals are retried (3 attempts), then recorded as failures


def test_a_cached_reward_is_read_again_with_the_judges_min_mass(tmp_path, keys):
    logprobs = {"2": math.log(0.4), "I": math.log(0.6)}
    recorder = Recorder(lambda seen, index, position: Answer("2", logprobs=logprobs, output_tokens=1))
    pairs = make_pairs(1)
    with PlantedServer(recorder) as server:
        [first] = make_judge("gpt-4o", server, "openai_url", tmp_path, reward=True, min_mass=0.3).score_pairs(pairs)
        [strict] = make_judge("gpt-4o", server, "openai_url", tmp_path, reward=True).score_pairs(pairs)
        [again] = make_judge("gpt-4o", server, "openai_url", tmp_path, reward=True, min_mass=0.3).score_pairs(pairs)
    assert (first.score, first.cached) == (2.0, False)
    assert strict.score is None and "below the minimum 0.5" in strict.error  # not the cached 2.0
    assert (again.score, again.cached) == (2.0, True)
    assert recorder.requests[0] == 1 + 3


@pytest.mark.parametrize("name, key_env, url_attr, model", JUDGES)
def test_one_model_id_at_two_endpoints_keeps_two_sets_of_replies(tmp_path, keys, name, key_env, url_attr, model):
    first = Recorder(lambda seen, index, position: Answer('{"score": 1, "reasoning": "first server"}'))
    second = Recorder(lambda seen, index, position: Answer('{"score": 4, "reasoning": "second server"}'))
    cache = tmp_path / "shared-cache"
    with PlantedServer(first, api_key=KEYS[key_env]) as one, PlantedServer(second, api_key=KEYS[key_env]) as two:
        [at_one] = make_judge(name, one, url_attr, cache).score_pairs(make_pairs(1))
        [at_two] = make_judge(name, two, url_attr, cache).score_pairs(make_pairs(1))
        [at_one_again] = make_judge(name, one, url_attr, cache).score_pairs(make_pairs(1))
    assert first.last.model == second.last.model == model
    assert (at_one.score, at_one.cached) == (1.0, False)
    assert (at_two.score, at_two.reasoning, at_two.cached) == (4.0, "second server", False)
    assert (at_one_again.score, at_one_again.cached) == (1.0, True)
    assert first.requests == {0: 1} and second.requests == {0: 1}


def test_the_openai_endpoint_is_the_one_the_sdk_calls(keys, monkeypatch):
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)
    assert Judge.from_name("gpt-4o").settings()["endpoint"] == "https://api.openai.com/v1/"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy.example:8000/v1")
    assert Judge.from_name("gpt-4o").settings()["endpoint"] == "http://proxy.example:8000/v1/"
    assert Judge.from_name("gemini-2.5-flash").settings()["endpoint"] == "https://generativelanguage.googleapis.com/"


def settings_of(model="house-vlm", base_url="http://gpu-a:8000/v1", **options):
    return Judge("house", OpenAIClient(model, api_key="EMPTY", base_url=base_url), **options).settings()


def test_settings_name_everything_that_decides_a_score():
    evaluation = settings_of()
    assert json.loads(json.dumps(evaluation)) == evaluation == settings_of()
    assert evaluation == {
        "judge": "house",
        "provider": "openai",
        "model": "house-vlm",
        "endpoint": "http://gpu-a:8000/v1/",
        "template": build_prompt("evaluation").version,
        "mode": "evaluation",
        "params": {"mode": "evaluation", "max_tokens": 1024, "temperature": 0.0, "thinking_budget": 0},
        "both_orders": False,
        "max_side": 1024,
    }
    reward = settings_of(reward=True)
    assert reward["mode"] == "reward" and reward["min_mass"] == 0.5
    assert reward["params"] == {
        "mode": "reward",
        "max_tokens": 1,
        "temperature": 0.0,
        "thinking_budget": 0,
        "top_logprobs": 20,
    }
    variants = [
        settings_of(base_url="http://gpu-b:8000/v1"),
        settings_of(model="house-vlm-2"),
        reward,
        settings_of(reward=True, min_mass=0.3),
        settings_of(both_orders=True),
        settings_of(max_side=512),
        settings_of(max_tokens=256),
    ]
    assert all(variant != evaluation for variant in variants)
    assert len({json.dumps(variant, sort_keys=True) for variant in variants}) == len(variants)

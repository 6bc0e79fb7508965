"""Eq. 4 from token log-probabilities, evaluation-reply parsing, and the Fig. 8 prompts."""

import math

import numpy as np
import pytest

from seminft_bench.vlm import ParseError, build_prompt, expected_score, parse_evaluation
from seminft_bench.vlm.prompts import SYSTEM_PROMPT, TEMPLATE_VERSION


def test_expected_score_is_eq4_renormalised_over_score_tokens():
    probs = np.array([0.02, 0.03, 0.10, 0.25, 0.30, 0.05])  # sums to 0.75: the rest is other tokens
    logprobs = {str(r): math.log(p) for r, p in enumerate(probs)}
    logprobs.update({"The": math.log(0.2), "\n": math.log(0.05)})
    expected = float((np.arange(6) * probs).sum() / probs.sum())
    assert expected_score(logprobs) == pytest.approx(expected, rel=1e-12)


def test_leading_space_spellings_add_up():
    plain = {"4": math.log(0.3), "2": math.log(0.1)}
    split = {"4": math.log(0.1), " 4": math.log(0.2), " 2": math.log(0.1)}
    assert expected_score(split) == pytest.approx(expected_score(plain))
    assert expected_score(split) == pytest.approx((4 * 0.3 + 2 * 0.1) / 0.4)


def test_custom_weights_define_the_scoring_set():
    # The paper's example: tokens "1".."5"; "0" is then just another token.
    weights = {str(r): float(r) for r in range(1, 6)}
    logprobs = {"0": math.log(0.5), "1": math.log(0.25), "5": math.log(0.25)}
    assert expected_score(logprobs, weights) == pytest.approx(3.0)
    assert expected_score(logprobs) == pytest.approx((1 * 0.25 + 5 * 0.25) / 1.0)


def test_extreme_logprobs_stay_finite():
    # OpenAI reports -9999 for "very unlikely"; a local model's log-softmax can be far below -1000.
    assert expected_score({"3": -1000.0, "5": -1000.0 - math.log(3), "1": -9999.0}) == pytest.approx((3 * 3 + 5) / 4)
    assert expected_score({"2": -math.inf, "4": -5.0}) == 4.0


@pytest.mark.parametrize("logprobs", [{}, {"yes": -0.1, "6": -0.2}, {"4": -math.inf}])
def test_no_score_token_is_an_error_not_a_zero(logprobs):
    with pytest.raises(ParseError, match="none of the scoring tokens"):
        expected_score(logprobs)


def test_nan_logprob_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        expected_score({"3": float("nan")})


@pytest.mark.parametrize(
    "reply, score, reasoning",
    [
        ('{"score": 4, "reasoning": "warm tones match"}', 4.0, "warm tones match"),
        ('{"score": [3], "reasoning": "close"}', 3.0, "close"),
        ('```json\n{"score": [2], "reasoning": "cooler sky"}\n```', 2.0, "cooler sky"),
        ('Here is my assessment:\n{"score": 5, "reasoning": "identical"}\nLet me know!', 5.0, "identical"),
        ('"score": [1], "reasoning": "opposite \\"teal\\" cast".', 1.0, 'opposite "teal" cast'),
        ("{'score': 0, 'reasoning': 'unrelated'}", 0.0, "unrelated"),
        ('{"score": "3.5", "reasoning": "mostly"}', 3.5, "mostly"),
        ('{"Score": 2, "Reasoning": "capitalised keys"}', 2.0, "capitalised keys"),
        ('Score: 4 — the palettes agree.', 4.0, None),
        ('{"score": [4], "reasoning": "cut off mid-sent', 4.0, "cut off mid-sent"),
    ],
)
def test_evaluation_replies_parse(reply, score, reasoning):
    result = parse_evaluation(reply)
    assert (result.score, result.reasoning) == (score, reasoning)


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "The two images look similar.",
        '{"score": 7, "reasoning": "too high"}',
        '{"score": -1}',
        '{"score": "2-3", "reasoning": "a range"}',
        '{"score": true}',
        '{"score": NaN}',
        '{"reasoning": "no score at all"}',
    ],
)
def test_unusable_replies_raise(reply):
    with pytest.raises(ParseError):
        parse_evaluation(reply)


def test_prompts_follow_fig8():
    reward, evaluation = build_prompt("reward"), build_prompt("evaluation")
    assert reward.system == evaluation.system == SYSTEM_PROMPT
    assert "Holistic and Local Color Harmony Specialist" in SYSTEM_PROMPT
    for prompt in (reward, evaluation):
        assert prompt.version == TEMPLATE_VERSION
        for heading in ("Task:", "Scoring Criteria (Mandatory):", "Important:", "Response Format:"):
            assert heading in prompt.user
        assert "5 (Perfect Match)" in prompt.user and "Focus Only on Color" in prompt.user
    assert reward.user.endswith("Response Format:\nOutput ONLY a single number from 0 to 5.")
    assert evaluation.user.endswith('Response Format:\nOutput form: "score": [...], "reasoning": "...".')
    with pytest.raises(ValueError, match="mode"):
        build_prompt("ranking")

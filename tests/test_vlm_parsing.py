"""Eq. 4 from token log-probabilities, evaluation-reply parsing, and the Fig. 8 prompts."""

import math

import numpy as np
import pytest

from seminft_bench.vlm import ParseError, build_prompt, expected_score, parse_evaluation
from seminft_bench.vlm.parsing import score_mass
from seminft_bench.vlm.prompts import SYSTEM_PROMPT, TEMPLATE_VERSION


def test_expected_score_is_eq4_renormalised_over_score_tokens():
    probs = np.array([0.02, 0.03, 0.10, 0.25, 0.30, 0.05])  # sums to 0.75: the rest is other tokens
    logprobs = {str(r): math.log(p) for r, p in enumerate(probs)}
    logprobs.update({"The": math.log(0.2), "\n": math.log(0.05)})
    expected = float((np.arange(6) * probs).sum() / probs.sum())
    assert expected_score(logprobs) == pytest.approx(expected, rel=1e-12)


def test_leading_space_spellings_add_up():
    plain = {"4": math.log(0.6), "2": math.log(0.2)}
    split = {"4": math.log(0.2), " 4": math.log(0.4), " 2": math.log(0.2)}
    assert expected_score(split) == pytest.approx(expected_score(plain))
    assert expected_score(split) == pytest.approx((4 * 0.6 + 2 * 0.2) / 0.8)


def test_custom_weights_define_the_scoring_set():
    # The paper's example: tokens "1".."5"; "0" is then just another token.
    weights = {str(r): float(r) for r in range(1, 6)}
    logprobs = {"0": math.log(0.4), "1": math.log(0.3), "5": math.log(0.3)}
    assert expected_score(logprobs, weights) == pytest.approx(3.0)
    assert expected_score(logprobs) == pytest.approx((1 * 0.3 + 5 * 0.3) / 1.0)


def test_extreme_logprobs_stay_finite():
    # OpenAI reports -9999 for "very unlikely"; a local model's log-softmax can be far below -1000.
    # Such replies carry almost no mass: min_mass=0 checks the arithmetic alone.
    tiny = {"3": -1000.0, "5": -1000.0 - math.log(3), "1": -9999.0}
    assert expected_score(tiny, min_mass=0.0) == pytest.approx((3 * 3 + 5) / 4)
    assert expected_score({"2": -math.inf, "4": -5.0}, min_mass=0.0) == 4.0


def test_score_mass_is_the_raw_probability_on_score_tokens():
    logprobs = {"4": math.log(0.1), " 4": math.log(0.2), "2": math.log(0.1), "The": math.log(0.5)}
    assert score_mass(logprobs) == pytest.approx(0.4)
    assert score_mass(logprobs, {"2": 2.0}) == pytest.approx(0.1)
    assert score_mass({"Sure": -0.1}) == 0.0
    assert score_mass({"4": math.log(0.7), " 4": math.log(0.35)}) == pytest.approx(1.05)  # top-k rounding: fine


def test_a_refusal_is_not_renormalised_into_a_score():
    # "I ..." with a stray "3" at e^-14: renormalising would call it a confident 3.
    with pytest.raises(ParseError, match=r"probability 8\.3\de-07, below the minimum 0\.5"):
        expected_score({"I": -0.0001, "3": -14.0})
    with pytest.raises(ParseError, match="below the minimum 0.5"):
        expected_score({"3": math.log(0.49), "I": math.log(0.51)})
    assert expected_score({"3": math.log(0.51), "I": math.log(0.49)}) == pytest.approx(3.0)


def test_min_mass_is_configurable():
    logprobs = {"4": math.log(0.3), "2": math.log(0.1), "I": math.log(0.6)}  # mass 0.4
    with pytest.raises(ParseError, match="0.4.*below the minimum 0.5"):
        expected_score(logprobs)
    assert expected_score(logprobs, min_mass=0.35) == pytest.approx((4 * 0.3 + 2 * 0.1) / 0.4)
    with pytest.raises(ParseError, match="below the minimum 0.9"):
        expected_score({"4": math.log(0.8)}, min_mass=0.9)


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


# Replies a judge might write, each with what must come of it: a score, or ParseError (never a guess).
ADVERSARIAL = [
    # the text fallback reads only an unambiguous score on the 0-5 scale
    ("Score: 4/10", ParseError),
    ("8", ParseError),
    ("4 out of 10", ParseError),
    ("score: 3-4", ParseError),
    ("3 to 4", ParseError),
    ("score 4, or maybe 2", ParseError),
    ("Score: 2. On reflection, score: 3.", ParseError),
    ("score: -2", ParseError),
    ("-1", ParseError),
    ("score: NaN", ParseError),
    ("score: five", ParseError),  # spelled-out numbers are not read
    ("I would give it a 4.", ParseError),  # a number that no score label claims
    ("Score: 4\nReasoning: 2 of the 3 regions match", ParseError),  # unquoted reasoning: numbers are ambiguous
    ("4", 4.0),  # the whole reply is one digit: unambiguous
    ("4.", 4.0),
    ("The score is 4.", 4.0),
    ("**Score:** 3", 3.0),
    ("Score: 4/5", 4.0),  # N/5 is N: the scale itself
    ("score: 4.5/5", 4.5),
    ("Score: 4 out of 5.", 4.0),
    ("Score: 6/5", ParseError),
    ("Score: 4. Final score: 4.", 4.0),  # said twice, the same
    # objects
    ('{"score": 10, "reasoning": "great"}', ParseError),
    ('{"score": [3, 4]}', ParseError),
    ('{"score": "4/10"}', ParseError),
    ('{"score": true}', ParseError),
    ('{"score": null}', ParseError),
    ('{"score": Infinity}', ParseError),
    ('{"score": 4} and on second thought {"score": 2}', ParseError),
    ('```json\n{"score": 4}\n```\n```json\n{"score": 3}\n```', ParseError),
    ('"score": [3], "score": [4]', ParseError),  # a repeated key: loaders keep the last one silently
    ('Score: 2\n{"score": 4, "reasoning": "x"}', ParseError),  # the prose contradicts the object
    ('{"score": 4} {"score": 4}', 4.0),
    ('{"result": {"score": 2, "reasoning": "nested"}}', 2.0),
    ('My notes: 3 regions, 2 skies.\n{"score": 4, "reasoning": "warm"}', 4.0),  # unlabelled prose numbers
    ('{"score": 4, "reasoning": "a score: 5 needs exact tones"}', 4.0),  # a label inside the reasoning
    ("{'score': [5], 'reasoning': 'single quotes'}", 5.0),
    ('{"score": " 2 "}', 2.0),
]


@pytest.mark.parametrize("reply, expected", ADVERSARIAL)
def test_adversarial_replies(reply, expected):
    if expected is ParseError:
        with pytest.raises(ParseError):
            parse_evaluation(reply)
    else:
        assert parse_evaluation(reply).score == expected


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

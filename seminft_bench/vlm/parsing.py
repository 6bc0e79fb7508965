"""Turn a judge's reply into a score: Eq. 4 from token probabilities, or the evaluation JSON.

A reply that does not yield a score in 0–5 raises `ParseError`; the caller retries
it and in the end records a failure, so an unreadable reply never becomes a 0.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

SCORE_TOKENS = ("0", "1", "2", "3", "4", "5")
MIN_SCORE, MAX_SCORE = 0.0, 5.0
DEFAULT_MIN_MASS = 0.5
"""Least probability the scoring tokens must carry for Eq. 4 to be a score rather than a refusal."""

_NUMBER = r"-?\d+(?:\.\d+)?"
_NUMBERS = re.compile(_NUMBER)
_SCORE_LABEL = re.compile(rf"""\bscore\b[\s"'*]*(?:[:=]|\bis\b)?[\s"'*\[]*({_NUMBER})""", re.IGNORECASE)
_OUT_OF_FIVE = re.compile(rf"({_NUMBER})\s*(?:/|\bout\s+of\b)\s*5(?!\.?\d)", re.IGNORECASE)
_BARE_NUMBER = re.compile(rf"""[\s"'\[]*{_NUMBER}[\s"'\].]*""")
_REASONING_FIELD = re.compile(r"""["']?reasoning["']?\s*[:=]\s*"((?:[^"\\]|\\.)*)"?""", re.IGNORECASE | re.DOTALL)


class ParseError(ValueError):
    """A reply with no usable score."""


@dataclass(frozen=True)
class Evaluation:
    score: float
    reasoning: str | None


def score_mass(token_logprobs: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """``Σ p(r)`` over the scoring tokens, not renormalised: how much of the answer is a score at all.

    A model that refuses ("I cannot …") leaves little mass on the scores; top-k lists rounded
    by the provider may sum a little over 1. Same tokens and spellings as `expected_score`.
    """
    return _mass(_scoring_logprobs(token_logprobs, _weights(weights)))


def expected_score(
    token_logprobs: Mapping[str, float],
    weights: Mapping[str, float] | None = None,
    *,
    min_mass: float = DEFAULT_MIN_MASS,
) -> float:
    """Eq. 4: ``Σ w(r)·p(r)`` over the scoring tokens, their probabilities renormalised to sum to one.

    ``token_logprobs`` maps tokens to natural-log probabilities (an API's ``top_logprobs``,
    or a local model's log-softmax at the answer position); tokens outside the scoring set
    are ignored. Leading whitespace is tolerated (" 4" counts as "4"; both spellings add up).
    ``weights`` maps each scoring token to its value, default ``{"0": 0, …, "5": 5}``.
    Raises `ParseError` (a ValueError) when no scoring token is present, or when they carry
    less than ``min_mass`` of the probability (`score_mass`): renormalising a refusal's
    leftovers would turn it into a confident score.
    """
    weights = _weights(weights)
    found = _scoring_logprobs(token_logprobs, weights)
    if not found:
        raise ParseError(f"none of the scoring tokens {sorted(weights)} is among {sorted(token_logprobs)[:20]}")
    mass = _mass(found)
    if mass < min_mass:
        raise ParseError(f"the scoring tokens carry probability {mass:.3g}, below the minimum {min_mass:g}")
    top = max(max(logprobs) for logprobs in found.values())  # subtract the largest so exp() cannot overflow
    relative = {token: sum(math.exp(lp - top) for lp in logprobs) for token, logprobs in found.items()}
    return sum(weights[token] * p for token, p in relative.items()) / sum(relative.values())


def _weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    return {token: float(token) for token in SCORE_TOKENS} if weights is None else dict(weights)


def _scoring_logprobs(token_logprobs: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, list[float]]:
    """Scoring token (leading whitespace stripped) → the log-probabilities of its spellings."""
    found: dict[str, list[float]] = {}
    for token, logprob in token_logprobs.items():
        if math.isnan(logprob):
            raise ParseError(f"log-probability of {token!r} is NaN")
        if token.lstrip() in weights and logprob > -math.inf:
            found.setdefault(token.lstrip(), []).append(logprob)
    return found


def _mass(found: dict[str, list[float]]) -> float:
    return sum(math.exp(logprob) for logprobs in found.values() for logprob in logprobs)


def parse_evaluation(text: str) -> Evaluation:
    """The score (0–5) and reasoning of an evaluation-form reply; `ParseError` unless it is unambiguous.

    Objects first: strict JSON, in code fences or prose, the paper's own brace-less
    ``"score": [4], "reasoning": "..."``, single quotes; a score as a number, a one-element
    list or a numeric string. Without an object, text: the one number of the reply, read
    only as the whole reply ("4") or after a score label ("Score: 4", "The score is 4").
    Either way every score the reply states must agree, and ranges ("3-4", "3 to 4"), other
    scales ("4/10", "4 out of 10"), numbers outside 0–5 and spelled-out numbers ("five")
    are refused; "N/5" and "N out of 5" read as N, the scale being 0–5. Numbers inside the
    (double-quoted) reasoning are not scores.
    """
    remainder = _OUT_OF_FIVE.sub(r"\1", _REASONING_FIELD.sub("", text))
    labelled = {float(number) for number in _SCORE_LABEL.findall(remainder)}
    objects = [found for found in _objects(text) if "score" in found]
    if objects:
        evaluations = [_evaluation_from(found, text) for found in objects]
        _check_agree({evaluation.score for evaluation in evaluations} | labelled, text)
        return evaluations[0]
    return _evaluation_from_text(text, remainder, bool(labelled))


def _evaluation_from_text(text: str, remainder: str, labelled: bool) -> Evaluation:
    """A reply that is no object: its only number, if that is the whole reply or follows a score label."""
    numbers = {float(number) for number in _NUMBERS.findall(remainder)}
    if not numbers:
        raise ParseError(f"no score in reply: {_preview(text)}")
    _check_agree(numbers, text)
    if not labelled and _BARE_NUMBER.fullmatch(remainder) is None:
        raise ParseError(f"a number without a score label: {_preview(text)}")
    reasoning = _REASONING_FIELD.search(text)
    return Evaluation(_checked_score(numbers.pop(), text), _unescape(reasoning.group(1)) if reasoning else None)


def _check_agree(scores: set[float], text: str) -> None:
    if len(scores) > 1:
        raise ParseError(f"ambiguous score, the reply gives {sorted(scores)}: {_preview(text)}")


def _objects(text: str) -> list[dict]:
    """Every object in the reply: each JSON object anywhere in it, the outermost braces as a
    Python literal (single quotes), and the brace-less form wrapped in braces."""
    start, end = text.find("{"), text.rfind("}")
    candidates = [text[start : end + 1]] if 0 <= start < end else []
    candidates.append("{" + text.strip().rstrip(".").strip() + "}")
    loaded = [found for found in map(_load_object, candidates) if found is not None]
    return loaded + _json_objects(text)


def _json_objects(text: str) -> list[dict]:
    """The JSON object starting at each "{" of the text, nested ones included."""
    decoder = json.JSONDecoder()
    found = []
    for brace in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, brace.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(_lowered(value))
    return found


def _load_object(text: str) -> dict | None:
    """A JSON (or Python-literal) object, or None."""
    for load in (json.loads, ast.literal_eval):
        try:
            value = load(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return _lowered(value)
    return None


def _lowered(fields: dict) -> dict:
    return {str(key).lower(): item for key, item in fields.items()}


def _evaluation_from(fields: dict, text: str) -> Evaluation:
    score = fields["score"]
    if isinstance(score, list) and len(score) == 1:
        score = score[0]
    reasoning = fields.get("reasoning")
    return Evaluation(_checked_score(score, text), None if reasoning is None else str(reasoning))


def _checked_score(value: object, text: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ParseError(f"score is not a number: {value!r} in {_preview(text)}")
    try:
        score = float(value)
    except ValueError:
        raise ParseError(f"score is not a number: {value!r} in {_preview(text)}") from None
    if not MIN_SCORE <= score <= MAX_SCORE:  # also rejects NaN
        raise ParseError(f"score {value!r} is outside 0-5 in {_preview(text)}")
    return score


def _unescape(json_string_body: str) -> str:
    try:
        return json.loads(f'"{json_string_body}"')
    except ValueError:  # a reply cut off mid-escape: keep what is there
        return json_string_body


def _preview(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")

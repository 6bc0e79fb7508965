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

_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.DOTALL)
_SCORE_FIELD = re.compile(r"""["']?score["']?\s*[:=]\s*\[?\s*["']?(-?\d+(?:\.\d+)?)""", re.IGNORECASE)
_REASONING_FIELD = re.compile(r"""["']?reasoning["']?\s*[:=]\s*"((?:[^"\\]|\\.)*)""", re.IGNORECASE | re.DOTALL)


class ParseError(ValueError):
    """A reply with no usable score."""


@dataclass(frozen=True)
class Evaluation:
    score: float
    reasoning: str | None


def expected_score(token_logprobs: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """Eq. 4: ``Σ w(r)·p(r)`` over the scoring tokens, their probabilities renormalised to sum to one.

    ``token_logprobs`` maps tokens to natural-log probabilities (an API's ``top_logprobs``,
    or a local model's log-softmax at the answer position); tokens outside the scoring set
    are ignored. Leading whitespace is tolerated (" 4" counts as "4"; both spellings add up).
    ``weights`` maps each scoring token to its value, default ``{"0": 0, …, "5": 5}``.
    Raises `ParseError` (a ValueError) when no scoring token is present.
    """
    weights = {token: float(token) for token in SCORE_TOKENS} if weights is None else dict(weights)
    found: dict[str, list[float]] = {}
    for token, logprob in token_logprobs.items():
        if math.isnan(logprob):
            raise ParseError(f"log-probability of {token!r} is NaN")
        if token.lstrip() in weights and logprob > -math.inf:
            found.setdefault(token.lstrip(), []).append(logprob)
    if not found:
        raise ParseError(f"none of the scoring tokens {sorted(weights)} is among {sorted(token_logprobs)[:20]}")
    top = max(max(logprobs) for logprobs in found.values())  # subtract the largest so exp() cannot overflow
    mass = {token: sum(math.exp(lp - top) for lp in logprobs) for token, logprobs in found.items()}
    return sum(weights[token] * p for token, p in mass.items()) / sum(mass.values())


def parse_evaluation(text: str) -> Evaluation:
    """The score (0–5) and reasoning of an evaluation-form reply.

    Strict JSON first; then the forms judges actually write: code fences, prose around
    the object, the paper's own brace-less ``"score": [4], "reasoning": "..."``, single
    quotes, a score as a one-element list or a string.
    """
    strict = _load_object(text)
    if strict is not None and "score" in strict:
        return _evaluation_from(strict, text)
    for candidate in _tolerant_candidates(text):
        found = _load_object(candidate)
        if found is not None and "score" in found:
            return _evaluation_from(found, text)
    match = _SCORE_FIELD.search(text)
    if match is None:
        raise ParseError(f"no score in reply: {_preview(text)}")
    reasoning = _REASONING_FIELD.search(text)
    return Evaluation(_checked_score(match.group(1), text), _unescape(reasoning.group(1)) if reasoning else None)


def _tolerant_candidates(text: str) -> list[str]:
    fenced = [m.group(1) for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    braced = [text[start : end + 1]] if 0 <= start < end else []
    bare = "{" + text.strip().rstrip(".").strip() + "}"
    return fenced + braced + [bare]


def _load_object(text: str) -> dict | None:
    """A JSON (or Python-literal) object, or None."""
    for load in (json.loads, ast.literal_eval):
        try:
            value = load(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return {str(key).lower(): item for key, item in value.items()}
    return None


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

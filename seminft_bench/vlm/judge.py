"""Score (reference, prediction) pairs with a named VLM judge: cached, retried, costed.

``Judge`` is thread-safe and synchronous to call: `Judge.score_pairs` runs a whole
batch and returns when every pair has a score or a recorded failure; `Judge.submit`
returns a future per pair, so a caller can keep generating while earlier outputs are
judged. A failure is never a score: it carries ``score=None``, the (redacted) error
and the raw reply.

Modes: ``reward=False`` asks for the evaluation form (JSON score + reasoning);
``reward=True`` asks for one number and scores it by Eq. 4 from the answer token's
log-probabilities, refusing a reply whose score tokens carry less than ``min_mass`` of
the probability. ``both_orders=True`` asks a second time with the images swapped
(position bias) and reports both scores and their mean.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from seminft_bench.imaging import ImageReadError, ImageSource
from seminft_bench.vlm.cache import ResponseCache, cache_key
from seminft_bench.vlm.clients import (
    DEFAULT_MAX_SIDE,
    DEFAULT_TIMEOUT_S,
    JudgeClient,
    Reply,
    Request,
    encode_image,
    make_client,
)
from seminft_bench.vlm.config import JudgeConfig, load_config
from seminft_bench.vlm.costs import CostLedger, Usage
from seminft_bench.vlm.parsing import DEFAULT_MIN_MASS, ParseError, expected_score, parse_evaluation
from seminft_bench.vlm.prompts import build_prompt
from seminft_bench.vlm.transport import PermanentError, TransientError, Transport, redact

EVALUATION_MAX_TOKENS = 1024
ORDERS = ("reference_first", "prediction_first")


@dataclass(frozen=True)
class Pair:
    """One thing to judge: a method's output (``prediction``) against the ``reference`` whose look it should match."""

    name: str
    reference: ImageSource
    prediction: ImageSource


@dataclass
class Judgement:
    """A judge's verdict on one pair. ``usage`` is what this pair was billed in this run (zero when cached)."""

    name: str
    judge: str
    mode: str
    score: float | None
    reasoning: str | None = None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    cached: bool = False
    raw: str | None = None
    order_scores: dict[str, float | None] | None = None

    def to_record(self) -> dict[str, object]:
        """The JSON line of ``seminft-bench judge``; ``raw`` only for failures, ``order_scores`` only when asked."""
        record = {
            "name": self.name,
            "judge": self.judge,
            "mode": self.mode,
            "score": self.score,
            "reasoning": self.reasoning,
            "error": self.error,
            "usage": self.usage.to_dict(),
            "cached": self.cached,
        }
        if self.error is not None:
            record["raw"] = self.raw
        if self.order_scores is not None:
            record["order_scores"] = self.order_scores
        return record


@dataclass
class _Answer:
    """The outcome of asking once, in one image order."""

    score: float | None
    reasoning: str | None
    error: str | None
    raw: str | None
    usage: Usage
    cached: bool


class Asker:
    """A named VLM with its client, reply cache (optional), cost ledger and retrying transport: asks one
    request and reads the reply, the same way for judges and for writers of free text (`vlm.writer`)."""

    def __init__(
        self,
        name: str,
        client: JudgeClient,
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        cache: ResponseCache | None = None,
        ledger: CostLedger | None = None,
        transport: Transport | None = None,
    ):
        self.name = name
        self.client = client
        self.max_side = max_side
        self.cache = cache
        self.ledger = ledger if ledger is not None else CostLedger()
        self.transport = transport if transport is not None else Transport()

    @classmethod
    def from_name(
        cls,
        name: str,
        *,
        config: JudgeConfig | None = None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        device: str | None = None,
        ledger: CostLedger | None = None,
        **options,
    ):
        """Build ``name`` from ``config`` (default: the built-in judges); ``base_url`` overrides its endpoint.

        ``options`` are the class's keyword arguments (``reward``, ``cache``, ``transport``, …).
        Raises `JudgeUnavailable` when its key, weights or GPU is missing.
        """
        config = config or load_config()
        spec = config.spec(name)
        client = make_client(spec.served_at(base_url or spec.base_url), timeout=timeout, device=device)
        return cls(name, client, ledger=ledger if ledger is not None else CostLedger(config.prices), **options)

    def _ask(self, request: Request, read: Callable[[Reply], tuple[float | None, str | None]]) -> _Answer:
        """``request`` answered from the cache or the client (retried while a reply does not ``read``)."""
        client = self.client
        key = cache_key(
            client.provider, client.model, request.prompt.version, request.images, request.params(),
            endpoint=client.endpoint,
        )
        hit = self._cached(key, read)
        if hit is not None:
            return hit

        billed = Usage()

        def send() -> tuple[Reply, float | None, str | None]:
            nonlocal billed
            reply = self.client.complete(request)
            self.ledger.record_call(self.name, reply.usage)
            billed += reply.usage
            reply = replace(reply, text=redact(reply.text, self.client.secrets))
            try:
                return (reply, *read(reply))
            except ParseError as error:
                raise TransientError(f"unparseable reply: {error}", raw=reply.text) from None

        try:
            reply, score, reasoning = self.transport.call(send)
        except (TransientError, PermanentError) as error:
            raw = getattr(error, "raw", None)
            return _Answer(None, None, redact(str(error), self.client.secrets), raw, billed, cached=False)
        if self.cache is not None:
            record = {"score": score, "reasoning": reasoning, "raw": reply.text, "usage": reply.usage.to_dict()}
            self.cache.put(key, {**record, "top_logprobs": reply.top_logprobs})
        return _Answer(score, reasoning, None, reply.text, billed, cached=False)

    def _cached(self, key: str, read: Callable[[Reply], tuple[float | None, str | None]]) -> _Answer | None:
        """The stored reply under ``key``, read again with today's parser (and ``min_mass``); None when there is
        none or it no longer reads (then it is asked again)."""
        record = self.cache.get(key) if self.cache is not None else None
        if record is None:
            return None
        try:
            score, reasoning = read(Reply(record["raw"], Usage(), record["top_logprobs"]))
        except ParseError:
            return None
        self.ledger.record_cached(self.name)
        return _Answer(score, reasoning, None, record["raw"], Usage(), cached=True)


class Judge(Asker):
    """A named judge with its client, cache (optional), cost ledger and transport."""

    def __init__(
        self,
        name: str,
        client: JudgeClient,
        *,
        reward: bool = False,
        both_orders: bool = False,
        max_side: int = DEFAULT_MAX_SIDE,
        max_tokens: int = EVALUATION_MAX_TOKENS,
        min_mass: float = DEFAULT_MIN_MASS,
        cache: ResponseCache | None = None,
        ledger: CostLedger | None = None,
        transport: Transport | None = None,
    ):
        super().__init__(name, client, max_side=max_side, cache=cache, ledger=ledger, transport=transport)
        self.mode = "reward" if reward else "evaluation"
        self.prompt = build_prompt(self.mode)
        self.both_orders = both_orders
        self.max_tokens = 1 if reward else max_tokens
        self.min_mass = min_mass
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def settings(self) -> dict[str, object]:
        """Everything that decides this judge's score for a pair, JSON-safe: a benchmark keys its results on it,
        so that changing any of it scores again."""
        settings = {
            "judge": self.name,
            "provider": self.client.provider,
            "model": self.client.model,
            "endpoint": self.client.endpoint,
            "template": self.prompt.version,
            "mode": self.mode,
            "params": self._request(()).params(),
            "both_orders": self.both_orders,
            "max_side": self.max_side,
        }
        return {**settings, "min_mass": self.min_mass} if self.mode == "reward" else settings

    def submit(self, pair: Pair) -> Future[Judgement]:
        """Start judging ``pair`` in the background."""
        with self._pool_lock:
            if self._pool is None:
                # Twice the concurrency: workers sleeping in back-off do not keep the transport's slots idle.
                self._pool = ThreadPoolExecutor(2 * self.transport.concurrency, thread_name_prefix=f"judge-{self.name}")
            return self._pool.submit(self._judge, pair)

    def score_pairs(self, pairs: Iterable[Pair]) -> list[Judgement]:
        """Judge every pair concurrently; the results come back in the order of ``pairs``."""
        futures = [self.submit(pair) for pair in pairs]
        return [future.result() for future in futures]

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _judge(self, pair: Pair) -> Judgement:
        try:
            reference = encode_image(pair.reference, self.max_side)
            prediction = encode_image(pair.prediction, self.max_side)
        except ImageReadError as error:  # one unreadable output must not stop the batch
            return Judgement(pair.name, self.name, self.mode, score=None, error=str(error))
        answers = {ORDERS[0]: self._ask(self._request((reference, prediction)), self._read)}
        if self.both_orders:
            answers[ORDERS[1]] = self._ask(self._request((prediction, reference)), self._read)
        failed = {order: answer for order, answer in answers.items() if answer.error is not None}
        scores = [answer.score for answer in answers.values()]
        errors = [f"{order}: {answer.error}" if self.both_orders else answer.error for order, answer in failed.items()]
        usage = Usage()
        for answer in answers.values():
            usage += answer.usage
        return Judgement(
            name=pair.name,
            judge=self.name,
            mode=self.mode,
            score=None if failed else sum(scores) / len(scores),
            reasoning=answers[ORDERS[0]].reasoning,
            error="; ".join(errors) or None,
            usage=usage,
            cached=all(answer.cached for answer in answers.values()),
            raw=next((answer.raw for answer in failed.values()), None),
            order_scores={order: answer.score for order, answer in answers.items()} if self.both_orders else None,
        )

    def _request(self, images: tuple[bytes, ...]) -> Request:
        return Request(self.prompt, images, max_tokens=self.max_tokens)

    def _read(self, reply: Reply) -> tuple[float, str | None]:
        if self.mode == "evaluation":
            evaluation = parse_evaluation(reply.text)
            return evaluation.score, evaluation.reasoning
        if reply.top_logprobs is None:
            raise PermanentError(
                f"{self.name} returned no token log-probabilities; reward mode needs top_logprobs "
                "(OpenAI, vLLM, SGLang, Gemini) or a local transformers model"
            )
        return expected_score(reply.top_logprobs, min_mass=self.min_mass), None

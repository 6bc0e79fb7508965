"""One retry and concurrency policy for every judge provider.

The SDKs' own retries are switched off, so this is the only place that decides when
to try again: rate limits (429, honouring ``Retry-After``), server errors (5xx),
timeouts, dropped connections and unparseable replies back off exponentially with
jitter; any other 4xx fails at once with the provider's message. A semaphore bounds
the requests in flight; back-off sleeps happen outside it so waiting work does not
hold a slot. Error texts pass through `redact` before they are stored anywhere.
"""

from __future__ import annotations

import email.utils
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

DEFAULT_CONCURRENCY = 16

# Shapes of provider credentials, masked even when the exact value is not known.
_KEY_PATTERNS = (
    re.compile(r"sk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"AIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)([?&](?:key|api_key)=)[^&\s'\"]+"),
)
REDACTED = "[REDACTED]"


class TransientError(Exception):
    """A failure worth retrying; ``retry_after`` is the provider's requested wait in seconds."""

    def __init__(self, message: str, retry_after: float | None = None, raw: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.raw = raw


class PermanentError(Exception):
    """A failure that retrying cannot fix (bad request, authentication, a missing capability)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: attempt ``n`` (from 0) waits ``min(max_delay, base_delay·2ⁿ)``
    scaled by a random factor in [0.5, 1], or the provider's ``Retry-After`` plus up to ``base_delay``."""

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt``; jitter keeps parallel retries apart."""
        if retry_after is not None:
            return retry_after + random.uniform(0.0, self.base_delay)
        return min(self.max_delay, self.base_delay * 2**attempt) * random.uniform(0.5, 1.0)


class Transport:
    """Runs provider calls with at most ``concurrency`` in flight, retrying transient failures.

    Share one instance between judges to bound their calls together.
    """

    def __init__(self, concurrency: int = DEFAULT_CONCURRENCY, retry: RetryPolicy = RetryPolicy()):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self.retry = retry
        self._slots = threading.BoundedSemaphore(concurrency)

    def call(self, send: Callable[[], T]) -> T:
        """``send()`` until it succeeds; re-raises `PermanentError` at once and the last
        `TransientError` once ``retry.max_attempts`` are spent (its message says how many)."""
        attempt = 0
        while True:
            try:
                with self._slots:
                    return send()
            except TransientError as error:
                attempt += 1
                if attempt == self.retry.max_attempts:
                    message = f"gave up after {attempt} attempts: {error}"
                    raise TransientError(message, error.retry_after, error.raw) from error
                time.sleep(self.retry.delay(attempt - 1, error.retry_after))


def is_transient_status(status: int) -> bool:
    """Rate limits and server errors, plus 408/409 (timeouts and conflicts providers ask clients to retry)."""
    return status in (408, 409, 429) or status >= 500


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds asked for by ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), else None."""
    if not headers:
        return None
    lowered = {key.lower(): value for key, value in headers.items()}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = lowered.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(0.0, when.timestamp() - time.time())
    return None


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every given secret and anything shaped like an API key replaced by ``[REDACTED]``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern in _KEY_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    return text

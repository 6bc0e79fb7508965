"""The one retry policy: what is retried, how long it waits, how many run at once, and redaction."""

import email.utils
import threading
import time

import pytest

from seminft_bench.vlm.transport import (
    PermanentError,
    RetryPolicy,
    TransientError,
    Transport,
    is_transient_status,
    parse_retry_after,
    redact,
)

FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.01)


def failing_then(outcomes):
    """A send() that raises or returns the given outcomes in turn, counting its calls."""
    calls = []

    def send():
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return send, calls


def test_transient_errors_are_retried_until_success():
    send, calls = failing_then([TransientError("429"), TransientError("timeout"), "answer"])
    assert Transport(2, FAST).call(send) == "answer"
    assert len(calls) == 3


def test_gives_up_after_max_attempts_with_the_last_error():
    send, calls = failing_then([TransientError(f"HTTP 500 #{i}", raw=f"raw {i}") for i in range(4)])
    with pytest.raises(TransientError, match=r"gave up after 4 attempts: HTTP 500 #3") as caught:
        Transport(2, FAST).call(send)
    assert caught.value.raw == "raw 3"
    assert len(calls) == 4


def test_permanent_errors_fail_at_once():
    send, calls = failing_then([PermanentError("HTTP 400: bad image"), "never reached"])
    with pytest.raises(PermanentError, match="bad image"):
        Transport(2, FAST).call(send)
    assert len(calls) == 1


def test_concurrency_is_bounded_and_used():
    transport = Transport(3, FAST)
    barrier = threading.Barrier(3, timeout=10)  # only passes when 3 calls are in flight together
    lock, in_flight, peak = threading.Lock(), [0], [0]

    def send():
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        barrier.wait()
        with lock:
            in_flight[0] -= 1
        return True

    threads = [threading.Thread(target=transport.call, args=(send,)) for _ in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 3 and not barrier.broken


def test_backoff_doubles_with_jitter_and_is_capped():
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 5.0), (10, 5.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter spreads parallel retries


def test_retry_after_is_a_floor():
    policy = RetryPolicy(base_delay=0.5)
    assert all(7.0 <= policy.delay(0, retry_after=7.0) <= 7.5 for _ in range(100))


def test_retry_after_header_forms():
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after({"Retry-After": future}) <= 31
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None and parse_retry_after(None) is None


def test_status_classes():
    assert all(is_transient_status(s) for s in (408, 409, 429, 500, 502, 503, 504))
    assert not any(is_transient_status(s) for s in (400, 401, 403, 404, 413, 422))


def test_redact_removes_known_secrets_and_key_shapes():
    text = (
        "HTTP 401: Incorrect API key provided: my-own-secret-value. "
        "Also sk-proj-abcdefghijklmnop, AIzaSyA1234567890abcdefghijklmn, "
        "Authorization: Bearer tok_1234567890abc and url ?key=zzzzzzzz&alt=json"
    )
    clean = redact(text, ["my-own-secret-value"])
    leaked = ["my-own-secret-value", "sk-proj-abcdefghijklmnop", "AIzaSyA1234567890abcdefghijklmn", "tok_1234567890abc"]
    assert not [secret for secret in leaked + ["zzzzzzzz"] if secret in clean]
    assert "HTTP 401: Incorrect API key provided:" in clean and "&alt=json" in clean

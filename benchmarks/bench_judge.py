"""450 judge calls (150 pairs × 3 judges) against a local test server: concurrency vs one at a time.

    .venv/bin/python benchmarks/bench_judge.py

The server (`seminft_bench.vlm.testserver.PlantedServer`, on 127.0.0.1) answers every
request after 500 ms and fails 20% of first attempts, alternating 429 (Retry-After: 1)
and 500. The three judges are gpt-4o and qwen3-vl-32b over the OpenAI chat-completions
protocol and gemini-2.5-flash over Gemini's generateContent, all pointed at that server
and sharing one transport: 16 requests in flight at most, default back-off.

Serial time is reported two ways: computed, as (server requests) × 0.5 s, which
leaves out every back-off wait and so flatters the serial client; and measured, by
judging 10 further pairs (2 with planted faults) one at a time and scaling up to 450.
The speed-up uses the computed figure. A second run over the same cache must make
no request at all.
"""

import os
import tempfile
import time

import numpy as np
import skimage.data
from PIL import Image

from seminft_bench.vlm import Judge, Pair, ResponseCache, Transport
from seminft_bench.vlm.testserver import Answer, Fault, PlantedServer

PAIRS, LATENCY_S, CONCURRENCY, SIDE, SERIAL_SAMPLE = 150, 0.5, 16, 512, 10
JUDGES = ("gpt-4o", "gemini-2.5-flash", "qwen3-vl-32b")
TARGET_SPEEDUP = 10.0


def planted_score(index: int) -> int:
    return index % 6


def planted_fault(index: int) -> Fault | None:
    """Every fifth pair fails its first attempt: 429 with Retry-After, then 500, alternately."""
    if index % 5:
        return None
    return Fault(429, "rate limited", retry_after=1) if (index // 5) % 2 == 0 else Fault(500, "server error")


def make_pair(index: int, photos: list[np.ndarray], rng: np.random.Generator) -> Pair:
    """A photo crop and a colour-shifted version of it; a 64×64 block in the prediction's corner
    carries the pair's index, which survives JPEG."""
    photo = photos[index % len(photos)]
    top, left = rng.integers(0, photo.shape[0] - 256), rng.integers(0, photo.shape[1] - 256)
    crop = Image.fromarray(photo[top : top + 256, left : left + 256]).resize((SIDE, SIDE), Image.BICUBIC)
    reference = np.asarray(crop)
    prediction = np.clip(reference * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
    prediction[:64, :64] = (40 + index // 16 * 12, 40 + index % 16 * 12, 128)
    return Pair(f"pair{index:03d}", Image.fromarray(reference), Image.fromarray(prediction))


def index_of(prediction: Image.Image) -> int:
    red, green, _ = prediction.getpixel((32, 32))
    return round((red - 40) / 12) * 16 + round((green - 40) / 12)


def plan(seen):
    index = index_of(seen.images[1])
    fault = planted_fault(index)
    if fault is not None and seen.attempt == 0:
        return fault
    return Answer(f'{{"score": [{planted_score(index)}], "reasoning": "planted"}}', input_tokens=1200, output_tokens=40)


def run(judges: list[Judge], pairs: list[Pair]) -> tuple[float, list]:
    start = time.perf_counter()
    futures = [judge.submit(pair) for judge in judges for pair in pairs]
    results = [future.result() for future in futures]
    return time.perf_counter() - start, results


def check(results: list, pairs: list[Pair]) -> None:
    expected = {pair.name: planted_score(int(pair.name[4:])) for pair in pairs}
    wrong = [r for r in results if r.error is not None or r.score != expected[r.name]]
    assert not wrong, f"{len(wrong)} judgements differ from the planted scores, e.g. {wrong[0]}"


def main() -> None:
    os.environ.update(OPENAI_API_KEY="sk-bench-not-a-real-key", GEMINI_API_KEY="bench-not-a-real-key")
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    rng = np.random.default_rng(0)
    pairs = [make_pair(i, photos, rng) for i in range(PAIRS)]
    sample = [make_pair(i, photos, rng) for i in range(PAIRS, PAIRS + SERIAL_SAMPLE)]

    with PlantedServer(plan, latency=LATENCY_S) as server, tempfile.TemporaryDirectory() as folder:
        urls = {"gemini-2.5-flash": server.gemini_url}

        def judges(cache: ResponseCache, transport: Transport, names=JUDGES) -> list[Judge]:
            return [
                Judge.from_name(n, base_url=urls.get(n, server.openai_url), cache=cache, transport=transport)
                for n in names
            ]

        first = judges(ResponseCache(f"{folder}/main"), Transport(CONCURRENCY))
        wall, results = run(first, pairs)
        check(results, pairs)
        calls = server.calls
        serial_computed = calls * LATENCY_S

        server.reset_counts()
        serial_judge = judges(ResponseCache(f"{folder}/serial"), Transport(1), names=JUDGES[:1])
        serial_wall, serial_results = run(serial_judge, sample)
        check(serial_results, sample)
        serial_measured = serial_wall / SERIAL_SAMPLE * len(JUDGES) * PAIRS

        server.reset_counts()
        second = judges(ResponseCache(f"{folder}/main"), Transport(CONCURRENCY))
        rerun_wall, rerun_results = run(second, pairs)
        check(rerun_results, pairs)
        rerun_calls = server.calls

    paid = sum(judge.ledger.entries[judge.name].calls for judge in first)
    print(f"judge calls: {len(results)} ({PAIRS} pairs x {len(JUDGES)} judges), latency {LATENCY_S * 1000:.0f} ms,")
    print(f"  20% of first attempts fail (429 Retry-After 1 s / 500); {CONCURRENCY} in flight at most")
    print(f"run 1: {wall:6.1f} s wall, {calls} requests ({calls - len(results)} retries), {paid} replies paid")
    print(f"serial, computed ({calls} requests x {LATENCY_S} s, no back-off waits): {serial_computed:6.1f} s")
    print(f"serial, measured ({SERIAL_SAMPLE} pairs one at a time: {serial_wall:.1f} s, scaled to {len(results)}): "
          f"{serial_measured:6.1f} s")
    speedup = serial_computed / wall
    print(f"speed-up vs computed serial: {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x: "
          f"{'met' if speedup >= TARGET_SPEEDUP else 'MISSED'}); vs measured serial: {serial_measured / wall:.1f}x")
    print(f"run 2 (same cache): {rerun_wall:6.2f} s wall, {rerun_calls} requests "
          f"({'no calls: confirmed' if rerun_calls == 0 else 'UNEXPECTED CALLS'})")
    print("every judgement equals its planted score in all runs")


if __name__ == "__main__":
    main()

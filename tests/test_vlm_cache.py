"""The reply cache: what its key depends on, persistence, and many writers at once."""

import subprocess
import sys
import threading

from seminft_bench.vlm import ResponseCache
from seminft_bench.vlm.cache import cache_key

BASE = dict(
    provider="openai",
    model="gpt-4o",
    template_version="fig8-v1",
    images=[b"ref", b"pred"],
    params={"mode": "evaluation", "max_tokens": 1024},
    endpoint="https://api.openai.com/v1/",
)


def test_key_depends_on_everything_that_shapes_the_reply():
    key = cache_key(**BASE)
    reordered = dict(reversed(list(BASE["params"].items())))
    assert key == cache_key(**{**BASE, "params": reordered})  # dict order is not content
    variants = [
        {"provider": "gemini"},
        {"model": "gpt-4o-mini"},
        {"template_version": "fig8-v2"},
        {"images": [b"ref", b"pred2"]},
        {"images": [b"pred", b"ref"]},  # the order is part of the question
        {"images": [b"refp", b"red"]},  # same bytes overall, split differently
        {"params": {"mode": "reward", "max_tokens": 1024}},
        {"params": {"mode": "evaluation", "max_tokens": 512}},
        {"endpoint": "http://127.0.0.1:8000/v1/"},  # another server of the same model id
    ]
    keys = {cache_key(**{**BASE, **change}) for change in variants}
    assert key not in keys and len(keys) == len(variants)


def test_records_round_trip_and_persist(tmp_path):
    usage = {"input_tokens": 9, "output_tokens": 4}
    record = {"score": 3.5, "reasoning": "close", "raw": '{"score": 3.5}', "usage": usage}
    with ResponseCache(tmp_path) as cache:
        assert cache.get("k") is None
        cache.put("k", record)
        assert cache.get("k") == record
    with ResponseCache(tmp_path) as reopened:
        assert reopened.get("k") == record and len(reopened) == 1


def test_threads_write_concurrently(tmp_path):
    cache = ResponseCache(tmp_path)

    def write(worker):
        for i in range(50):
            cache.put(f"{worker}-{i}", {"score": i % 6})
            assert cache.get(f"{worker}-{i}") == {"score": i % 6}

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 400
    cache.close()


WRITER = """
import sys
from seminft_bench.vlm.cache import ResponseCache
cache = ResponseCache(sys.argv[1], busy_timeout_s=60)
for i in range(150):
    cache.put(f"{sys.argv[2]}-{i}", {"score": i % 6, "writer": sys.argv[2]})
cache.close()
"""


def test_processes_write_concurrently(tmp_path):
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"p{n}"], stderr=subprocess.PIPE)
        for n in range(3)
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr.decode()
    with ResponseCache(tmp_path) as cache:
        assert len(cache) == 450
        assert cache.get("p2-149") == {"score": 5, "writer": "p2"}

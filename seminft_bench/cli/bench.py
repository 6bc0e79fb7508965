"""``seminft-bench``: run methods on evaluation sets and score them."""

from seminft_bench.cli.common import new_app

app = new_app("Benchmark preset-transfer methods: run, score, report.")

"""seminft-bench: reference-based photo preset transfer — data → model → bench."""

from seminft_bench.quiet import quiet_import_notices

__version__ = "0.1.0"

quiet_import_notices()

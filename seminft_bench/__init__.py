"""seminft-bench: reference-based photo preset transfer — data → model → bench."""

__version__ = "0.1.0"

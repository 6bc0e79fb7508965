"""Dataset construction (paper §3.5): cold-start quadruplets from video and presets, RL pairs.

Import the submodules directly: ``coldstart`` (the builder), ``videos`` and ``frames`` (what a usable
frame pair is), ``editing`` (reference augmentation), ``splits`` (representative test sets),
``export`` (Hugging Face folders, cards, push) and ``executors`` (local processes or Ray).
"""

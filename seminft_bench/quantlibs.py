"""bitsandbytes and torchao stay out of the commands that quantise nothing.

diffusers, transformers and peft import both libraries at their own import whenever they are installed,
quantised run or not (``diffusers.models.modeling_utils`` → ``diffusers.quantizers``, ``transformers.quantizers``,
``peft.tuners.lora``): about a second of every command, and their start-up notices on stderr. All three ask
whether a library is installed through ``importlib.util.find_spec``, which answers None for a module whose
``sys.modules`` entry is None. So a console command hides both before anything imports them (`keep_out`), and
a command that quantises (an NF4 or float8 base, 8-bit AdamW) lets them back in (`let_in`) once its config
says so, which is still before the model's libraries are imported. Python callers are left alone.
"""

from __future__ import annotations

import sys

LIBRARIES = ("bitsandbytes", "torchao")
IMPORTERS = ("diffusers", "transformers", "peft")
"""The libraries that look for `LIBRARIES` when they are imported, and decide then once and for all."""


def keep_out() -> None:
    """Make `LIBRARIES` look uninstalled to every import from now on, unless an importer has already looked."""
    if not any(name in sys.modules for name in IMPORTERS):
        for name in LIBRARIES:
            sys.modules.setdefault(name, None)


def let_in() -> None:
    """Undo `keep_out`, for a run that quantises. Raises if an importer was imported while they were hidden:
    it would go on believing them absent."""
    hidden = [name for name in LIBRARIES if name in sys.modules and sys.modules[name] is None]
    late = [name for name in IMPORTERS if name in sys.modules]
    if hidden and late:
        raise RuntimeError(f"{' and '.join(hidden)} were kept out of this process and {late[0]} is imported without them")
    for name in hidden:
        del sys.modules[name]

"""Third-party notices that say nothing about a run, kept off stderr one by one; everything else stays.

Every command that imports the model printed five such lines. They come from the quantisation
libraries, which diffusers, transformers and peft import at their own import whenever the libraries
are installed, quantised run or not, with no switch to turn that off:
``diffusers.models.modeling_utils`` → ``diffusers.quantizers`` (bitsandbytes, torchao),
``peft`` → ``transformers.modeling_utils`` → ``transformers.quantizers`` (torchao) and
``diffusers.hooks`` → ``peft.helpers`` (bitsandbytes). Our own code imports them only for a
quantised base or ``adamw8bit``, but by then they are long imported. So each notice is dropped by
its logger and its exact text (`IMPORT_NOTICES`, installed on import of `seminft_bench`), and
peft's caution about stacked adapters only around the stacking this model does on purpose
(`stacking_adapters`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

IMPORT_NOTICES = {
    # bitsandbytes' CPU backend (on CPUs with AVX-512 BF16) looks for the optional `kernels` package, which
    # downloads a 4-bit CPU matmul from the Hub; our NF4 runs on CUDA only.
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    # torchao 0.18 registers its Enums as pytree constants, a call torch 2.14 deprecates (torchao's, not ours).
    "torch.utils._pytree": "%s is an Enum subclass and is now natively supported by torch.compile",
    # diffusers 0.42.1 looks for torchao classes that torchao 0.17 moved, to unpickle torchao-serialised
    # checkpoints; we never load one (a float8 base is quantised as it loads).
    "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao` Tensor objects",
}
"""Logger name → the start of the one message of it that is dropped."""

STACKED_ADAPTER_WARNING = "Already found a `peft_config` attribute in the model"
"""peft's UserWarning whenever an adapter joins a model that has one (through diffusers' `add_adapter` and
`load_lora_adapter` alike: both inject it with `peft.inject_adapter_in_model`, which builds a new tuner that
finds the model's ``peft_config``)."""


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with ``start``; lets every other record of its logger through."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_import_notices() -> None:
    """Drop each of `IMPORT_NOTICES` at its logger (once per process)."""
    for name, start in IMPORT_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.start == start for f in logger.filters):
            logger.addFilter(_DropMessage(start))


@contextmanager
def stacking_adapters() -> Iterator[None]:
    """Add a LoRA adapter where others may already be: peft's `STACKED_ADAPTER_WARNING` asks us to be sure
    we want several, and we do (NFT trains ``rl`` and ``old`` over the frozen ``coldstart``; a pipeline runs
    a cold-start and an rl LoRA together). Only that warning is ignored, only inside this block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=STACKED_ADAPTER_WARNING, category=UserWarning)
        yield

"""Third-party notices that say nothing about a run, kept off stderr one by one; everything else stays.

bitsandbytes and torchao print them when they are imported. The console commands import neither unless the
run quantises (`quantlibs`), but a quantised run, and any Python program that imports diffusers,
transformers or peft, imports both: those three import them whenever they are installed. So each notice
is dropped by its logger and its exact text (`IMPORT_NOTICES`, installed on import of `seminft_bench`).
"""

from __future__ import annotations

import logging

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

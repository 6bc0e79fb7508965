"""What this installation can run: package versions, accelerator, weight caches.

Printed by every CLI's ``env`` command so a bug report or a results table can
name the exact software and hardware it came from.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "seminft-bench", "torch", "torchvision", "diffusers", "transformers", "peft", "accelerate",
    "open_clip_torch", "faiss-cpu", "decord", "av", "datasets", "numpy", "numba", "pillow",
    "colour-science", "scikit-image", "lpips", "piq", "openai", "google-genai",
)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_report() -> dict[str, str]:
    """Versions, accelerator and the folders where model weights are looked up (never downloaded)."""
    import torch

    report = {"python": platform.python_version(), "machine": platform.machine()}
    report.update({name: _version(name) for name in PACKAGES})
    if torch.cuda.is_available():
        report["device"] = f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    else:
        report["device"] = f"cpu ({os.cpu_count()} cores)"
    report["hf_home"] = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    report["torch_home"] = os.environ.get("TORCH_HOME", str(Path.home() / ".cache" / "torch"))
    return report

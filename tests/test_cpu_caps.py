"""cpu_caps: one probe of torch's reports, switched off by environment variables or `forced()`, and the
once-per-process warning for bf16 on a CPU without native bf16."""

from __future__ import annotations

import logging

import pytest
import torch

from lmforge.cpu import capabilities as cpu_caps
from lmforge.recipes.common import fast_bf16_available


@pytest.fixture
def reprobe(monkeypatch):
    """Clears the per-process answer so the test's environment is read; the real one comes back after."""
    for name in (cpu_caps.ENV_DISABLE_ONEDNN, cpu_caps.ENV_FORCE_CAPABILITY):
        monkeypatch.delenv(name, raising=False)
    cpu_caps.probed.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    cpu_caps.probed.cache_clear()


def test_probe_reports_what_torch_reports():
    caps = cpu_caps.probe_torch()
    assert caps.capability == torch.backends.cpu.get_cpu_capability()
    assert caps.onednn_linear == (torch.backends.mkldnn.is_available()
                                  and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    assert caps.onednn_bf16 == (caps.onednn_linear and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert not caps.native_bf16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    for feature in cpu_caps.FEATURES:  # a reason exactly where a feature is absent
        assert (caps.missing(feature) is None) == getattr(caps, feature)
    with pytest.raises(ValueError, match="unknown CPU feature 'avx9'"):
        caps.missing("avx9")


def test_answer_is_cached_per_process():
    assert cpu_caps.probed() is cpu_caps.probed()
    assert cpu_caps.get() is cpu_caps.probed()


@pytest.mark.parametrize("env, lost", [
    ({"LMFORGE_DISABLE_ONEDNN": "1"}, {"onednn_linear", "onednn_bf16"}),
    ({"LMFORGE_DISABLE_ONEDNN": "0"}, set()),
    ({"LMFORGE_FORCE_CPU_CAPABILITY": "avx2"}, {"onednn_bf16", "native_bf16"}),
    ({"LMFORGE_FORCE_CPU_CAPABILITY": "AVX512"}, {"native_bf16"}),
    ({"LMFORGE_DISABLE_ONEDNN": "yes", "LMFORGE_FORCE_CPU_CAPABILITY": "avx2"}, set(cpu_caps.FEATURES)),
])
def test_environment_variables_switch_features_off(reprobe, env, lost):
    real = cpu_caps.probe_torch()
    for name, value in env.items():
        reprobe.setenv(name, value)
    caps = cpu_caps.get()
    for feature in cpu_caps.FEATURES:
        assert getattr(caps, feature) == (getattr(real, feature) and feature not in lost), feature
        if feature in lost and getattr(real, feature):  # the reason names the variable that switched it off
            assert any(f"{name}={value}" in caps.missing(feature) for name, value in env.items())


@pytest.mark.parametrize("name, value, match", [
    ("LMFORGE_FORCE_CPU_CAPABILITY", "avx3", r"LMFORGE_FORCE_CPU_CAPABILITY=avx3: unknown CPU capability"),
    ("LMFORGE_DISABLE_ONEDNN", "maybe", r"LMFORGE_DISABLE_ONEDNN='maybe': expected 1 or 0"),
])
def test_bad_environment_values_are_named(reprobe, name, value, match):
    reprobe.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        cpu_caps.get()


def test_forced_takes_features_away_for_a_block_and_nests():
    real = cpu_caps.get()
    with cpu_caps.forced(capability="avx2") as avx2:
        assert cpu_caps.get() is avx2
        assert not avx2.onednn_bf16 and not avx2.native_bf16 and avx2.onednn_linear == real.onednn_linear
        assert avx2.capability in ("AVX2", "DEFAULT")
        with cpu_caps.forced(disable_onednn=True) as none:
            assert not (none.onednn_linear or none.onednn_bf16 or none.native_bf16)
            if real.onednn_linear:
                assert "cpu_caps.forced(disable_onednn=True)" in none.missing("onednn_linear")
        assert cpu_caps.get() is avx2
        with cpu_caps.forced(capability="avx512") as again:  # forcing never gives a feature back
            assert not again.onednn_bf16 and again.capability == avx2.capability
    assert cpu_caps.get() is real
    with pytest.raises(ValueError, match="unknown CPU capability 'sse'"), cpu_caps.forced(capability="sse"):
        pass


def test_demo_keeps_bf16_where_native_only():
    with cpu_caps.forced(capability="avx2"):
        assert fast_bf16_available() == torch.cuda.is_available()
    assert fast_bf16_available() == (torch.cuda.is_available() or cpu_caps.get().native_bf16)


def test_bf16_without_native_support_warns_once_per_process(monkeypatch, caplog):
    monkeypatch.setattr(cpu_caps, "_bf16_warned", False)
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        cpu_caps.warn_if_bf16_slow(torch.device("cuda"))  # not about GPUs
        if cpu_caps.get().native_bf16:
            cpu_caps.warn_if_bf16_slow("cpu")  # native here: nothing to say
        assert caplog.records == []
        with cpu_caps.forced(capability="avx2"):
            cpu_caps.warn_if_bf16_slow("cpu")
            cpu_caps.warn_if_bf16_slow("cpu")
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "\n" not in message and "slower than fp32" in message and "AVX2" in message

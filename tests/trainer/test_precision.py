"""The slow-precision warning: bf16 on a device that only emulates it is named, with what to set instead."""

from __future__ import annotations

import pytest
import torch

from trainer import precision


def test_fp32_is_never_slow():
    assert precision.slow_precision_warning("fp32", torch.device("cpu")) is None


@pytest.mark.parametrize("native", [True, False])
def test_bf16_warning_follows_the_hardware_answer(monkeypatch, native):
    # the CPU's bf16 support is the input here; this machine's own answer is whichever it is
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    warning = precision.slow_precision_warning("bf16", torch.device("cpu"))
    if native:
        assert warning is None
    else:
        assert warning is not None and "deepspeed.precision=fp32" in warning and "emulated" in warning


def test_this_cpu_answer_matches_onednn():
    # what the trainer reports is oneDNN's own answer, not a guess from the CPU name
    assert precision.bf16_is_native(torch.device("cpu")) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())

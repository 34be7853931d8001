"""The quickstart's written config: fp32 on a CPU without native bf16, unless the user chose a precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from launch.quickstart import QuickstartOptions, write_config


@pytest.mark.parametrize("native, overrides, expected", [
    (True, (), None),                                     # the recipe's bf16 stays
    (False, (), "fp32"),                                  # emulated bf16: fp32 instead, said on stdout
    (False, ("deepspeed.precision=bf16",), None),         # the user's choice wins (applied as --set)
])
def test_quickstart_precision_follows_the_cpu(monkeypatch, tmp_path, capsys, native, overrides, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    path = write_config(QuickstartOptions(out=tmp_path, overrides=overrides), Path("t"), Path("v"))
    written = yaml.safe_load(path.read_text())
    assert written.get("deepspeed", {}).get("precision") == expected
    said = capsys.readouterr().out
    assert ("training in fp32" in said) == (expected == "fp32")

"""Library output adjusted for users: no JSON-breaking constants, DeepSpeed's known-harmless ZeRO
warning dropped (and only it), the op build announced exactly when ninja has work to do."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from trainer.jsonable import dumps, finite_or_none


def test_non_finite_values_become_null_at_any_depth():
    value = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": (2, "x"), "e": 3}
    assert finite_or_none(value) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, "x"], "e": 3}
    text = dumps(value)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"constant {c} written")) == finite_or_none(value)


def test_zero_untested_optimizer_warning_is_dropped(one_rank_process_group, caplog):
    import logging

    from trainer.config import load_config
    from trainer.engine import build_engine

    cfg = load_config(None, ["deepspeed.zero_stage=1", "data.batch_size=2"])
    model = torch.nn.Linear(4, 2)
    with caplog.at_level(logging.WARNING):
        engine = build_engine(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), 1)
        logging.getLogger("DeepSpeed").warning("another DeepSpeed warning")  # still shown
    messages = [record.getMessage() for record in caplog.records if record.name == "DeepSpeed"]
    assert not any("untested optimizer" in m for m in messages), messages
    assert "another DeepSpeed warning" in messages
    engine.destroy()


def test_op_build_is_announced_only_when_ninja_has_work(tmp_path):
    from trainer.library_notes import SHM_OP_NAME, op_needs_build

    (tmp_path / "src.txt").write_text("source")
    (tmp_path / "build.ninja").write_text(f"rule copy\n  command = cp $in $out\nbuild obj.o: copy src.txt\n"
                                          f"build {SHM_OP_NAME}.so: copy obj.o\ndefault {SHM_OP_NAME}.so\n")
    assert op_needs_build(tmp_path)  # nothing built yet
    subprocess.run(["ninja", "-C", str(tmp_path)], check=True, capture_output=True)
    assert not op_needs_build(tmp_path)  # cached: silent
    (tmp_path / "obj.o").unlink()  # an interrupted build elsewhere removed an object file
    assert op_needs_build(tmp_path)

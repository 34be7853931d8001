"""`mdeq plan --fit-memory`: the largest batch whose plan plus the GPU overhead fits a budget."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import pytest

from launch.cli.main import main as mdeq_main
from mdeq.deq.options import DEQOptions
from mdeq.planner import PlanRequest, plan_memory
from mdeq.planner.fit import GIB, GpuOverhead, largest_batch

pytestmark = pytest.mark.usefixtures("single_thread")

REQUEST = PlanRequest("tiny", 1, 16, 16, deq=DEQOptions(f_max_iter=3, b_max_iter=3))


@functools.cache
def _plan_of_batch(batch: int):
    return plan_memory(replace(REQUEST, batch_size=batch))


def _plan(request: PlanRequest):
    """plan_memory of REQUEST at the request's batch, once per batch for the module (a dry run takes seconds)."""
    assert replace(request, batch_size=1) == REQUEST
    return _plan_of_batch(request.batch_size)


def _need(batch: int, overhead: GpuOverhead) -> int:
    peak = _plan(replace(REQUEST, batch_size=batch)).peak
    return peak + overhead.total(peak)


def test_the_answer_fits_and_one_more_sample_does_not():
    overhead = GpuOverhead(fixed_bytes=2 << 20, fraction=0.05, calibrated=True)
    budget = 24 << 20
    fit = largest_batch(REQUEST, budget, overhead, plan_fn=_plan)
    assert fit.batch_size > 2 and fit.plans_evaluated <= 5
    assert _need(fit.batch_size, overhead) <= budget < _need(fit.batch_size + 1, overhead)
    assert fit.overhead_bytes == overhead.total(fit.plan.peak)
    # the overhead is counted: without it more samples fit
    assert largest_batch(REQUEST, budget, GpuOverhead(0, 0.0), plan_fn=_plan).batch_size > fit.batch_size


def test_a_budget_below_one_sample_answers_zero():
    fit = largest_batch(REQUEST, 1 << 20, GpuOverhead(fixed_bytes=2 << 20, fraction=0.0), plan_fn=_plan)
    assert fit.batch_size == 0


def test_cli_answers_the_batch_and_labels_the_placeholder_overhead(capsys):
    argv = ["plan", "--model", "tiny", "--res", "16", "--f-max-iter", "3", "--b-max-iter", "3"]
    assert mdeq_main([*argv, "--fit-memory", str(24 / 1024), "--overhead-fixed-gib", str(2 / 1024),
                      "--overhead-fraction", "0.05", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = largest_batch(REQUEST, int(24 / 1024 * GIB), GpuOverhead(int(2 / 1024 * GIB), 0.05), plan_fn=_plan)
    assert out["fit"]["batch_size"] == expected.batch_size > 0 and out["fit"]["overhead"]["calibrated"] is True
    assert mdeq_main([*argv, "--fit-memory", "0.5"]) == 1  # the 1 GiB placeholder alone exceeds 0.5 GiB
    assert "PLACEHOLDER, not calibrated on a GPU" in capsys.readouterr().out
    assert mdeq_main([*argv, "--fit-memory", "1", "--overhead-fraction", "1.5"]) == 2

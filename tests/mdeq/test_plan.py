"""The memory planner: ZeRO arithmetic exactly, and the estimate against a measured peak."""

from __future__ import annotations

import json

import pytest
import torch

from mdeq.deq.options import DEQOptions
from mdeq.errors import MDEQError
from mdeq.planner import LiveTensorBytes, PlanRequest, measure_peak_memory, plan_memory, zero_bytes


def test_zero_bytes_follow_the_zero_paper_partitioning():
    n = 1000
    # fp32 Adam, no partitioning: 4 + 4 + 8 bytes per parameter
    assert zero_bytes(n, precision="fp32", zero_stage=0, world_size=4, optimizer="adam") == (
        zero_bytes(n, precision="fp32", zero_stage=0, world_size=1, optimizer="adam"))
    z0 = zero_bytes(n, precision="fp32", zero_stage=0, world_size=4, optimizer="adam")
    assert (z0.weights, z0.gradients, z0.optimizer_state) == (4000, 4000, 8000)
    # bf16 Adam (ZeRO paper's K = 12: fp32 master + two moments), stages 1, 2, 3 over 4 ranks
    z1 = zero_bytes(n, precision="bf16", zero_stage=1, world_size=4, optimizer="adam")
    assert (z1.weights, z1.gradients, z1.optimizer_state) == (2000, 2000, 3000)
    z2 = zero_bytes(n, precision="bf16", zero_stage=2, world_size=4, optimizer="adam")
    assert (z2.weights, z2.gradients, z2.optimizer_state) == (2000, 500, 3000)
    z3 = zero_bytes(n, precision="bf16", zero_stage=3, world_size=4, optimizer="adam")
    assert (z3.weights, z3.gradients, z3.optimizer_state) == (500, 500, 3000)
    # SGD with momentum keeps one moment, without momentum none
    assert zero_bytes(n, optimizer="sgd", momentum=0.9).optimizer_state == 4000
    assert zero_bytes(n, optimizer="sgd", momentum=0.0).optimizer_state == 0
    with pytest.raises(MDEQError, match="zero stage"):
        zero_bytes(n, zero_stage=4)


def test_live_tensor_bytes_counts_allocations_and_frees():
    meter = LiveTensorBytes()
    with meter:
        a = torch.zeros(256)  # 1 KiB
        b = torch.zeros(512)  # 2 KiB
        assert meter.current_bytes == 3 * 1024
        del a
        assert meter.current_bytes == 2 * 1024
        meter.reset_peak()
        c = b * 2  # +2 KiB
        del c
    assert meter.peak_bytes == 4 * 1024
    assert meter.current_bytes == 2 * 1024


# Three sizes, small solver caps so the measured steps stay quick on 2 shared cores.
SIZES = [
    pytest.param(PlanRequest("tiny", 4, 16, 16, deq=DEQOptions(f_max_iter=6, b_max_iter=6)), id="tiny-b4-16px"),
    pytest.param(PlanRequest("tiny", 4, 32, 32, overrides=(("channels", [16, 32]), ("head_channels", [8, 16])),
                             deq=DEQOptions(f_max_iter=6, b_max_iter=6)), id="tiny-wide-b4-32px"),
    pytest.param(PlanRequest("cifar-small", 2, 32, 32, deq=DEQOptions(f_max_iter=5, b_max_iter=5)),
                 id="cifar-small-b2-32px"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("request_", SIZES)
def test_plan_is_within_15_percent_of_measured_peak_on_cpu(request_, single_thread):
    plan = plan_memory(request_)
    measured = measure_peak_memory(request_, steps=2, device="cpu")
    assert measured.f_evaluations >= 1 and measured.b_evaluations >= 1  # the implicit path ran
    assert abs(plan.peak - measured.peak) / measured.peak < 0.15, (plan.peak, measured.peak)
    # the breakdown is populated and the solver's own buffer report is part of the solver buffers
    assert 0 < plan.solver_history <= plan.solver_buffers
    assert plan.activations > 0 and plan.implicit_backward_extras > 0


def test_plan_partitioning_lowers_the_per_device_peak_by_the_static_share():
    deq = DEQOptions(f_max_iter=12, b_max_iter=3, history=5)
    alone = plan_memory(PlanRequest("tiny", 2, 16, 16, deq=deq))
    zero3 = plan_memory(PlanRequest("tiny", 2, 16, 16, deq=deq, zero_stage=3, world_size=4))
    assert zero3.weights * 4 == pytest.approx(alone.weights, abs=4)
    assert zero3.optimizer_state * 4 == pytest.approx(alone.optimizer_state, abs=4)
    assert zero3.peak < alone.peak
    # the solver history is bounded by `history`, not the cap: 2 * B * history * D * 4 bytes (fp32)
    dim = 8 * 16 * 16 + 16 * 8 * 8
    assert alone.solver_history == 2 * 2 * 5 * dim * 4
    with pytest.raises(MDEQError, match="multiples of"):
        plan_memory(PlanRequest("tiny", 2, 15, 15))


def test_mdeq_plan_cli_prints_json_with_the_breakdown(capsys):
    from launch.cli.main import main

    code = main(["plan", "--model", "tiny", "--batch", "2", "--res", "16", "--precision", "bf16",
                 "--zero-stage", "2", "--world", "2", "--f-max-iter", "3", "--b-max-iter", "3", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    plan = out["plan"]
    for key in ("weights", "gradients", "optimizer_state", "activations", "solver_buffers",
                "implicit_backward_extras", "peak"):
        assert plan[key] > 0, key
    assert plan["f_max_iter"] == 3
    assert out["request"]["zero_stage"] == 2 and out["request"]["world_size"] == 2
    assert main(["plan", "--model", "no-such-model", "--batch", "2", "--res", "16"]) == 2


def test_plan_echoes_a_non_square_res_in_its_order(capsys):
    from launch.cli.main import main

    argv = ["plan", "--model", "tiny", "--batch", "2", "--res", "32x16", "--f-max-iter", "3", "--b-max-iter", "3"]
    assert main(argv) == 0
    assert "tiny: batch 2/device at 32x16 (WxH, as --res)" in capsys.readouterr().out.splitlines()[0]
    assert main([*argv, "--json"]) == 0
    request = json.loads(capsys.readouterr().out)["request"]
    assert (request["width"], request["height"]) == (32, 16)  # planned at the size echoed


def test_plan_of_an_unknown_model_names_the_closest_and_the_known_ones(capsys):
    import mdeq
    from launch.cli.main import main

    assert main(["plan", "--model", "imagenet-smal", "--batch", "2", "--res", "16"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'imagenet-smal'; did you mean 'imagenet-small' or" in err and "Traceback" not in err
    assert main(["plan", "--model", "foo", "--batch", "2", "--res", "16"]) == 2
    err = capsys.readouterr().err
    assert "did you mean" not in err  # nothing is close: the list alone
    assert f"known models: {', '.join(mdeq.list_models())}" in err

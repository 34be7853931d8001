"""CUDA speed switches: their fallbacks on the CPU, first call and shape change, and option checks."""

from __future__ import annotations

import pytest
import torch

from mdeq.deq import fastpath
from mdeq.deq.equilibrium import solve_equilibrium
from mdeq.deq.options import DEQOptions
from mdeq.errors import MDEQError

pytestmark = pytest.mark.usefixtures("single_thread")


def test_stop_check_every_resolves_per_device():
    assert fastpath.stop_check_every(0, torch.device("cpu")) == 1
    assert fastpath.stop_check_every(0, torch.device("cuda")) == fastpath.CUDA_STOP_CHECK_EVERY > 1
    assert fastpath.stop_check_every(7, torch.device("cpu")) == 7


def test_compiled_f_runs_eager_first_at_each_key_and_gives_up_after_too_many_keys():
    policy = fastpath.CompiledF(torch.nn.Identity(), "reduce-overhead")
    assert not policy.decide(("a",), "cuda")  # first call at a key: eager (warm-up)
    assert policy.decide(("a",), "cuda")
    assert not policy.decide(("b",), "cuda")  # shape change: one eager call at the new shape
    assert policy.decide(("b",), "cuda") and policy.decide(("a",), "cuda")
    for key in range(fastpath.MAX_COMPILED_KEYS):
        policy.decide((key,), "cuda")
    assert not policy.decide(("late",), "cuda") and not policy.decide(("late",), "cuda")
    assert not policy.decide(("a",), "cpu")  # never off CUDA
    assert not fastpath.CompiledF(torch.nn.Identity(), "off").decide(("a",), "cuda")


def test_a_compile_failure_falls_back_to_eager_for_good():
    def failing_compile(f, **kwargs):
        def compiled(*args):
            raise RuntimeError("no inductor backend here")
        return compiled

    wrapped = fastpath.CompiledF(torch.nn.Identity(), "default", compile_fn=failing_compile)
    wrapped.use_compiled = lambda z: wrapped.decide(("k",), "cuda")  # a CUDA call sequence, on the CPU
    z = torch.ones(2, 3)
    assert torch.equal(wrapped(z), z)  # first call: eager
    with pytest.warns(RuntimeWarning, match="runs eager"):
        assert torch.equal(wrapped(z), z)  # compiled call fails: eager result, warned
    assert wrapped.failed and not wrapped.decide(("k",), "cuda")


class _Map(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(6, dtype=torch.float64) * 0.5)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.weight.T + x)


def test_on_the_cpu_the_switches_change_nothing():
    x = torch.randn(2, 6, dtype=torch.float64)
    flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    results = []
    for compile_f, tf32, bench in (("off", False, True), ("reduce-overhead", True, False)):
        f = _Map()
        options = DEQOptions(compile_f=compile_f, tf32=tf32, cudnn_benchmark=bench, state_dtype=torch.float64)
        z, stats = solve_equilibrium(f, torch.zeros(2, 6, dtype=torch.float64), (x,), options=options,
                                     branch_sizes=[6])
        results.append((z, stats.residual_trace))
        if compile_f != "off":
            assert f._mdeq_compiled_f[compile_f].compiled is None  # torch.compile never ran
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    assert flags == (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
                     torch.backends.cudnn.allow_tf32)


def test_configure_backends_sets_tf32_and_autotuning_explicitly_on_cuda():
    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        fastpath.configure_backends(torch.device("cuda"), cudnn_benchmark=True, tf32=True)
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32  # the solvers' products stay fp32
        fastpath.configure_backends(torch.device("cuda"), cudnn_benchmark=False, tf32=False)
        assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_options_reject_bad_switch_values():
    with pytest.raises(MDEQError, match="deq.compile_f='fast' is unknown; use one of off, default"):
        DEQOptions(compile_f="fast")
    with pytest.raises(MDEQError, match="deq.stop_check_every must be >= 0"):
        DEQOptions(stop_check_every=-1)

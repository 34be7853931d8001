"""FLOPs, TFLOP/s and MFU of `mdeq bench step`: the count against a hand computation."""

from __future__ import annotations

import json

import pytest
import torch

from launch.cli.main import main as mdeq_main
from mdeq.bench.flops import count_step, peak_tflops
from mdeq.registry import create_model

pytestmark = pytest.mark.usefixtures("single_thread")


def _tiny_f_flops_per_image(res: int) -> int:
    """One f evaluation of ``tiny`` (channels 8, 16; expansion 2; no stem downsampling) by hand.

    Each conv costs 2 * H_out * W_out * C_out * C_in * k^2 multiply-adds-as-two; norms, ReLU,
    upsampling and adds are not counted.
    """
    c0, c1, hw0, hw1 = 8, 16, res * res, (res // 2) ** 2
    blocks = sum(2 * (2 * hw * (2 * c) * c * 9) for c, hw in ((c0, hw0), (c1, hw1)))  # 3x3 C->2C, 2C->C
    up = 2 * hw1 * c0 * c1  # branch 1 -> 0: 1x1 conv at the coarse size, then upsampled
    down = 2 * hw1 * c1 * c0 * 9  # branch 0 -> 1: one stride-2 3x3 conv
    post = 2 * hw0 * c0 * c0 + 2 * hw1 * c1 * c1  # post-fusion 1x1 convs
    return blocks + up + down + post


def _tiny(f_max_iter: int, b_max_iter: int, solver: str = "broyden"):
    torch.manual_seed(0)
    model = create_model("tiny").train()
    options = model.deq_options
    options.f_solver = options.b_solver = solver
    options.f_max_iter, options.b_max_iter, options.f_tol, options.b_tol = f_max_iter, b_max_iter, 1e-30, 1e-30
    images, labels = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))
    return count_step(model, images, labels, "fp32")


def test_one_f_evaluation_counts_what_the_hand_computation_says():
    flops = _tiny(3, 3)
    assert flops.f_eval == 2 * _tiny_f_flops_per_image(16) == 2 * 2_588_672
    assert flops.vjp == flops.f_eval  # the input-gradient of every conv costs its forward


def test_a_step_count_extrapolates_to_other_solver_counts():
    # fixed-point solvers do no matmuls of their own: the extrapolation is exact
    short, long = _tiny(4, 4, "fixed_point"), _tiny(7, 6, "fixed_point")
    assert (short.f_nfe, short.b_nfe, long.f_nfe, long.b_nfe) == (4, 4, 7, 6)
    assert long.step == short.for_step(7, 6) == short.step + 3 * short.f_eval + 2 * short.vjp
    # Broyden's low-rank products (counted in the step, not extrapolated) stay within
    # 4 passes x 2 FLOPs x batch x history x D per extra evaluation
    short, long = _tiny(4, 4), _tiny(7, 6)
    dim = 8 * 16 * 16 + 16 * 8 * 8
    assert 0 < long.step - short.for_step(7, 6) <= 5 * 8 * 2 * 8 * dim


def test_known_cards_peaks_match_by_name():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16", tf32=False) == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "fp32", tf32=False) == 51.2  # not the SXM entry
    assert peak_tflops("NVIDIA H200", "fp32", tf32=True) == 494.7
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp16", tf32=False) == 312.0
    assert peak_tflops("Some Future GPU", "bf16", tf32=False) is None and peak_tflops(None, "bf16", False) is None


def test_step_bench_prints_images_per_second_tflops_and_mfu(capsys):
    assert mdeq_main(["bench", "step", "--model", "tiny", "--batch", "2", "--res", "16", "--f-max-iter", "3",
                      "--b-max-iter", "3", "--steps", "1", "--warmup", "0", "--peak-tflops", "2.5", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["images_per_s"] == pytest.approx(2 / row["step_s_median"])
    assert row["f_eval_flops_per_image"] == _tiny_f_flops_per_image(16)
    assert row["tflops_per_s"] == pytest.approx(row["flops_per_step"] / row["step_s_median"] / 1e12)
    assert row["peak_tflops"] == 2.5 and row["mfu"] == pytest.approx(row["tflops_per_s"] / 2.5)
    # the step does at least its solver's f evaluations and VJPs
    assert row["flops_per_image"] > (row["f_nfe"] + row["b_nfe"] - 1) * row["f_eval_flops_per_image"]

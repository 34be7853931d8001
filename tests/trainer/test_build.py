"""The config -> engine/model/DEQ translation: batching, DEQ options, the DeepSpeed config."""

from __future__ import annotations

import pytest
import torch

import mdeq
from trainer import build
from trainer.config import load_config
from trainer.engine import NO_CLIP_THRESHOLD, ds_config
from trainer.errors import TrainerError


def test_global_batch_derives_accumulation_for_any_world_size():
    cfg = load_config(None, ["data.batch_size=8", "train.global_batch_size=64"])
    assert build.batching(cfg, 2).grad_accum_steps == 4
    assert build.batching(cfg, 8).grad_accum_steps == 1
    assert build.batching(cfg, 4).global_batch == 64


def test_batch_the_world_size_cannot_divide_is_refused_with_the_fix():
    cfg = load_config(None, ["data.batch_size=8", "train.global_batch_size=60"])
    with pytest.raises(TrainerError, match="cannot be split over 8 processes"):
        build.batching(cfg, 8)
    with pytest.raises(TrainerError, match="data.batch_size=8 does not divide"):
        build.batching(cfg, 3)  # 20 per process


def test_deq_options_use_registry_values_where_config_is_null():
    cfg = load_config(None, ["model.name=cifar-small", "deepspeed.precision=bf16", "deq.b_max_iter=7"])
    spec = mdeq.get_model_spec("cifar-small")
    options = build.deq_options(cfg)
    assert options.f_max_iter == spec.f_max_iter and options.b_max_iter == 7
    assert options.unrolled_steps == spec.pretrain_layers
    assert options.compute_dtype == torch.bfloat16  # 'auto' follows deepspeed.precision
    assert build.pretrain_steps(cfg) == spec.pretrain_steps
    fp32 = build.deq_options(load_config(None, ["deq.precision.compute=fp32", "deepspeed.precision=bf16"]))
    assert fp32.compute_dtype is None


def test_deq_speed_switches_reach_the_options():
    defaults = build.deq_options(load_config(None, []))
    assert (defaults.stop_check_every, defaults.compile_f, defaults.cudnn_benchmark, defaults.tf32) == (0, "off", True,
                                                                                                         True)
    cfg = load_config(None, ["deq.stop_check_every=3", "deq.compile_f=reduce-overhead", "deq.cudnn_benchmark=false",
                             "deq.tf32=false"])
    options = build.deq_options(cfg)
    assert (options.stop_check_every, options.compile_f, options.cudnn_benchmark, options.tf32) == (
        3, "reduce-overhead", False, False)


def test_model_overrides_reach_the_model():
    cfg = load_config(None, ["model.name=tiny", "model.channels=[4,8]", "model.num_branches=2"])
    model = build.build_model(cfg, num_classes=3)
    assert model.spec.channels == (4, 8) and model.spec.num_classes == 3


def test_ds_config_sets_clipping_optimizer_permission_and_precision():
    cfg = load_config(None, ["train.grad_clip=0", "deepspeed.zero_stage=3", "deepspeed.precision=bf16",
                             "data.batch_size=5", "deepspeed.extra.wall_clock_breakdown=true"])
    config = ds_config(cfg, grad_accum_steps=3)
    # explicit (DeepSpeed's default would be 1.0); "off" under ZeRO 1-3 = a threshold no norm reaches, so
    # DeepSpeed still checks the norm for NaN/Inf and drops such an update
    assert config["gradient_clipping"] == NO_CLIP_THRESHOLD
    assert ds_config(load_config(None, ["train.grad_clip=0", "deepspeed.zero_stage=0"]), 1)["gradient_clipping"] == 0.0
    assert ds_config(load_config(None, ["train.grad_clip=0.5"]), 1)["gradient_clipping"] == 0.5
    assert config["zero_allow_untested_optimizer"] is True
    assert config["train_micro_batch_size_per_gpu"] == 5 and config["gradient_accumulation_steps"] == 3
    assert "train_batch_size" not in config
    assert config["zero_optimization"]["stage"] == 3
    assert config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert config["wall_clock_breakdown"] is True  # deepspeed.extra merged last
    assert "torch_autocast" not in ds_config(load_config(None, ["deepspeed.precision=fp32"]), 1)


def test_evaluation_mode_is_the_mode_the_last_step_trained_in():
    # warm-up of 3 steps: steps 0, 1, 2 train unrolled, so after 1..3 steps the weights were last
    # trained unrolled and are evaluated so (in-run evaluation and `mdeq eval` share this rule)
    assert [build.evaluates_unrolled(done, 3, False) for done in range(6)] == [True] * 4 + [False] * 2
    assert not build.evaluates_unrolled(1, 0, False)  # no warm-up at all
    assert not build.evaluates_unrolled(-1, 3, False)  # a checkpoint without a step: equilibrium
    assert build.evaluates_unrolled(50, 3, True)  # the weight-tied model is always unrolled

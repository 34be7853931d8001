"""``train()`` twice in one process (as in-process sweeps do), SIGTERM in the first run's last step.

argv: first.yaml second.yaml result.json. The process sends itself SIGTERM at the start of the first
run's last step (through the loop's own ``train_step``), then waits past that run's grace period
before the second run, so a grace watchdog left armed by the first run would end the process (exit
75) instead of letting the second one finish. Writes both results to result.json.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import torch.distributed as dist

import trainer.loop as loop
from trainer.config import load_config

dist.init_process_group("gloo")  # owned here, as a sweep driver does: train() leaves it in place

first_cfg, second_cfg = load_config(sys.argv[1]), load_config(sys.argv[2])
real_train_step = loop.train_step
signalled: list[float] = []


def train_step_signalling_in_the_last_step(engine, batches, *, step, **kwargs):
    if not signalled and step == first_cfg.train.max_steps - 1:
        signalled.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)
    return real_train_step(engine, batches, step=step, **kwargs)


loop.train_step = train_step_signalling_in_the_last_step
first = loop.train(first_cfg)
handler_after_first = signal.getsignal(signal.SIGTERM)
# the first run's watchdog would fire grace_seconds after the signal: be past that before going on
time.sleep(max(0.0, signalled[0] + first_cfg.checkpoint.grace_seconds + 1.0 - time.monotonic()))
second = loop.train(second_cfg)
dist.destroy_process_group()
with open(sys.argv[3], "w") as out:
    json.dump({"first_steps": first.steps, "second_steps": second.steps, "signalled": bool(signalled),
               "sigterm_handler_restored": handler_after_first == signal.SIG_DFL}, out)

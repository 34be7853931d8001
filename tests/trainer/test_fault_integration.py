"""Fault tolerance end to end: real `mdeq train` processes killed, preempted, crashed and corrupted.

All runs train the ``tiny`` MDEQ on 64 synthetic 16x16 images (4 classes), 2 ranks x 4 samples per
step, 12 steps (1.5 epochs), ZeRO-1 fp32, short Broyden solves, a checkpoint every 3 steps. Start-up
dominates (torchrun + DeepSpeed, ~15-30 s per launch), so the launches are shared between the
assertions and run concurrently in two waves:

wave 1   reference   torchrun, 2 ranks, uninterrupted
         chaos       torchrun --max-restarts 3, 2 ranks: rank 1 dies in the middle of the save at step 6
                     (``MDEQ_TEST_CRASH_IN_SAVE``, first generation only); the restarted job must resume
                     from step 3; rank 1 of that generation is then SIGKILLed at a random step; the
                     job finishes by itself
         preempted   2 plain rank processes; SIGTERM to rank 1's process group (rank + its loader
                     worker, as SLURM does) after the first commit -> both ranks commit and exit 75
wave 2   relaunch    the preempted run relaunched after truncating a file of its newest checkpoint
         shrink      1 process resumes the reference's 2-process checkpoint, with a NaN injected at
                     step 13, MLflow on SQLite
         diverging   the same with train.max_bad_steps=1: the NaN recurs after every rollback ->
                     3 rollbacks, then exit code 3

Exactness: same world size and CPU fp32 kernels in the same order, so weights are compared bitwise.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
import yaml

from trainer.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
MAX_STEPS = 12
EVERY = 3

pytestmark = [pytest.mark.integration]


def _env(run: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MDEQ_SAMPLE_LOG=str(run / "samples"), **extra)
    return env


class Run:
    """One training run's folder, config and processes."""

    def __init__(self, root: Path, name: str, data: Path, **overrides):
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ckpt = self.dir / "ckpt"
        config = {
            "model": {"name": "tiny", "num_classes": 4},
            "data": {"dataset": "imagenet", "train_shards": str(data / "train"), "val_shards": str(data / "val"),
                     "image_size": 16, "eval_resize": 16, "batch_size": 4, "workers": 1, "eval_max_batches": 1},
            "train": {"max_steps": MAX_STEPS, "eval_every": 0, "log_every": 1, "seed": 0,
                      "output_dir": str(self.dir)},
            "optim": {"name": "sgd", "lr": 0.05},
            "deepspeed": {"zero_stage": 1, "precision": "fp32"},
            "deq": {"f_solver": "broyden", "f_max_iter": 4, "b_max_iter": 4, "pretrain_steps": 2},
            "checkpoint": {"dir": str(self.ckpt), "every_steps": EVERY, "keep_last": 2, "grace_seconds": 20},
            "tracking": {"enabled": False, "system_metrics": False},
        }
        for key, value in overrides.items():
            section, field = key.split("__")
            config[section][field] = value
        self.config = self.dir / "config.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.procs: list[subprocess.Popen] = []
        self.launches = 0

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.launch{self.launches}.log"

    def torchrun(self, nproc: int, max_restarts: int = 0, **env: str) -> subprocess.Popen:
        self.launches += 1
        # --standalone: a fresh rendezvous per restart. With a static --master-addr/--master-port
        # rendezvous the agent's store keeps the dead generation's gloo addresses and the restarted
        # ranks fail in connectFullMesh ("Connection refused").
        cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               f"--max-restarts={max_restarts}", "-m", "launch.cli.main", "train", "--config", str(self.config)]
        with open(self.log("torchrun"), "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(self.dir, **env), cwd=REPO,
                                    start_new_session=True)  # kill() takes the whole tree down
        self.procs = [proc]
        return proc

    def ranks(self, world: int, **env: str) -> list[subprocess.Popen]:
        """``world`` rank processes without a launcher, each in its own session (a process group with
        its loader workers, like one SLURM task), so exit codes are the trainer's own."""
        self.launches += 1
        port = str(free_port())
        self.procs = []
        for rank in range(world):
            rank_env = _env(self.dir, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                            LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env)
            with open(self.log(f"rank{rank}"), "w") as out:
                self.procs.append(subprocess.Popen(
                    [PYTHON, "-m", "launch.cli.main", "train", "--config", str(self.config)], stdout=out,
                    stderr=subprocess.STDOUT, env=rank_env, cwd=REPO, start_new_session=True))
        return self.procs

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"{self.dir.name} did not finish in {timeout} s; logs:\n{self.text()[-4000:]}") \
                    from None
        return codes

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()

    def text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("*.log")))

    def committed(self) -> list[int]:
        return sorted(int(d.name.split("_")[1]) for d in self.ckpt.glob("step_*") if (d / "COMMITTED.json").is_file())

    def final_weights(self) -> dict[str, torch.Tensor]:
        payload = torch.load(self.ckpt / f"step_{MAX_STEPS:09d}" / "model.pt", weights_only=True)
        return payload["state_dict"]

    def samples(self, world: int = 2) -> tuple[Counter, dict]:
        """(multiset of sample keys that made the final weights, {(rank, step, micro): attempts})."""
        attempts: dict[tuple[int, int, int], list[list[str]]] = defaultdict(list)
        for rank in range(world):
            for line in (self.dir / f"samples.rank{rank}").read_text().splitlines():
                entry = json.loads(line)
                attempts[(entry["rank"], entry["step"], entry["micro"])].append(entry["keys"])
        used = Counter(key for tries in attempts.values() for key in tries[-1])  # the last try is the one kept
        return used, attempts


def _wait_for(predicate, timeout: float, what: str, run: Run) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline or all(p.poll() is not None for p in run.procs):
            run.kill()
            raise AssertionError(f"{what} did not happen; logs:\n{run.text()[-4000:]}")
        time.sleep(0.05)


def _rank_process(agent: subprocess.Popen, rank: int, generation: int):
    """The psutil Process of ``rank`` in torchrun generation ``generation`` (None if not up yet)."""
    import psutil

    try:
        children = psutil.Process(agent.pid).children()
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            env = child.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if env.get("RANK") == str(rank) and env.get("TORCHELASTIC_RESTART_COUNT") == str(generation):
            return child
    return None


def _steps_logged(run: Run, rank: int) -> list[int]:
    path = run.dir / f"samples.rank{rank}"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def _all_finite(obj) -> bool:
    if torch.is_tensor(obj):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    return True


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run both waves once; the tests below assert on the outcome."""
    import data_pipelines as data

    root = tmp_path_factory.mktemp("fault")
    data_dir = root / "data"
    data.synth_imagenet(data_dir / "raw", classes=4, train_per_class=16, val_per_class=2, size=16, seed=0)
    data.write_imagenet_shards(data_dir / "raw", data_dir / "train", split="train", samples_per_shard=16,
                               progress=False)
    data.write_imagenet_shards(data_dir / "raw", data_dir / "val", split="val", samples_per_shard=8, progress=False)
    seed = int(os.environ.get("MDEQ_FAULT_TEST_SEED", time.time_ns() % 10_000))  # printed on failure
    rng = random.Random(seed)
    out: dict = {"seed": seed}

    reference = Run(root, "reference", data_dir)
    chaos = Run(root, "chaos", data_dir)
    preempted = Run(root, "preempted", data_dir)
    started = [reference, chaos, preempted]
    try:
        # ---- wave 1
        reference.torchrun(2)
        agent = chaos.torchrun(2, max_restarts=3, MDEQ_TEST_CRASH_IN_SAVE="6:1")
        preempted.ranks(2)

        def drive_chaos() -> None:
            # after the mid-save crash generation 1 resumes; SIGKILL its rank 1 at a random step
            kill_step = rng.randint(4, 8)  # well before the end, so the kill lands even on a fast machine
            out["kill_step"] = kill_step
            _wait_for(lambda: _rank_process(agent, 1, 1) is not None, 300, "the restart after the crash", chaos)
            logged_before = len(_steps_logged(chaos, 1))
            _wait_for(lambda: kill_step in _steps_logged(chaos, 1)[logged_before:], 300, f"step {kill_step}", chaos)
            victim = _rank_process(agent, 1, 1)
            if victim is not None:  # (it cannot have finished: max_steps is further on)
                victim.send_signal(signal.SIGKILL)
                out["killed"] = True

        def drive_preempted() -> None:
            # SIGTERM to rank 1's process group (rank + loader worker) once the first checkpoint is committed
            _wait_for(lambda: EVERY in preempted.committed(), 300, "the first commit", preempted)
            time.sleep(rng.uniform(0.0, 0.2))  # a step takes ~0.1-0.5 s: stay well before the end
            os.killpg(preempted.procs[1].pid, signal.SIGTERM)
            out["preempted_codes"] = preempted.wait(180)
            out["preempted_commits"] = preempted.committed()

        errors: list[BaseException] = []

        def guarded(drive):
            def run() -> None:
                try:
                    drive()
                except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                    errors.append(err)
            return run

        drivers = [threading.Thread(target=guarded(d)) for d in (drive_chaos, drive_preempted)]
        for thread in drivers:
            thread.start()
        for thread in drivers:
            thread.join()
        if errors:
            raise errors[0]
        out["reference_codes"] = reference.wait(240)
        out["chaos_code"] = chaos.wait(300)[0]

        # ---- wave 2
        newest = max(preempted.committed())
        model_states = preempted.ckpt / f"step_{newest:09d}" / "mp_rank_00_model_states.pt"
        model_states.write_bytes(model_states.read_bytes()[: model_states.stat().st_size // 2])  # truncated
        out["truncated_step"] = newest
        preempted.torchrun(2)

        shrink = Run(root, "shrink", data_dir, train__max_steps=MAX_STEPS + 4, train__inject_nan_at_step=MAX_STEPS + 1,
                     checkpoint__every_steps=2, tracking__enabled=True,
                     tracking__uri=f"sqlite:///{root / 'shrink' / 'mlflow.db'}")
        shutil.copytree(reference.ckpt, shrink.ckpt)
        started.append(shrink)
        shrink.ranks(1)
        # a NaN at the same step after every rollback: roll back 3 times, then give up
        diverging = Run(root, "diverging", data_dir, train__max_steps=MAX_STEPS + 2, train__inject_nan_at_step=MAX_STEPS,
                        train__max_bad_steps=1)
        shutil.copytree(reference.ckpt, diverging.ckpt)
        started.append(diverging)
        diverging.ranks(1)
        out["relaunch_codes"] = preempted.wait(240)
        out["shrink_codes"] = shrink.wait(240)
        out["diverging_codes"] = diverging.wait(240)
    finally:
        for run in started:  # whatever failed, leave no training processes behind
            run.kill()
    out.update(reference=reference, chaos=chaos, preempted=preempted, shrink=shrink, diverging=diverging)
    return out


@pytest.mark.timeout(900)
def test_killed_rank_under_torchrun_restarts_and_matches_uninterrupted_run(runs):
    reference, chaos = runs["reference"], runs["chaos"]
    assert runs["reference_codes"] == [0], reference.text()[-3000:]
    assert runs["chaos_code"] == 0, chaos.text()[-3000:]
    assert runs.get("killed"), f"rank 1 was not SIGKILLed at step {runs['kill_step']} (seed {runs['seed']})"
    text = chaos.text()
    assert "(exitcode: -9) local_rank: 1" in text, "torchrun saw no SIGKILLed rank 1"
    expected = reference.final_weights()
    got = chaos.final_weights()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs (seed {runs['seed']})"
    used, attempts = chaos.samples()
    reference_used, reference_attempts = reference.samples()
    assert attempts.keys() == reference_attempts.keys()
    # a replayed step reads exactly the samples it read the first time
    assert all(all(t == tries[0] for t in tries) for tries in attempts.values())
    assert used == reference_used  # every sample used exactly as often as in the uninterrupted run
    assert max(len(t) for t in attempts.values()) >= 2  # and some steps really were replayed


@pytest.mark.timeout(900)
def test_crash_in_the_middle_of_a_save_resumes_from_the_previous_commit(runs):
    text = runs["chaos"].text()
    assert "MDEQ_TEST_CRASH_IN_SAVE=6:1: dying in the middle of the save" in text
    assert "skipping checkpoint" in text and "step_000000006: no commit marker" in text
    assert "steps 3→12" in text  # generation 1 started from the previous committed checkpoint


@pytest.mark.timeout(900)
def test_sigterm_commits_exits_75_and_relaunch_matches(runs):
    from trainer.fault import PREEMPTED_EXIT_CODE

    preempted = runs["preempted"]
    assert runs["preempted_codes"] == [PREEMPTED_EXIT_CODE] * 2, preempted.text()[-3000:]
    commits = runs["preempted_commits"]
    # The signal came after the first commit (step EVERY) and the run stopped early with a commit;
    # retention (keep_last) may already have pruned step EVERY when the machine is fast.
    assert commits and min(commits) >= EVERY and EVERY < max(commits) < MAX_STEPS, commits
    assert runs["relaunch_codes"] == [0], preempted.text()[-3000:]
    expected, got = runs["reference"].final_weights(), preempted.final_weights()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    used, attempts = preempted.samples()
    assert used == runs["reference"].samples()[0]


@pytest.mark.timeout(900)
def test_truncated_checkpoint_file_is_skipped_with_a_warning(runs):
    text = runs["preempted"].text()
    step = runs["truncated_step"]
    assert "skipping checkpoint" in text and f"step_{step:09d}: mp_rank_00_model_states.pt has" in text
    assert "(truncated?)" in text


@pytest.mark.timeout(900)
def test_two_process_checkpoint_resumes_in_one_process_and_nan_step_is_skipped(runs):
    from mlflow.tracking import MlflowClient

    shrink = runs["shrink"]
    assert runs["shrink_codes"] == [0], shrink.text()[-3000:]
    text = shrink.text()
    assert "resuming a 2-process checkpoint with 1 processes" in text
    assert f"steps {MAX_STEPS}→{MAX_STEPS + 4}" in text
    client = MlflowClient(f"sqlite:///{shrink.dir / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "mdeq"]
    (run,) = client.search_runs([experiment.experiment_id])
    skipped = client.get_metric_history(run.info.run_id, "train/skipped_steps")
    assert max(m.value for m in skipped) == 1.0
    from trainer.checkpoint.files import safe_torch_load

    checked = 0
    for step in shrink.committed():
        for path in (shrink.ckpt / f"step_{step:09d}").glob("*.pt"):
            assert _all_finite(safe_torch_load(path)), f"{path} holds a non-finite value"
            checked += 1
    assert checked and max(shrink.committed()) == MAX_STEPS + 4


@pytest.mark.timeout(900)
def test_repeated_divergence_rolls_back_to_the_last_commit_then_aborts_with_exit_3(runs):
    from trainer.fault import DIVERGED_EXIT_CODE

    diverging = runs["diverging"]
    text = diverging.text()
    assert runs["diverging_codes"] == [DIVERGED_EXIT_CODE], text[-3000:]
    assert text.count(f"rolled back to step {MAX_STEPS}") == 3
    assert "training diverged" in text and "Traceback" not in text
    assert diverging.committed() == [MAX_STEPS - EVERY, MAX_STEPS]  # nothing saved from the bad steps

"""Submitting the sbatch script and looking at the job afterwards (``mdeq launch slurm --status JOB``).

Only the ordinary client commands are used (``sbatch --parsable``, ``scontrol show job -o``), so
this works on any cluster the user can submit to, with or without an accounting database.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from launch.errors import LaunchError
from launch.slurm import CHECKPOINT_DIR_COMMENT, SlurmJob

_FIELD = re.compile(r"(\w+)=(\S*)")
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _client(argv: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise LaunchError(f"{argv[0]} not found: {what} on a SLURM login node (or set PATH)") from None


def submit(path: Path, job: SlurmJob) -> int:
    """sbatch the script; print the job id and how to follow the job."""
    done = _client(["sbatch", "--parsable", str(path)], f"run this, or `sbatch {path}`,")
    if done.returncode != 0:
        raise LaunchError(f"sbatch refused {path}: {done.stderr.strip() or done.stdout.strip()}")
    job_id = done.stdout.strip().split(";")[0]
    logs = Path(job.log_dir)
    print(f"Submitted batch job {job_id}")
    print(f"  squeue -j {job_id}                          # queued / running")
    print(f"  tail -f {logs / f'{job.job_name}-{job_id}.out'}   # the batch script (signals, requeues)")
    print(f"  {logs / f'{job.job_name}-{job_id}-node<N>.log'}   # one per node")
    print(f"  {logs / 'ranks' / 'rank-<R>.log'}   # one per rank")
    print(f"  mdeq launch slurm --status {job_id}             # state, restarts, last committed step")
    return 0


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol show job -o``'s fields for one job; LaunchError when the controller does not know it."""
    if not job_id.isdigit():
        raise LaunchError(f"--status expects a job id (a number), got {job_id!r}")
    done = _client(["scontrol", "show", "job", "-o", job_id], "run --status")
    if done.returncode != 0 or "JobId=" not in done.stdout:
        raise LaunchError(f"job {job_id} is not known to the SLURM controller ({done.stderr.strip() or 'no record'}): "
                          "finished jobs are forgotten after MinJobAge; look at its logs, or `sacct -j "
                          f"{job_id}` where accounting is enabled")
    return dict(_FIELD.findall(done.stdout.splitlines()[0]))


def checkpoint_dir_of(script: str) -> Path | None:
    """The checkpoint folder ``mdeq launch slurm`` recorded in the script it wrote."""
    try:
        text = Path(script).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(CHECKPOINT_DIR_COMMENT):
            return Path(line[len(CHECKPOINT_DIR_COMMENT):].strip())
    return None


def last_committed_step(checkpoint_dir: Path) -> int | None:
    """The newest step with a commit marker (the one a restart resumes from), None when there is none."""
    steps = [int(m.group(1)) for d in checkpoint_dir.glob("step_*")
             if (m := _STEP_DIR.match(d.name)) and (d / "COMMITTED.json").is_file()]
    return max(steps) if steps else None


def _failed_steps(batch_log: str | None) -> str:
    """", N after a failed step" from the count the script keeps next to its log (empty when none)."""
    if not batch_log:
        return ""
    try:
        failures = int(Path(batch_log).with_suffix(".failures").read_text().strip())
    except (OSError, ValueError):
        return ""
    return f" ({failures} after a failed job step)"


def status_lines(fields: dict[str, str]) -> list[str]:
    lines = [f"job {fields.get('JobId')} ({fields.get('JobName')}): {fields.get('JobState')}"
             + (f" ({fields['Reason']})" if fields.get("Reason", "None") != "None" else ""),
             f"  restarts: {fields.get('Restarts', '0')}{_failed_steps(fields.get('StdOut'))}",
             f"  nodes: {fields.get('NodeList', '(none yet)')}",
             f"  run time: {fields.get('RunTime')} of {fields.get('TimeLimit')}"]
    checkpoints = checkpoint_dir_of(fields.get("Command", ""))
    if checkpoints is None:
        lines.append("  last committed step: unknown (the job's script names no checkpoint folder: not a "
                     "training job written by mdeq launch slurm)")
    else:
        step = last_committed_step(checkpoints)
        lines.append(f"  last committed step: {step if step is not None else 'none yet'} ({checkpoints})")
    lines.append(f"  batch log: {fields.get('StdOut')}")
    return lines


def print_status(job_id: str) -> int:
    print("\n".join(status_lines(job_fields(job_id))))
    return 0

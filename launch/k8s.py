"""``mdeq launch k8s --dry-run``: a Kubeflow PyTorchJob manifest running the job on N pods.

Each pod runs ``mdeq launch torchrun`` (static rendezvous, the same preflight as everywhere) with the
node rank and master the training operator injects (``PET_NODE_RANK``/``PET_MASTER_ADDR`` when
``nprocPerNode`` is set, else ``RANK``/``MASTER_ADDR``). Pods inherit no environment, so the
forwarded variables are written into ``env:``. Checkpoints must live on a volume every pod mounts
(``--volume CLAIM:/path``; with several pods checkpoints outside one are refused, and an MLflow SQLite
store or logs outside one are warned about); variables whose values are paths of the launching machine
are not forwarded. ``restartPolicy: OnFailure`` plus ``backoffLimit`` restart the job, which
resumes from the last committed checkpoint. Apply it with ``kubectl apply -f``.
"""

from __future__ import annotations

import argparse
import copy
import posixpath
import shlex
import sys

from launch.errors import LaunchError


def register(forms: argparse._SubParsersAction, add_common) -> None:
    parser = forms.add_parser("k8s", help="print a Kubeflow PyTorchJob manifest (use with --dry-run)")
    parser.add_argument("--nodes", type=int, required=True, help="pods (one torchrun node each)")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="nvidia.com/gpu per pod (0: CPU pods)")
    parser.add_argument("--nproc-per-node", type=int, default=None, help="default: --gpus-per-node, or 1")
    parser.add_argument("--image", required=True, help="container image with this project installed")
    parser.add_argument("--name", default="mdeq-train", help="job name")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--cpu", default=None, help="CPU request per pod, e.g. 16")
    parser.add_argument("--memory", default=None, help="memory request per pod, e.g. 64Gi")
    parser.add_argument("--volume", action="append", default=[], metavar="CLAIM:/MOUNT",
                        help="mount a PersistentVolumeClaim (shared checkpoints and data; repeatable)")
    parser.add_argument("--backoff-limit", type=int, default=3, help="job restarts before giving up")
    parser.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts inside a pod")
    parser.add_argument("--workdir", default="/workspace", help="working directory inside the image")
    parser.add_argument("--master-port", type=int, default=23456)
    add_common(parser)
    parser.set_defaults(func=run)


def pod_command(args: argparse.Namespace, nproc: int, program) -> list[str]:
    """``bash -c`` so the operator's per-pod variables expand inside the pod."""
    tail = ["--nproc-per-node", str(nproc), "--max-restarts", str(args.max_restarts), "--log-dir", args.log_dir]
    if program.script:
        tail += ["--script", program.script]
    tail += ["--", *program.args]
    line = (f"exec mdeq launch torchrun --nnodes {args.nodes} --node-rank \"${{PET_NODE_RANK:-$RANK}}\" "
            f"--master-addr \"${{PET_MASTER_ADDR:-$MASTER_ADDR}}\" --master-port \"${{PET_MASTER_PORT:-$MASTER_PORT}}\" "
            f"{shlex.join(tail)}")
    return ["bash", "-c", line]


def manifest(args: argparse.Namespace, nproc: int, program, env: dict[str, str]) -> dict:
    """The PyTorchJob as a plain dict (dumped to YAML)."""
    mounts, volumes = [{"name": "dshm", "mountPath": "/dev/shm"}], [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    for i, item in enumerate(args.volume):
        claim, sep, mount = item.partition(":")
        if not sep or not claim or not mount.startswith("/"):
            raise LaunchError(f"--volume expects CLAIM:/absolute/mount/path, got {item!r}")
        mounts.append({"name": f"data{i}", "mountPath": mount})
        volumes.append({"name": f"data{i}", "persistentVolumeClaim": {"claimName": claim}})
    resources: dict = {}
    if args.gpus_per_node > 0:
        resources["limits"] = {"nvidia.com/gpu": args.gpus_per_node}
    requests = {k: v for k, v in (("cpu", args.cpu), ("memory", args.memory)) if v}
    if requests:
        resources["requests"] = requests
    container = {"name": "pytorch", "image": args.image, "workingDir": args.workdir,
                 "command": pod_command(args, nproc, program),
                 "env": [{"name": k, "value": v} for k, v in env.items()],
                 "resources": resources, "volumeMounts": mounts}

    def replica(count: int) -> dict:
        # copies, not shared objects: YAML would write a shared dict once with an anchor (&id001) and
        # refer to it (*id001), which kubectl accepts but people and many tools do not read as intended
        return {"replicas": count, "restartPolicy": "OnFailure",
                "template": {"spec": {"containers": [copy.deepcopy(container)], "volumes": copy.deepcopy(volumes)}}}

    specs = {"Master": replica(1)}
    if args.nodes > 1:
        specs["Worker"] = replica(args.nodes - 1)
    metadata = {"name": args.name, **({"namespace": args.namespace} if args.namespace else {})}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": metadata,
            "spec": {"nprocPerNode": str(nproc), "runPolicy": {"backoffLimit": args.backoff_limit},
                     "pytorchReplicaSpecs": specs}}


def _is_host_path(value: str) -> bool:
    """A value naming this machine's filesystem: an absolute path, a file:// URL or a SQLite file."""
    return value.startswith(("/", "file:/", "sqlite:/"))


def pod_environment(env: dict[str, str], explicit: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """``env`` without the variables forwarded from this shell whose values are paths of this machine
    (a pod has another filesystem); ``--env`` values are kept as given. Returns (env, dropped names)."""
    dropped = sorted(k for k, v in env.items() if k not in explicit and _is_host_path(v))
    return {k: v for k, v in env.items() if k not in dropped}, dropped


def _in_pod(path: str, workdir: str) -> str:
    return posixpath.normpath(path if path.startswith("/") else posixpath.join(workdir, path))


def _shared(path: str, mounts: list[str]) -> bool:
    return any(path == m.rstrip("/") or path.startswith(m.rstrip("/") + "/") for m in mounts)


def check_pod_storage(args: argparse.Namespace, cfg, env: dict[str, str], mounts: list[str]) -> None:
    """Checkpoints, the MLflow store and the logs must outlive a pod and, with several pods, be shared.

    Checkpoints outside every ``--volume`` with more than one pod are refused: every pod writes its
    ranks' files into its own filesystem, so no pod would hold a whole checkpoint. A SQLite MLflow store
    or logs outside a volume, or checkpoints with a single pod, are warned about: they go with the pod.
    """
    pods = args.nodes
    problems: list[tuple[str, str, bool]] = []  # (what, path in the pod, refuse)
    if cfg is not None:
        checkpoints = _in_pod(cfg.checkpoint.dir, args.workdir)
        if not _shared(checkpoints, mounts):
            problems.append((f"checkpoint.dir ({checkpoints})", checkpoints, pods > 1))
        uri = cfg.tracking.uri or env.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
        if cfg.tracking.enabled and uri.startswith("sqlite:///"):
            store = _in_pod(uri[len("sqlite:///"):], args.workdir)
            if not _shared(store, mounts):
                problems.append((f"the MLflow store ({uri})", store, False))
    logs = _in_pod(args.log_dir, args.workdir)
    if not _shared(logs, mounts):
        problems.append((f"--log-dir ({logs})", logs, False))
    where = (f"the --volume mounts ({', '.join(mounts)})" if mounts else "any --volume mount (there is none)")
    refused = [what for what, _, refuse in problems if refuse]
    if refused:
        raise LaunchError(f"{', '.join(refused)} would be on each pod's own storage, outside {where}: with "
                          f"{pods} pods no pod holds a whole checkpoint and none survives a restart. Mount a "
                          "shared PersistentVolumeClaim (--volume CLAIM:/ckpt) and point checkpoint.dir under it")
    for what, _, _ in problems:
        print(f"mdeq launch k8s: warning: {what} is on pod storage, outside {where}: it is lost when the pod "
              "goes; mount a --volume there (or use an http:// MLflow server)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import yaml

    from launch.cli.launch import launch_env, program_args
    from launch.environment import parse_assignments
    from launch.preflight import load_train_config
    from launch.torchrun import WorkerProgram

    if args.nodes < 1:
        raise LaunchError("--nodes must be at least 1")
    if not args.dry_run:
        raise LaunchError("mdeq launch k8s only prints a manifest: add --dry-run and apply the output with "
                          "`kubectl apply -f -`")
    # paths inside the pod are the image's, not this machine's: keep them as given
    program = WorkerProgram(args=program_args(args), script=args.script, log_dir=args.log_dir)
    cfg = load_train_config(program.args)
    nproc = args.nproc_per_node or (args.gpus_per_node if args.gpus_per_node > 0 else 1)
    explicit = parse_assignments(args.env)
    env, dropped = pod_environment(launch_env(args), explicit)
    mounts = [item.partition(":")[2] for item in args.volume]
    check_pod_storage(args, cfg, env, mounts)
    for name in dropped:
        print(f"mdeq launch k8s: not forwarding {name} from this shell: its value is a path of this machine "
              f"(pass --env {name}=PATH-IN-THE-POD to set it)", file=sys.stderr)
    print(f"# mdeq launch k8s: {args.nodes} pod(s) x {nproc} process(es); apply with kubectl apply -f FILE")
    print(yaml.safe_dump(manifest(args, nproc, program, env), sort_keys=False), end="")
    return 0

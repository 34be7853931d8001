"""``mdeq launch k8s --dry-run``: a Kubeflow PyTorchJob manifest running the job on N pods.

Each pod runs ``mdeq launch torchrun`` (static rendezvous, the same preflight as everywhere) with the
node rank and master the training operator injects (``PET_NODE_RANK``/``PET_MASTER_ADDR`` when
``nprocPerNode`` is set, else ``RANK``/``MASTER_ADDR``). Pods inherit no environment, so the
forwarded variables are written into ``env:``. Checkpoints must live on a volume every pod mounts
(``--volume CLAIM:/path``); ``restartPolicy: OnFailure`` plus ``backoffLimit`` restart the job, which
resumes from the last committed checkpoint. Apply it with ``kubectl apply -f``.
"""

from __future__ import annotations

import argparse
import shlex

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
        return {"replicas": count, "restartPolicy": "OnFailure",
                "template": {"spec": {"containers": [container], "volumes": volumes}}}

    specs = {"Master": replica(1)}
    if args.nodes > 1:
        specs["Worker"] = replica(args.nodes - 1)
    metadata = {"name": args.name, **({"namespace": args.namespace} if args.namespace else {})}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": metadata,
            "spec": {"nprocPerNode": str(nproc), "runPolicy": {"backoffLimit": args.backoff_limit},
                     "pytorchReplicaSpecs": specs}}


def run(args: argparse.Namespace) -> int:
    import yaml

    from launch.cli.launch import launch_env, program_args
    from launch.preflight import load_train_config
    from launch.torchrun import WorkerProgram

    if args.nodes < 1:
        raise LaunchError("--nodes must be at least 1")
    if not args.dry_run:
        raise LaunchError("mdeq launch k8s only prints a manifest: add --dry-run and apply the output with "
                          "`kubectl apply -f -`")
    # paths inside the pod are the image's, not this machine's: keep them as given
    program = WorkerProgram(args=program_args(args), script=args.script, log_dir=args.log_dir)
    load_train_config(program.args)
    nproc = args.nproc_per_node or (args.gpus_per_node if args.gpus_per_node > 0 else 1)
    env = launch_env(args)
    print(f"# mdeq launch k8s: {args.nodes} pod(s) x {nproc} process(es); apply with kubectl apply -f FILE")
    print(yaml.safe_dump(manifest(args, nproc, program, env), sort_keys=False), end="")
    return 0

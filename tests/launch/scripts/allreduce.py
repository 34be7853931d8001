"""Smoke program for launch tests: join the process group, all-reduce, report the layout and sum."""

import json
import os
import socket

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print("LAYOUT " + json.dumps({
    "rank": rank, "world_size": world, "local_rank": int(os.environ["LOCAL_RANK"]),
    "master_addr": os.environ["MASTER_ADDR"], "master_port": os.environ["MASTER_PORT"],
    "sum": value.item(), "host": socket.gethostname(), "gloo_ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
    "mlflow_uri": os.environ.get("MLFLOW_TRACKING_URI"),
}), flush=True)
dist.barrier()
dist.destroy_process_group()

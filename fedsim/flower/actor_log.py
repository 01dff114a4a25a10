"""Opt-in record, written by the client processes themselves, of when each call ran and
on which resources.

With FEDSIM_ACTOR_LOG=<folder> in the environment of the processes that run the
ClientApp (inherited from the driver by a private Ray instance; set before `ray start`
on every node of a cluster), each train and evaluate call that completes appends one
JSON line to <folder>/<host>-<pid>.jsonl: its start and end time, the Ray node,
resources and GPU ids of the actor it ran in, whether that actor sees CUDA and how
much GPU memory torch holds in it. That
is how one sees, from the actors and not from the driver's guess, that clients ran
side by side on a shared GPU, and which node ran which client. Unset, it costs one
environment lookup per call.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedsim.flower.bundles import BUNDLE

ENV = "FEDSIM_ACTOR_LOG"


def log_calls(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A Flower mod: records each call the ClientApp completes if $FEDSIM_ACTOR_LOG is set."""
    folder = os.environ.get(ENV)
    if not folder:
        return call_next(msg, context)
    start = time.time()
    reply = call_next(msg, context)
    bundle = msg.content[BUNDLE]  # fedsim names the clients and round in every message
    entry = {
        "kind": msg.metadata.message_type,
        "partitions": list(bundle["clients"]),
        "round": bundle["round"],
        "start": start,
        "end": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cuda": bool((torch := sys.modules.get("torch")) and torch.cuda.is_available()),
        # the most GPU memory torch's allocator has held in this process (0 off the GPU)
        "cuda_reserved": _cuda_reserved(torch),
        **_ray_placement(),
    }
    with open(Path(folder) / f"{socket.gethostname()}-{os.getpid()}.jsonl", "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return reply


def _cuda_reserved(torch: Any) -> int:
    if torch is None or not torch.cuda.is_initialized():
        return 0
    return torch.cuda.max_memory_reserved()


def _ray_placement() -> dict[str, Any]:
    """What Ray gave this actor; nothing outside Ray (a SuperNode's ClientApp process)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return {}
    context = ray.get_runtime_context()
    return {
        "node_id": context.get_node_id(),
        "resources": context.get_assigned_resources(),
        "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }

"""`simulate.py` with one client that misbehaves on purpose, through the real engine.

    python -m tests.faulty_clients FAULT:ROUND:CLIENT SIMULATE_OPTIONS...

FAULT is `freeze` (the client's training never returns) or `kill` (the process
running the client dies, as from the OOM killer or a segfault). Everything else is
fedsim's own: the client app (given a per-client function that misbehaves once, its
seam), its watchdog, the round loop, the engine. The fault strikes once, in the
client's training in that round; later rounds are left alone.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from functools import partial

from flwr.app import MessageType

from fedsim.flower import client_app
from fedsim.flower.bundles import BundleInfo
from fedsim.front import cli
from fedsim.ground.config import RunConfig
from fedsim.ground.messages import ClientTask
from fedsim.runner.assembly import Seams


def _misbehave(kind: str) -> None:
    if kind == "freeze":
        time.sleep(10**6)
    os.kill(os.getpid(), signal.SIGKILL)


def faulty_client(
    fault: tuple[str, int, int], process, message_type: str, task: ClientTask, info: BundleInfo
) -> None:
    """Client `victim` misbehaves as its training in `round` begins (inside the bundle's
    watchdog, as a real fault); every other client, and every other round, is fedsim's
    own."""
    kind, server_round, victim = fault
    hit = message_type == MessageType.TRAIN and info.server_round == server_round
    if hit and task.pid == victim:
        _misbehave(kind)


def build_client_app(fault: tuple[str, int, int], cfg: RunConfig, data):
    return client_app.build_client_app(cfg, data, partial(faulty_client, fault))


if __name__ == "__main__":
    kind, server_round, victim = sys.argv.pop(1).split(":")
    fault = (kind, int(server_round), int(victim))
    cli.entry(sys.argv[1:], Seams(client_app=partial(build_client_app, fault)))

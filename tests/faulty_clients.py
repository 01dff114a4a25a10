"""`simulate.py` with one client that misbehaves on purpose, through the real engine.

    python -m tests.faulty_clients FAULT:ROUND:CLIENT SIMULATE_OPTIONS...

FAULT is `freeze` (the client's training never returns) or `kill` (the process
running the client dies, as from the OOM killer or a segfault). Everything else is
fedsim's own: the client app, its watchdog, the server loop, the engine. The fault
strikes once, in the client's training in that round; later rounds are left alone.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from functools import partial

from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp

from bench.swap import simulate_with
from fedsim.flower import client_app
from fedsim.ground import messages
from fedsim.ground.config import RunConfig


def _misbehave(kind: str) -> None:
    if kind == "freeze":
        time.sleep(10**6)
    os.kill(os.getpid(), signal.SIGKILL)


def _handle(fault: tuple[str, int, int], cfg: RunConfig, data, msg: Message, context: Context):
    kind, server_round, victim = fault
    tasks, info = messages.unpack_tasks(msg.content)
    run_client = client_app._run_client
    if (
        msg.metadata.message_type == MessageType.TRAIN
        and info.server_round == server_round
        and victim in [t.pid for t in tasks]
    ):

        def faulty(process, message_type, job, bundle_info):
            if job.pid == victim:
                _misbehave(kind)
            return run_client(process, message_type, job, bundle_info)

        client_app._run_client = faulty  # inside the bundle's watchdog, as a real fault
    try:
        return client_app.handle_bundle(cfg, data, msg, context)
    finally:
        client_app._run_client = run_client


def build_client_app(fault: tuple[str, int, int], cfg: RunConfig, data) -> ClientApp:
    app = ClientApp()
    app.train()(partial(_handle, fault, cfg, data))
    app.evaluate()(partial(_handle, fault, cfg, data))
    return app


if __name__ == "__main__":
    kind, server_round, victim = sys.argv.pop(1).split(":")
    fault = (kind, int(server_round), int(victim))
    simulate_with(partial(build_client_app, fault))

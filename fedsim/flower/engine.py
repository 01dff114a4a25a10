"""The flower layer's face to the runner: a round loop run on Flower's simulation engine
over the Ray instance fedsim started (`run_loop`), its exchange over a grid (also the
Flower App's), and the engine's threads left to wind down after their run, waited for
before Ray stops.

`flwr.simulation.run_simulation` is deprecated upstream (still the in-process engine in
flwr 1.42); calling it only here leaves one place to change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedsim.flower.exchange import FlowerExchange, Progress, Transport, nodes_needed
from fedsim.flower.server_app import build_server_app
from fedsim.flower.sizing import Cluster


@dataclass(frozen=True)
class LoopRun:
    """A round loop as Flower's engine carries it: the call that runs it over an
    exchange, the events that stop it and say it is over, and what its messages need."""

    run: Callable[[FlowerExchange], None]
    stop: threading.Event
    finished: threading.Event
    clients: int
    round_timeout: float
    reply_bytes: int  # a training reply's size: one model
    phase_sizes: list[tuple[int, int]]  # the most clients a phase sends, and their replies'
    progress: Progress | None = None


def run_loop(loop: LoopRun, client_app: ClientApp, cluster: Cluster, per_message: int | None):
    """The loop on Flower's simulation engine, its clients in bundles of `per_message`
    (None: fedsim sizes them) over as many engine nodes as one phase needs."""
    transport = Transport(cluster.concurrent_clients, per_message)

    def serve(grid: Grid) -> None:
        loop.run(exchange_on(grid, loop, transport))

    nodes = nodes_needed(loop.phase_sizes, transport)
    run_simulation(build_server_app(serve), client_app, nodes, cluster, loop.finished)


def exchange_on(grid: Grid, loop: LoopRun, transport: Transport) -> FlowerExchange:
    """The loop's exchange over Flower's `grid` (one node per client on the Deployment
    Engine, where node i holds partition i), telling the loop's progress as outcomes
    arrive."""
    wanted = loop.clients if transport.one_node_per_client else 1
    return FlowerExchange(
        grid, transport, loop.reply_bytes, loop.round_timeout, loop.stop, wanted, loop.progress
    )


def run_simulation(
    server_app,
    client_app,
    nodes: int,
    cluster: Cluster,
    finished: threading.Event,
) -> None:
    """Run the apps on Flower's simulation engine over the Ray instance already up.

    `nodes` engine nodes are mailboxes for bundles of virtual clients (fedsim.flower.bundles),
    so Flower's per-node polling costs what one round's messages need, not what the
    population would. Client actors restart when their process dies (Flower's pool
    would keep handing work to a dead one).

    The engine runs in a thread while the main thread waits in short, interruptible
    steps: a blocked main thread may never see Ctrl-C (the signal can land on one of
    Ray's threads), so waiting here is what makes Ctrl-C reliable. Once the round loop
    is over (`finished`) the call returns: the results are written, and Flower's own
    wind-down (queues polled with 1-second timeouts, then shelving the actors: Ray stays,
    fedsim.flower.shelf) goes on in its thread while the next run starts or the process
    ends (`wind_down` waits for it).
    """
    from flwr.simulation import run_simulation as flower_run_simulation

    for name in ("flwr", "flwr-sim"):  # fedsim prints its own progress and failures
        logging.getLogger(name).setLevel(logging.CRITICAL)
    failure: list[BaseException] = []

    def simulate() -> None:
        try:
            flower_run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=nodes,
                backend_config={
                    # Flower passes client_resources to the actors' .options(): a killed
                    # actor process is restarted, and the call it was running fails alone
                    "client_resources": {**cluster.client_resources, "max_restarts": -1},
                },
            )
        except BaseException as error:  # handed to the main thread below
            failure.append(error)

    engine = threading.Thread(target=simulate, name="fedsim-simulation", daemon=True)
    _winding_down.append(engine)  # before it starts: a stop then always waits for it
    engine.start()
    while engine.is_alive() and not finished.is_set():
        engine.join(timeout=0.1)
    if failure:
        raise failure[0]


# Flower's engine threads, which may still be winding down when their run has returned
_winding_down: list[threading.Thread] = []


def wind_down(wait: float) -> None:
    """Wait up to `wait` seconds for Flower's engine threads to end (before Ray stops:
    a call one of them makes into a stopped Ray crashes the process)."""
    deadline = time.monotonic() + wait
    while _winding_down:
        thread = _winding_down.pop()
        if thread.ident is not None:  # started
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

"""FedBuff's schedule (Nguyen et al., AISTATS 2022) on the simulated clock.

`--concurrency C` clients train at once in simulated time. Whenever one finishes, its
update joins the server's buffer and an online client that is not training starts in
its place, on the model as it is at that moment; once `--buffer-size K` updates are in,
the server applies them (fedsim.algorithms.fedbuff weighs each by its staleness) and
that is one row of rounds.csv. The next clients start on the new model.

The training itself runs in Flower's engine, through the loop's exchange(), on the model
version a client starts from, so its result (and its simulated finish time, which needs
its measured upload bytes) is known before the clock reaches it. Clients that start on
the same model train together in one exchange: a start is trained only when the clock
could otherwise pass its earliest possible finish (its compute time alone), or before
the model changes. Which clients start, and when, depends on the clock alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Message, MessageType
from flwr.serverapp import Grid

from fedsim.ground import messages
from fedsim.ground.errors import RunAborted
from fedsim.simulation.clock import Flight, client_sim_seconds, time_clients
from fedsim.simulation.loop import Exchange, sample_from

if TYPE_CHECKING:
    from fedsim.simulation.loop import FederatedLoop

SAMPLING_STREAM = 2  # FedBuff's draws, apart from rounds' training (0) and evaluation (1)


class BufferedSchedule:
    """One server update's worth of arrivals per call; the clients in flight, the clock
    and the draw counters live in the loop's ClockState (checkpointed)."""

    def __init__(self) -> None:
        # (partition id, simulated start) of clients started on the current model and
        # not trained yet; always empty between two calls, so never checkpointed
        self.waiting: list[tuple[int, float]] = []

    def train(self, loop: FederatedLoop, grid: Grid, server_round: int) -> Exchange:
        """Run the clock until K updates have arrived; hand them to the strategy with
        their staleness (server updates applied since each one started)."""
        cfg, clock = loop.cfg, loop.clock
        version = server_round - 1  # server updates applied so far
        arrived = Exchange(replies=[])
        failed_in_a_row = 0
        while len(arrived.replies) < cfg.buffer_size:
            self._start_clients(loop)
            if not clock.in_flight and not self.waiting:  # nobody online: wait for someone
                later = loop.profiles.next_online(clock.now)
                if later is None:
                    raise RunAborted(f"no client is online after simulated second {clock.now:g}")
                clock.now = later
                continue
            if self._must_train(loop):
                self._train_waiting(loop, grid, version)
                continue
            flight = min(clock.in_flight, key=lambda f: (f.finish, f.pid))
            clock.in_flight.remove(flight)
            clock.now = flight.finish
            flight.record.round = server_round
            arrived.clients.append(flight.record)
            if flight.content is None:
                failed_in_a_row += 1
                if failed_in_a_row >= cfg.max_failed_rounds * cfg.buffer_size:
                    raise RunAborted(
                        f"{failed_in_a_row} clients in a row failed (--max-failed-rounds "
                        f"{cfg.max_failed_rounds} × --buffer-size {cfg.buffer_size})"
                    )
                continue
            failed_in_a_row = 0
            flight.content[messages.STALENESS] = ConfigRecord(
                {messages.STALENESS: version - flight.version}
            )
            arrived.replies.append(
                Message(
                    content=flight.content,
                    dst_node_id=flight.pid + 1,
                    message_type=MessageType.TRAIN,
                )
            )
            if flight.state is not None:
                loop.states.set(flight.pid, flight.state)
        self._train_waiting(loop, grid, version)  # they started before the model changes
        return arrived

    def _start_clients(self, loop: FederatedLoop) -> None:
        """Fill the free places with online clients that are not training, drawn by the
        seed and the number of draws so far."""
        cfg, clock = loop.cfg, loop.clock
        free = cfg.concurrency - len(clock.in_flight) - len(self.waiting)
        if free <= 0:
            return
        busy = {f.pid for f in clock.in_flight} | {pid for pid, _ in self.waiting}
        candidates = [pid for pid in loop.profiles.online_at(clock.now) if pid not in busy]
        if not candidates:
            return
        picked = sample_from(cfg.seed, clock.draws, candidates, free, SAMPLING_STREAM)
        clock.draws += 1
        self.waiting += [(pid, clock.now) for pid in picked]

    def _must_train(self, loop: FederatedLoop) -> bool:
        """Whether a waiting client could finish before the next known arrival."""
        if not self.waiting:
            return False
        if not loop.clock.in_flight:
            return True
        next_arrival = min(f.finish for f in loop.clock.in_flight)
        epochs = loop.cfg.local_epochs
        return any(
            start + client_sim_seconds(loop.profiles.of(pid), 0, loop.train_sizes[pid], epochs, 0)
            <= next_arrival
            for pid, start in self.waiting
        )

    def _train_waiting(self, loop: FederatedLoop, grid: Grid, version: int) -> None:
        """Train the waiting clients on the current model (version `version`) in one
        exchange; each is then in flight until its simulated finish."""
        if not self.waiting:
            return
        clock = loop.clock
        starts, self.waiting = dict(self.waiting), []
        clock.batches += 1  # seeds the clients' shuffling and dropouts, like a round number
        batch = loop.exchange(grid, MessageType.TRAIN, clock.batches, sorted(starts))
        time_clients(loop.profiles, batch.clients, loop.cfg.local_epochs)
        replies = batch.by_client()
        for record in batch.clients:
            reply = replies.get(record.client)
            clock.in_flight.append(
                Flight(
                    pid=record.client,
                    version=version,
                    finish=starts[record.client] + record.sim_seconds,
                    record=record,
                    content=None if reply is None else reply.content,
                    state=batch.states.get(record.client),
                )
            )

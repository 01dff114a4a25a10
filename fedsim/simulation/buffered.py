"""FedBuff's schedule (Nguyen et al., AISTATS 2022) on the simulated clock.

`--concurrency C` clients train at once in simulated time. Whenever one finishes, its
update joins the server's buffer and an online client that is not training starts in
its place, on the model as it is at that moment; once `--buffer-size K` updates are in,
the server applies them (fedsim.algorithms.fedbuff weighs each by its staleness) and
that is one row of rounds.csv. The next clients start on the new model.

The training itself runs through the loop's exchange (the `train` phase it hands the
schedule), on the model
version a client starts from, so its result (and its simulated finish time, which needs
its measured upload bytes) is known before the clock reaches it. Clients that start on
the same model train together in one exchange: a start is trained only when the clock
could otherwise pass its earliest possible finish (its compute time alone), or before
the model changes. Which clients start, and when, depends on the clock alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, MessageType

from fedsim.algorithms.base import Buffered
from fedsim.ground import messages, streams
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import RunAborted
from fedsim.simulation.clock import Flight, client_sim_seconds, local_work, time_clients
from fedsim.simulation.phase import PhaseResult, Population, TrainPhase
from fedsim.simulation.state import RunState


@dataclass
class BufferedSchedule:
    """One server update's worth of arrivals per call; the clients in flight, the clock
    and the draw counters live in the run's ClockState (checkpointed)."""

    buffer: Buffered
    cfg: RunConfig
    population: Population

    def __post_init__(self) -> None:
        # (partition id, simulated start) of clients started on the current model and
        # not trained yet; always empty between two calls, so never checkpointed
        self.waiting: list[tuple[int, float]] = []

    def train(self, server_update: int, state: RunState, train: TrainPhase) -> PhaseResult:
        """Run the clock until K updates have arrived for the server's `server_update`-th
        model update (a row of rounds.csv); hand them to the strategy with their
        staleness (server updates applied since each one started)."""
        clock, size = state.clock, self.buffer.size
        version = server_update - 1  # server updates applied so far
        arrived = PhaseResult()
        failed_in_a_row = 0
        while len(arrived.replies) < size:
            self._start_clients(state)
            if not clock.in_flight and not self.waiting:  # nobody online: wait for someone
                later = self.population.profiles.next_online(clock.now)
                if later is None:
                    raise RunAborted(f"no client is online after simulated second {clock.now:g}")
                clock.now = later
                continue
            if self._must_train(state):
                self._train_waiting(state, train, version)
                continue
            flight = min(clock.in_flight, key=lambda f: (f.finish, f.pid))
            clock.in_flight.remove(flight)
            clock.now = flight.finish
            flight.record.round = server_update
            arrived.clients.append(flight.record)
            if flight.content is None:
                failed_in_a_row += 1
                if failed_in_a_row >= self.cfg.max_failed_rounds * size:
                    raise RunAborted(
                        f"{failed_in_a_row} clients in a row failed (--max-failed-rounds "
                        f"{self.cfg.max_failed_rounds} × --buffer-size {size})"
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
                state.memories.set(flight.pid, flight.state)
        self._train_waiting(state, train, version)  # they started before the model changes
        return arrived

    def _start_clients(self, state: RunState) -> None:
        """Fill the free places with online clients that are not training, drawn by the
        seed and the number of draws so far."""
        clock = state.clock
        free = self.buffer.concurrency - len(clock.in_flight) - len(self.waiting)
        if free <= 0:
            return
        busy = {f.pid for f in clock.in_flight} | {pid for pid, _ in self.waiting}
        online = self.population.profiles.online_at(clock.now)
        candidates = [pid for pid in online if pid not in busy]
        if not candidates:
            return
        stream = streams.FEDBUFF_SAMPLE
        picked = streams.sample(self.cfg.seed, clock.draws, candidates, free, stream)
        clock.draws += 1
        self.waiting += [(pid, clock.now) for pid in picked]

    def _must_train(self, state: RunState) -> bool:
        """Whether a waiting client could finish before the next known arrival."""
        if not self.waiting:
            return False
        if not state.clock.in_flight:
            return True
        next_arrival = min(f.finish for f in state.clock.in_flight)
        profiles, sizes = self.population.profiles, self.population.train_sizes
        return any(
            start
            + client_sim_seconds(profiles.of(pid), 0, local_work(self.cfg, int(sizes[pid])), 0)
            <= next_arrival
            for pid, start in self.waiting
        )

    def _train_waiting(self, state: RunState, train: TrainPhase, version: int) -> None:
        """Train the waiting clients on the current model (version `version`) in one
        exchange; each is then in flight until its simulated finish."""
        if not self.waiting:
            return
        clock = state.clock
        starts, self.waiting = dict(self.waiting), []
        clock.batches += 1  # seeds the clients' shuffling and dropouts, like a round number
        batch = train(clock.batches, sorted(starts))
        time_clients(self.population.profiles, batch.clients, self.cfg)
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

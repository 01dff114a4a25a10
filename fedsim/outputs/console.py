"""What a run says on the console: a line per round, and failing clients as they fail."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections import Counter
from typing import Any

from flwr.app import ArrayRecord

from fedsim.ground import messages
from fedsim.ground.errors import ConsoleClosed
from fedsim.outputs.callbacks import RoundCallback
from fedsim.outputs.records import RoundRecord


class FailureReporter(RoundCallback):
    """Clients that failed or timed out, said on the console in the round they did
    (Flower drops such replies silently) and summed for config.json; dropouts that
    --client-failure-rate asked for and stragglers that --deadline or --over-select
    discarded are only counted. clients.csv has every one."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream = stream
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []  # the first few distinct reasons

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        bad = [c for c in record.clients if c.status != messages.OK]
        self.counts.update(c.status for c in bad)
        for client in bad:
            if client.error and client.error not in self.errors and len(self.errors) < 5:
                self.errors.append(client.error)
        unexpected = [c for c in bad if c.status in (messages.FAILED, messages.TIMEOUT)]
        if unexpected:
            kinds = Counter(f"{c.phase} {c.status}" for c in unexpected)
            said = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
            first = next((c for c in unexpected if c.error), unexpected[0])
            why = f"client {first.client}: {first.error}" if first.error else "no answer in time"
            say(
                f"fedsim: round {record.round}: {said} ({why}; clients.csv has each one)",
                self.stream,
            )

    def summary(self) -> dict[str, Any]:
        return {"client_outcomes": dict(self.counts), "client_errors": self.errors}


class ProgressPrinter(RoundCallback):
    """One console line per round."""

    def __init__(self, rounds: int, stream: Any = sys.stdout) -> None:
        self.rounds = rounds
        self.stream = stream

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        parts = [f"round {record.round:>{len(str(self.rounds))}}/{self.rounds}"]
        names = ("train_loss", "eval_accuracy", "central_loss", "central_accuracy", "dp_epsilon")
        for name in names:
            value = getattr(record, name)
            if value is not None and not math.isnan(value):
                parts.append(f"{name} {value:.4f}")
        if record.round:
            parts.append(f"clients {record.clients_aggregated}/{record.clients_sampled}")
            parts.append(f"{record.round_seconds:.1f} s")
            if record.sim_clock is not None:
                parts.append(f"sim {record.sim_clock / 3600:.2f} h")
        say("  ".join(parts), self.stream)


def say(line: str, stream: Any) -> None:
    """Print a line of the run's console. Once its reader has gone, the stream is
    pointed at /dev/null (so that the line left in its buffer, and any later one,
    cost nothing and raise nothing) and the run stops (ConsoleClosed)."""
    try:
        print(line, file=stream, flush=True)
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # a stream without a descriptor
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        raise ConsoleClosed from None

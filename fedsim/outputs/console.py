"""What a run says on the console: a line per round, failing clients as they fail, and,
on a terminal, a status line redrawn in place between round lines (the round's clients
done of those sent, its seconds so far, the run's estimated time left). Output that
is not a terminal (a log file, CI, a notebook's captured output) gets the lines alone."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
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
        names += ("personal_accuracy", "unseen_accuracy")  # a personal algorithm's, when judged
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


class LiveStatus(RoundCallback):
    """The status line on a terminal: redrawn in place every REDRAW_SECONDS and as
    clients' outcomes arrive (`progress`, from the exchange), cleared before any other
    line (`say`) and when the run ends however it ends (`with`). On anything but a
    terminal it draws nothing."""

    REDRAW_SECONDS = 1.0

    def __init__(self, rounds: int, stream: Any = sys.stdout) -> None:
        self.rounds, self.stream = rounds, stream
        self.enabled = _is_terminal(stream)
        self.round_seconds: list[float] = []  # the completed rounds', for the estimate
        self.server_round, self.since = 1, time.monotonic()
        self.phase, self.done, self.sent = "", 0, 0
        self._stop = threading.Event()

    def __enter__(self) -> LiveStatus:
        if self.enabled:
            _live.append(self)
            threading.Thread(target=self._tick, name="fedsim-status", daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        with _console:
            if self in _live:
                _live.remove(self)
                self._clear()

    def progress(self, phase: str, server_round: int, done: int, sent: int) -> None:
        """`done` of the `sent` clients of a phase of round `server_round` are back."""
        self.phase, self.done, self.sent = phase, done, sent
        self.server_round = max(self.server_round, server_round)
        self.draw()

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        if record.round and record.round_seconds is not None:
            self.round_seconds.append(record.round_seconds)
        self.server_round, self.since = record.round + 1, time.monotonic()
        self.phase, self.done, self.sent = "", 0, 0
        self.draw()  # under the round's line at once

    def text(self) -> str:
        elapsed = time.monotonic() - self.since
        parts = [f"round {self.server_round}/{self.rounds}"]
        if self.sent:
            parts.append(f"{self.phase} {self.done}/{self.sent} clients")
        parts.append(f"{elapsed:.0f} s")
        if self.round_seconds:
            per_round = sum(self.round_seconds) / len(self.round_seconds)
            left = per_round * (self.rounds - self.server_round + 1) - elapsed
            parts.append(f"~{_duration(max(left, 0.0))} left")
        return "  ".join(parts)

    def draw(self) -> None:
        if not self.enabled or self.server_round > self.rounds:
            return
        with _console, contextlib.suppress(OSError, ValueError):
            if self in _live:
                self.stream.write("\r\x1b[K" + self.text())
                self.stream.flush()

    def _clear(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.REDRAW_SECONDS):
            self.draw()


_console = threading.RLock()  # one line at a time: a round's line, a status redraw
_live: list[LiveStatus] = []  # the status line on screen, if any


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # a closed or file-less stream
        return False


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def say(line: str, stream: Any) -> None:
    """Print a line of the run's console (the status line, if any, is cleared first and
    drawn again at its next redraw). Once its reader has gone, the stream is pointed at
    /dev/null (so that the line left in its buffer, and any later one, cost nothing and
    raise nothing) and the run stops (ConsoleClosed)."""
    try:
        with _console:
            for live in _live:
                live._clear()
            print(line, file=stream, flush=True)
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # a stream without a descriptor
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        raise ConsoleClosed from None

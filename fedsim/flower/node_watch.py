"""Watching fedsim's private Ray node: if its raylet dies under a run (killed, out of
memory), Ray ends the driver within moments with status 1 and no word, so a watcher
thread first tells the run (`on_node_lost`), says one `error:` line, and ends the
process itself; the sentinel process (fedsim.flower.sentinel) says it for the driver
when Ray ends the driver first."""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fedsim.flower import sentinel
from fedsim.ground import insides

_raylet: list[int] = []  # the private instance's raylet process id, once it runs


def raylet() -> int | None:
    """The process id of the private instance's raylet (None: none was watched)."""
    return _raylet[0] if _raylet else None


# What the run under way does when the Ray node dies under it (records its status)
_on_node_lost: list[Callable[[str], None]] = []
_notes: list[Path] = []  # the sentinel's notes file, while one watches
NOTES_PREFIX = "fedsim-sentinel-"  # the notes files' names, in the temp folder


@contextmanager
def on_node_lost(record: Callable[[str], None], config_json: Path) -> Iterator[None]:
    """While the body runs, `record(reason)` is called if fedsim's Ray node dies, and
    the sentinel knows `config_json` is the run's (fedsim.flower.sentinel)."""
    _on_node_lost.append(record)
    _note(config_json=str(config_json))
    try:
        yield
    finally:
        _on_node_lost.remove(record)
        _note(config_json="")


def _note(**notes: object) -> None:
    if _notes:
        with contextlib.suppress(OSError):
            sentinel.write_notes(_notes[0], **notes)


# The watcher of the private instance up now: its event is set once fedsim stops Ray
# itself, or the process ends. One per instance: a watcher of an instance stopped
# earlier must never take a later instance's start for a loss of its own node.
_stopping: list[threading.Event] = []


def stop_watching() -> None:
    """fedsim ends the raylet itself (or the process ends): no node is lost."""
    for stopping in _stopping:
        stopping.set()
    _stopping.clear()
    _note(stopping=True)
    _notes.clear()  # the sentinel removes the file as it leaves: a later note would remake it


atexit.register(stop_watching)


def watch_raylet() -> None:
    """Follow this instance's raylet, from a thread here and from the sentinel process
    (which reports for the driver when Ray ends it first)."""
    pid, logs = insides.local_raylet()
    watched = os.pidfd_open(pid)
    _raylet[:] = [pid]
    stopping = threading.Event()
    _stopping[:] = [stopping]
    handle, notes = tempfile.mkstemp(prefix=NOTES_PREFIX, suffix=".json")
    os.close(handle)
    _notes[:] = [Path(notes)]
    _note(stopping=False)
    command = [sys.executable, "-m", "fedsim.flower.sentinel", str(pid), str(os.getpid())]
    command += [notes, logs]
    # In a session of its own: a kill of the driver's whole process group (a job killed
    # in a terminal, a scheduler) leaves it to see the driver end, and remove its notes
    subprocess.Popen(command, stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True)

    def watch() -> None:
        select.select([watched], [], [])  # readable once the process has ended
        os.close(watched)
        if stopping.is_set():
            return
        _note(lost=True)
        for record in list(_on_node_lost):
            with contextlib.suppress(Exception):
                record(sentinel.REASON)
        _note(written=True)
        print(f"error: {sentinel.REASON}", file=sys.stderr, flush=True)
        _note(printed=True)
        os._exit(1)

    threading.Thread(target=watch, name="fedsim-raylet-watch", daemon=True).start()

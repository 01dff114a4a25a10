"""The sentinel: a small process that says so when fedsim's Ray node dies under a run,
should the driver be ended by Ray before it can.

When the raylet of fedsim's private instance dies (killed, out of memory), Ray's core
worker ends the driver within moments with status 1 and no word, often before the
driver's own watcher thread (fedsim.flower.node_watch) can write the run's status and its
error line. This process, started with Ray's and watching both the raylet and the
driver, finishes what the driver could not: it marks the run's config.json `failed`
with the reason and prints the one `error:` line (on the driver's stderr, which it
shares). It leaves quietly when the driver ends first, when fedsim stops Ray itself,
and for whatever the driver managed to do (the notes file says what).

A raylet also ends right after its driver is killed (kill -9: Ray's processes die with
the driver), and which of the two the sentinel sees end first is a matter of
microseconds. So it reports only what it knows was a lost node: the driver's watcher
said so (`lost`), or Ray's own log of the driver says Ray ended it (the core worker
writes why before it exits the process), or the driver outlives its raylet.

    python -m fedsim.flower.sentinel RAYLET_PID DRIVER_PID NOTES RAY_LOGS_DIR

It imports nothing but the standard library, so that it starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import select
import sys
from pathlib import Path

REASON = (
    "the Ray node died under the run (its raylet ended: killed, or out of memory); "
    "completed rounds are kept (--resume goes on)"
)
DRIVER_GRACE = 5.0  # seconds the driver is given to end, or to say so itself
# What Ray's core worker writes to the driver's log before it ends the process for a
# lost raylet (its plasma store connection, or the raylet itself)
RAY_ENDED_IT = ("Terminate the process", "local raylet failed", "raylet died")


def read_notes(path: Path) -> dict:
    """What the driver has said: the run's config.json (`config_json`), whether it is
    stopping Ray (`stopping`), and what it did of the reporting (`lost`: it saw the
    raylet end; `written`, `printed`)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_notes(path: Path, **notes: object) -> None:
    """Add to the notes, atomically (the sentinel may read at any moment)."""
    merged = {**read_notes(path), **notes}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(merged))
    os.replace(tmp, path)


def mark_failed(config_json: Path, reason: str) -> None:
    """config.json's status `failed` with `reason`, if it still says `running`."""
    try:
        document = json.loads(config_json.read_text())
    except (OSError, ValueError):
        return
    if document.get("status") != "running":
        return
    document.update(status="failed", error=reason)
    tmp = config_json.with_name(f".{config_json.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, config_json)


def ray_ended(driver: int, logs: Path) -> bool:
    """Whether Ray's log of the driver says Ray ended it (a lost raylet)."""
    for log in logs.glob(f"python-core-driver-*_{driver}.log"):
        try:
            with open(log, "rb") as handle:
                handle.seek(max(0, log.stat().st_size - 65536))
                tail = handle.read().decode(errors="replace")
        except OSError:
            continue
        if any(words in tail for words in RAY_ENDED_IT):
            return True
    return False


def watch(raylet: int, driver: int, notes: Path, logs: Path) -> None:
    try:
        raylet_fd, driver_fd = os.pidfd_open(raylet), os.pidfd_open(driver)
    except OSError:  # one of them is gone already
        return
    ready, _, _ = select.select([raylet_fd, driver_fd], [], [])
    if driver_fd in ready:
        return  # the driver ended first (its raylet follows it): nothing was lost
    if read_notes(notes).get("stopping"):
        return
    ended, _, _ = select.select([driver_fd], [], [], DRIVER_GRACE)
    said = read_notes(notes)
    if said.get("stopping"):
        return
    if ended and not said.get("lost") and not ray_ended(driver, logs):
        return  # the driver was killed, and its raylet with it
    if not said.get("written") and said.get("config_json"):
        mark_failed(Path(said["config_json"]), REASON)
    if not said.get("printed"):
        print(f"error: {REASON}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raylet_pid, driver_pid, notes_path, logs_dir = sys.argv[1:5]
    try:
        watch(int(raylet_pid), int(driver_pid), Path(notes_path), Path(logs_dir))
    finally:
        Path(notes_path).unlink(missing_ok=True)

"""The clients' memory store (fedsim.simulation.client_states): versions by round, a
commit before the checkpoint and a prune after it, so that a process killed at any
instant reopens with exactly the memories of its last checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedsim.simulation.client_states import ClientStates

CLIENTS, PER_ROUND = 40, 8


def _memory(pid: int, server_round: int) -> RecordDict:
    """What client `pid` remembers after round `server_round` (a deterministic stand-in
    for a control variate: about 40 kB, so that commits take a while)."""
    values = np.full(10_000, pid * 1000 + server_round, dtype=np.float32)
    return RecordDict({"memory": ArrayRecord({"c": Array(values)})})


def _sampled(server_round: int) -> list[int]:
    return random.Random(server_round).sample(range(CLIENTS), PER_ROUND)


def _expected(completed: int) -> dict[int, float]:
    """Each client's memory after round `completed`: the last round it was sampled in."""
    last: dict[int, float] = {}
    for server_round in range(1, completed + 1):
        for pid in _sampled(server_round):
            last[pid] = pid * 1000 + server_round
    return last


def _held(states: ClientStates) -> dict[int, float]:
    return {pid: float(states.get(pid)["memory"]["c"].numpy()[0]) for pid in states.clients()}


def _write_rounds(folder: Path, rounds: int) -> None:
    """The loop's and checkpointer's protocol: commit a round's memories, write the
    checkpoint (here its round number, renamed into place), prune; close at the end."""
    states = ClientStates(folder / "client_states.sqlite")
    for server_round in range(1, rounds + 1):
        for pid in _sampled(server_round):
            states.set(pid, _memory(pid, server_round))
        states.commit(server_round)
        temporary = folder / ".checkpoint.tmp"
        temporary.write_text(str(server_round))
        os.replace(temporary, folder / "checkpoint")
        states.prune(server_round)
    states.close()


def test_versions_commit_prune_and_roll_back(tmp_path) -> None:
    path = tmp_path / "client_states.sqlite"
    states = ClientStates(path)
    assert len(states.get(3)) == 0 and not states.on_disk()
    states.set(3, _memory(3, 1))
    assert states.clients() == [3] and not path.exists()  # pending until the commit
    states.commit(1)
    states.prune(1)
    states.set(3, _memory(3, 2))
    states.set(5, _memory(5, 2))
    states.commit(2)  # killed before round 2's checkpoint: a resume goes on from round 1
    states.close()
    assert _held(ClientStates(path, completed=1)) == {3: 3001.0}
    # the roll-back is for good: round 2's versions are gone
    assert _held(ClientStates(path)) == {3: 3001.0}
    states = ClientStates(path)
    states.set(3, RecordDict())  # an empty record forgets the client
    states.commit(2)
    states.prune(2)
    assert states.clients() == [] and len(states.get(3)) == 0
    states.remove()
    assert list(tmp_path.iterdir()) == []


def test_in_memory_store_keeps_only_the_latest(tmp_path) -> None:
    states = ClientStates()
    for server_round in range(1, 6):
        for pid in _sampled(server_round):
            states.set(pid, _memory(pid, server_round))
        states.commit(server_round)
    assert _held(states) == _expected(5)
    assert states._db.execute("SELECT COUNT(*) FROM states").fetchone()[0] == len(_expected(5))


def test_pruned_store_holds_one_version_per_client(tmp_path) -> None:
    _write_rounds(tmp_path, 12)
    states = ClientStates(tmp_path / "client_states.sqlite")
    rows = states._db.execute("SELECT pid, round FROM states ORDER BY pid").fetchall()
    assert dict(rows) == {pid: value % 1000 for pid, value in _expected(12).items()}
    assert len(rows) == len({pid for pid, _ in rows})


def test_kill_at_any_instant_reopens_at_the_checkpoint(tmp_path) -> None:
    """A writer killed with SIGKILL at random moments, mid-commit, mid-checkpoint or
    mid-prune: reopened at its checkpoint's round, the store holds exactly the memories
    an uninterrupted run had after that round."""
    code = (
        "import sys; from pathlib import Path; from tests.test_client_states import "
        "_write_rounds; _write_rounds(Path(sys.argv[1]), 10**6)"
    )
    rng = random.Random(0)
    checked = 0
    for attempt in range(6):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        root = Path(__file__).resolve().parents[1]
        writer = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=root)
        while not (folder / "checkpoint").exists() and writer.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.6))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        completed = int((folder / "checkpoint").read_text())
        states = ClientStates(folder / "client_states.sqlite", completed=completed)
        assert _held(states) == _expected(completed), (attempt, completed)
        rows = states._db.execute("SELECT COUNT(*) FROM states").fetchone()[0]
        assert rows == len(_expected(completed))  # what the kill left unpruned is gone
        checked += completed
    assert checked > 6  # the writers got past their first rounds

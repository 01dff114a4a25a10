"""Clients' memory: per-client state kept by the server between a client's rounds.

Algorithms such as SCAFFOLD give each client a record of its own (its control
variate) that must survive from one round the client takes part in to the next,
whichever actor, process or machine runs it. The server keeps it, keyed by partition
id, ships it with the client's task and stores what comes back. Only clients that have
a state take memory, and the whole store goes into checkpoint.pt, so a resumed run
continues with exactly the same memories.
"""

from __future__ import annotations

from flwr.app import RecordDict

from fedsim.ground.messages import from_bytes, to_bytes


class ClientStates:
    """partition id -> RecordDict, for the clients that have one."""

    def __init__(self, states: dict[int, RecordDict] | None = None) -> None:
        self._states: dict[int, RecordDict] = dict(states or {})

    def get(self, pid: int) -> RecordDict:
        return self._states.get(pid, RecordDict())

    def set(self, pid: int, state: RecordDict) -> None:
        if len(state):
            self._states[pid] = state
        else:
            self._states.pop(pid, None)

    def __len__(self) -> int:
        return len(self._states)

    def to_bytes(self) -> dict[int, bytes]:
        return {pid: to_bytes(state) for pid, state in self._states.items()}

    @classmethod
    def from_bytes(cls, stored: dict[int, bytes]) -> ClientStates:
        return cls({int(pid): from_bytes(blob) for pid, blob in stored.items()})

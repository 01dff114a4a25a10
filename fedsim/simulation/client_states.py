"""Clients' memory: per-client state kept by the server between a client's rounds, at a
cost that follows what a round changed, not the population.

Algorithms such as SCAFFOLD and FedDyn give each client a record of its own (its
control variate, its last gradient) that must survive from one round the client takes
part in to the next, whichever actor, process or machine runs it. The server keeps it,
keyed by partition id, ships it with the client's task and stores what comes back.

The states live in an SQLite file in the run folder (client_states.sqlite), not in the
driver's memory: a round reads the states of the clients it samples and writes the ones
it changed, one row each (the state in Flower's own serialization, so any algorithm's
records fit), so the driver's memory stays bounded whatever the population and a round
costs what its clients changed. SQLite is in Python's standard library, keeps one file,
and gives transactions, which is what crash safety needs here:

- the loop writes a round's new states in one transaction, as versions tagged with the
  round (`commit`), before checkpoint.pt says the round is done (fedsim.runner.checkpoint);
- the versions they replace are dropped only once that checkpoint is on disk (`prune`,
  with the next round's commit);
- opening the store to resume from round k drops every version newer than k.

So after a kill -9 at any instant the store and the checkpoint agree on every client's
memory, and a resumed run goes on with exactly the memories an uninterrupted one would
have. Without a run folder (tests, an in-process loop) the store is in memory. The file
is created when a first state is written: a FedAvg run has none.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from flwr.app import RecordDict

from fedsim.ground.messages import from_bytes, to_bytes

# What becomes of the store once a run is complete (--client-states): kept, the run can
# be resumed with more rounds; removed, its disk space comes back and it cannot
KEEP, REMOVE = "keep", "remove"
WHEN_COMPLETE = (KEEP, REMOVE)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS states ("
    "pid INTEGER NOT NULL, round INTEGER NOT NULL, state BLOB, PRIMARY KEY (pid, round))"
)
_SIDE_FILES = ("-journal", "-wal", "-shm")  # SQLite's own, next to the database
PAGE_SIZE = 65_536  # SQLite's largest


class ClientStates:
    """partition id -> RecordDict, for the clients that have one; `path` None keeps
    them in memory. `completed`: the round a resumed run's checkpoint ends (versions
    written after it are dropped)."""

    def __init__(self, path: Path | None = None, completed: int | None = None) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._pending: dict[int, RecordDict] = {}  # set since the last commit
        self._prunable: int | None = None  # a round whose replaced versions may go
        if path is not None and path.exists():
            db = self._open()
            if completed is not None:  # versions after it, and those a kill left unpruned
                with _transaction(db):
                    db.execute("DELETE FROM states WHERE round > ?", (completed,))
                    db.execute(
                        "DELETE FROM states WHERE state IS NULL OR round < "
                        "(SELECT MAX(round) FROM states AS s WHERE s.pid = states.pid)"
                    )

    def get(self, pid: int) -> RecordDict:
        """The client's latest state (an empty record if it has none)."""
        if pid in self._pending:
            return self._pending[pid]
        if self._db is None:
            return RecordDict()
        row = self._db.execute(
            "SELECT state FROM states WHERE pid = ? ORDER BY round DESC LIMIT 1", (pid,)
        ).fetchone()
        return RecordDict() if row is None or row[0] is None else from_bytes(row[0])

    def set(self, pid: int, state: RecordDict) -> None:
        """The client's new state (an empty one forgets it), kept until `commit`."""
        self._pending[pid] = state

    def commit(self, server_round: int) -> None:
        """Write the states set since the last commit, as round `server_round`'s, in one
        transaction (on disk when it returns), which also drops the versions the last
        pruned round replaced. In memory nothing can roll back to an older version, so
        they go at once."""
        if not self._pending:
            return
        rows = [
            (pid, server_round, to_bytes(state) if len(state) else None)
            for pid, state in self._pending.items()
        ]
        db = self._open()
        with _transaction(db):
            self._drop_replaced(db)
            db.executemany("INSERT OR REPLACE INTO states VALUES (?, ?, ?)", rows)
        self._pending.clear()
        if self.path is None:
            self.prune(server_round)
            with _transaction(db):
                self._drop_replaced(db)

    def prune(self, server_round: int) -> None:
        """Round `server_round`'s checkpoint is on disk, so no resume goes back before
        it: the versions its states replace, and forgotten clients' markers, may go.
        They go with the next commit's transaction (or as the store closes), not in a
        transaction, and a wait for the disk, of their own."""
        self._prunable = server_round

    def _drop_replaced(self, db: sqlite3.Connection) -> None:
        if self._prunable is None:
            return
        db.execute(
            "DELETE FROM states WHERE round < (SELECT MAX(round) FROM states AS s "
            "WHERE s.pid = states.pid AND s.round <= ?)",
            (self._prunable,),
        )
        db.execute("DELETE FROM states WHERE state IS NULL AND round <= ?", (self._prunable,))
        self._prunable = None

    def clients(self) -> list[int]:
        """The partition ids that have a state (committed or not), in order."""
        stored: set[int] = set()
        if self._db is not None:
            latest = self._db.execute(
                "SELECT pid, state IS NOT NULL FROM states AS s WHERE round = "
                "(SELECT MAX(round) FROM states WHERE pid = s.pid)"
            )
            stored = {pid for pid, kept in latest if kept}
        for pid, state in self._pending.items():
            (stored.add if len(state) else stored.discard)(pid)
        return sorted(stored)

    def on_disk(self) -> bool:
        """Whether the store has a file (a first state was written)."""
        return self.path is not None and self.path.exists()

    def remove(self) -> None:
        """Close the store and delete its files (a complete run that keeps none)."""
        if self._db is not None:  # no pruning first: the file goes
            self._db.close()
            self._db = None
        if self.path is not None:
            for suffix in ("", *_SIDE_FILES):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        if self._db is not None:
            with _transaction(self._db):
                self._drop_replaced(self._db)
            self._db.close()
            self._db = None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            target = ":memory:" if self.path is None else str(self.path)
            # autocommit mode, transactions explicit; the loop's thread is not the one
            # that opened a resumed run's store
            db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            # A state is hundreds of kB: big pages make fewer overflow pages to write and,
            # when a version is dropped, to walk; with a write-ahead log a commit is one
            # append and one wait for the disk, which FULL makes it wait for (a
            # checkpoint naming the round follows)
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a new file's; an old one keeps its own
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            self._db = db
        return self._db


class _transaction:
    """BEGIN … COMMIT, or ROLLBACK if the block raised."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")

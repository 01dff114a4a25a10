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
have. The store is not taken on trust: its `manifest` (which clients hold a memory, from
which round, and a digest of each) goes into every checkpoint, and a store reopened for
a resume must hold exactly that (`StoreMismatch` otherwise: its write-ahead log lost or
damaged, an older copy, an emptied file). Closing the store merges its write-ahead log
into the file, so the file alone is the store. Without a run folder (tests, an
in-process loop) the store is in memory. The file is created when a first state is
written: a FedAvg run has none.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

from flwr.app import RecordDict

from fedsim.ground.errors import OutputFailed
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
DIGEST_HEX = 32  # of a state's SHA-256 in the manifest: 128 bits

# partition id -> (the round its memory was written in, the digest of the memory)
Manifest = dict[int, tuple[int, str]]


class StoreMismatch(Exception):
    """A store reopened for a resume does not hold the memories its checkpoint names."""


def digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:DIGEST_HEX]


class ClientStates:
    """partition id -> RecordDict, for the clients that have one; `path` None keeps
    them in memory. `completed`: the round a resumed run's checkpoint ends (versions
    written after it are dropped); `expected`: the manifest that checkpoint holds,
    which the reopened store must match (StoreMismatch otherwise, and the file is left
    as it was). A checkpoint written before manifests existed has none: the store is
    then taken as it is."""

    def __init__(
        self,
        path: Path | None = None,
        completed: int | None = None,
        expected: Manifest | None = None,
    ) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._pending: dict[int, RecordDict] = {}  # set since the last commit
        self._prunable: int | None = None  # a round whose replaced versions may go
        self._manifest: Manifest = {}
        if path is not None and path.exists():
            if expected and not path.stat().st_size:
                raise StoreMismatch(f"it is empty, and checkpoint.pt names {_count(expected)}")
            absent = [side for side in self._side_files() if not side.exists()]
            try:
                self._reopen(completed, expected)
            except (sqlite3.DatabaseError, StoreMismatch) as error:
                self._discard()  # and the side files opening it made: nothing is changed
                for side in absent:
                    side.unlink(missing_ok=True)
                if isinstance(error, StoreMismatch):
                    raise
                raise StoreMismatch(f"it cannot be read ({error})") from None
        elif expected:
            raise StoreMismatch(f"it is gone, and checkpoint.pt names {_count(expected)}")

    def _reopen(self, completed: int | None, expected: Manifest | None) -> None:
        db = self._open()
        with _transaction(db):
            if completed is not None:  # versions after it, and those a kill left unpruned
                db.execute("DELETE FROM states WHERE round > ?", (completed,))
                db.execute(
                    "DELETE FROM states WHERE state IS NULL OR round < "
                    "(SELECT MAX(round) FROM states AS s WHERE s.pid = states.pid)"
                )
            self._manifest = self._read_manifest(db)
            if expected is not None and (why := _mismatch(self._manifest, expected)):
                raise StoreMismatch(why)  # rolls the deletions back

    def manifest(self) -> Manifest:
        """Which clients hold a committed memory, from which round, and its digest: what
        a checkpoint records, so that a resume can tell the store it finds is this one."""
        return dict(self._manifest)

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
        they go at once. A store that cannot be written (a full disk) is OutputFailed."""
        if not self._pending:
            return
        rows = [
            (pid, server_round, to_bytes(state) if len(state) else None)
            for pid, state in self._pending.items()
        ]
        created = self.path is not None and not self.path.exists()
        try:
            db = self._open()
            with _transaction(db):
                self._drop_replaced(db)
                db.executemany("INSERT OR REPLACE INTO states VALUES (?, ?, ?)", rows)
        except sqlite3.Error as error:
            self._give_up(created)
            raise OutputFailed(f"cannot write {self.path}: {error}") from None
        for pid, _, blob in rows:
            if blob is None:
                self._manifest.pop(pid, None)
            else:
                self._manifest[pid] = (server_round, digest(blob))
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
            for file in (self.path, *self._side_files()):
                file.unlink(missing_ok=True)

    def _side_files(self) -> list[Path]:
        return [Path(f"{self.path}{suffix}") for suffix in _SIDE_FILES]

    def close(self) -> None:
        """Drop what the last checkpoint replaced and close the file, its write-ahead log
        merged into it and gone: the file alone is the store. Safe to call twice."""
        if self._db is None:
            return
        try:
            with _transaction(self._db):
                self._drop_replaced(self._db)
            if self.path is not None:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:  # a full disk: the log stays, and SQLite reads it back
            pass
        finally:
            self._discard()

    def _give_up(self, created: bool) -> None:
        """A write failed (a full disk): close the store, its log emptied of the failed
        transaction's pages, or gone with the file if this write was creating it, so
        that the disk has room again for the run to say why it stopped."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._discard()
        if created and self.path is not None:
            for file in (self.path, *self._side_files()):
                file.unlink(missing_ok=True)

    def _discard(self) -> None:
        """Close without writing anything (a store refused as it was reopened)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    @staticmethod
    def _read_manifest(db: sqlite3.Connection) -> Manifest:
        """The latest memory of each client, as its round and digest."""
        rows = db.execute(
            "SELECT pid, round, state FROM states AS s WHERE state IS NOT NULL AND round = "
            "(SELECT MAX(round) FROM states WHERE pid = s.pid)"
        )
        return {pid: (server_round, digest(blob)) for pid, server_round, blob in rows}

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            target = ":memory:" if self.path is None else str(self.path)
            # autocommit mode, transactions explicit; the loop's thread is not the one
            # that opened a resumed run's store
            db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            try:
                # A state is hundreds of kB: big pages make fewer overflow pages to write
                # and, when a version is dropped, to walk; with a write-ahead log a commit
                # is one append and one wait for the disk, which FULL makes it wait for
                # (a checkpoint naming the round follows)
                db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a new file's; old ones keep theirs
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute(_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db


def _count(manifest: Manifest) -> str:
    return f"{len(manifest)} client{'s' * (len(manifest) != 1)}' memories"


def _mismatch(found: Manifest, expected: Manifest) -> str | None:
    """How a store's manifest differs from the one its checkpoint holds (None: alike)."""
    if found == expected:
        return None
    if missing := sorted(set(expected) - set(found)):
        named = f"{_count(found)}; checkpoint.pt names {_count(expected)}"
        return f"it lacks client {missing[0]}'s memory ({named})"
    if extra := sorted(set(found) - set(expected)):
        return f"it holds a memory of client {extra[0]}, which checkpoint.pt does not name"
    pid = next(pid for pid in sorted(expected) if found[pid] != expected[pid])
    (there, _), (named, _) = found[pid], expected[pid]
    if there != named:
        return f"client {pid}'s memory is from round {there}, checkpoint.pt's from round {named}"
    return f"client {pid}'s memory differs from the one checkpoint.pt names"


class _transaction:
    """BEGIN … COMMIT, or ROLLBACK if the block raised."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")

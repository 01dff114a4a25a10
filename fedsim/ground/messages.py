"""What the server and the clients say to each other: record keys and the bundle format.

Flower's strategies build one message per client and aggregate one reply per client.
fedsim keeps that contract, but the engine carries several virtual clients in one
message (a *bundle*): Flower's simulation engine costs about 20-80 ms per message
whatever the message holds, so a round of 100 one-image clients would cost seconds of
bookkeeping for milliseconds of training. Bundles are transport, not semantics: the
server loop packs the strategy's per-client messages into bundles and unpacks each
bundle's reply into per-client replies before the strategy, the recorders or the clock
see anything.

A bundle holds each distinct record once (every client of a FedAvg round gets the same
model object) plus a `fedsim.bundle` ConfigRecord saying which records make up which
client's message, which client state goes with it, and by when the work must be done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import serde

# Keys of Flower's strategies (their defaults) and of fedsim's client metrics
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"  # FedProx's configure_train sends it
TRAIN_LOSS = "train_loss"
EVAL_LOSS = "eval_loss"
EVAL_ACCURACY = "eval_accuracy"
DP_EPSILON = "dp_epsilon"  # privacy spent so far (fedsim.privacy's strategy reports it)
PARTITION_ID = "partition-id"  # node config of a SuperNode with its own data

# fedsim's bundle envelope
BUNDLE = "fedsim.bundle"
STATE = "state"  # the client's memory, kept by the server between its rounds

# Client outcomes, as clients.csv reports them
OK = "ok"
FAILED = "failed"  # the client raised
TIMEOUT = "timeout"  # no answer by --round-timeout
DROPOUT = "dropout"  # --client-failure-rate decided it drops out
STRAGGLER = "straggler"  # trained, but its update came too late on the simulated clock
STATUSES = (OK, FAILED, TIMEOUT, DROPOUT, STRAGGLER)
FAILURES = (FAILED, TIMEOUT, DROPOUT)  # what clients_failed counts; stragglers are apart

# The server's note on a buffered asynchronous update (FedBuff): how many server updates
# happened while the client trained. A ConfigRecord, which Flower's reply checks ignore.
STALENESS = "fedsim.staleness"


def recorddict_bytes(content: RecordDict) -> int:
    """The serialized size of a RecordDict as Flower sends it over the wire (protobuf)."""
    return serde.recorddict_to_proto(content).ByteSize()


@dataclass
class ClientTask:
    """One client's part of a bundle: what the strategy sent it, and its memory."""

    pid: int
    content: RecordDict
    state: RecordDict = field(default_factory=RecordDict)


@dataclass
class ClientOutcome:
    """One client's part of a bundle's reply."""

    pid: int
    status: str
    seconds: float = 0.0  # the client's own compute time, measured where it ran
    bytes_up: int = 0  # serialized size of `content`: what a device would upload
    measured_in: float = 0.0  # seconds it took to measure bytes_up (recording's own cost)
    content: RecordDict | None = None  # the reply its strategy aggregates
    state: RecordDict | None = None  # its memory after this round (None: unchanged)
    error: str = ""


@dataclass(frozen=True)
class BundleInfo:
    server_round: int
    deadline: float  # time.time() by which the bundle's work must be done (0: none)


def pack_tasks(tasks: list[ClientTask], info: BundleInfo) -> RecordDict:
    """One message's content for several clients; shared records are sent once."""
    bundle = RecordDict()
    names: dict[int, str] = {}  # id(record) -> its name in the bundle
    layouts, states = [], []

    def place(record) -> str:
        if id(record) not in names:
            names[id(record)] = f"r{len(names)}"
            bundle[names[id(record)]] = record
        return names[id(record)]

    for task in tasks:
        layouts.append(",".join(f"{key}={place(rec)}" for key, rec in task.content.items()))
        states.append(",".join(f"{key}={place(rec)}" for key, rec in task.state.items()))
    bundle[BUNDLE] = ConfigRecord(
        {
            "clients": [task.pid for task in tasks],
            "layout": layouts,
            "state": states,
            "round": info.server_round,
            "deadline": info.deadline,
        }
    )
    return bundle


def _resolve(bundle: RecordDict, layout: str) -> RecordDict:
    content = RecordDict()
    for item in filter(None, layout.split(",")):
        key, name = item.split("=", 1)
        content[key] = bundle[name]
    return content


def unpack_tasks(bundle: RecordDict) -> tuple[list[ClientTask], BundleInfo]:
    meta = bundle[BUNDLE]
    tasks = [
        ClientTask(int(pid), _resolve(bundle, layout), _resolve(bundle, state))
        for pid, layout, state in zip(meta["clients"], meta["layout"], meta["state"], strict=True)
    ]
    return tasks, BundleInfo(int(meta["round"]), float(meta["deadline"]))


def pack_outcomes(outcomes: list[ClientOutcome]) -> RecordDict:
    """A bundle's reply: each client's records under its own prefix."""
    reply = RecordDict()
    layouts, states = [], []
    for index, outcome in enumerate(outcomes):
        parts = []
        for key, record in (outcome.content or RecordDict()).items():
            reply[f"c{index}.{key}"] = record
            parts.append(f"{key}=c{index}.{key}")
        layouts.append(",".join(parts))
        if outcome.state is None:
            states.append("-")  # unchanged
        else:
            for key, record in outcome.state.items():
                reply[f"s{index}.{key}"] = record
            states.append(",".join(f"{key}=s{index}.{key}" for key in outcome.state))
    reply[BUNDLE] = ConfigRecord(
        {
            "clients": [o.pid for o in outcomes],
            "status": [o.status for o in outcomes],
            "seconds": [float(o.seconds) for o in outcomes],
            "bytes_up": [int(o.bytes_up) for o in outcomes],
            "measured_in": [float(o.measured_in) for o in outcomes],
            "error": [o.error for o in outcomes],
            "layout": layouts,
            "state": states,
        }
    )
    return reply


def unpack_outcomes(reply: RecordDict) -> list[ClientOutcome]:
    meta = reply[BUNDLE]
    outcomes = []
    for index, pid in enumerate(meta["clients"]):
        status, state = meta["status"][index], meta["state"][index]
        outcomes.append(
            ClientOutcome(
                pid=int(pid),
                status=status,
                seconds=float(meta["seconds"][index]),
                bytes_up=int(meta["bytes_up"][index]),
                measured_in=float(meta["measured_in"][index]),
                content=_resolve(reply, meta["layout"][index]) if status == OK else None,
                state=None if state == "-" else _resolve(reply, state),
                error=meta["error"][index],
            )
        )
    return outcomes


def train_reply(arrays: ArrayRecord, metrics: dict[str, float | int]) -> RecordDict:
    """What Flower's strategies expect from a training client: one ArrayRecord and one
    MetricRecord holding the example count they weigh it by."""
    return RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics)})

"""What the server and the clients say to each other, as both sides name it: record
keys, client outcomes, one client's task and outcome, and a record's size and bytes.

Flower's strategies build one message per client and aggregate one reply per client;
the loop (fedsim.simulation) hands an exchange one ClientTask per client and gets one
ClientOutcome back, whatever carries them (fedsim.flower.bundles packs several clients
into one engine message). Algorithms name the keys too, so they live here, below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.common import serde
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

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
DP_EPSILON = "dp_epsilon"  # privacy spent so far (fedsim.algorithms.privacy reports it)
PARTITION_ID = "partition-id"  # node config of a SuperNode with its own data

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


def to_bytes(record: RecordDict) -> bytes:
    """Flower's own serialization (protobuf): exact, and independent of pickling."""
    return serde.recorddict_to_proto(record).SerializeToString()


def from_bytes(blob: bytes) -> RecordDict:
    proto = ProtoRecordDict()
    proto.ParseFromString(blob)
    return serde.recorddict_from_proto(proto)


@dataclass
class ClientTask:
    """One client's task: what the strategy sent it, its memory, and how much work it
    is (examples × epochs; an exchange may use it to balance its load)."""

    pid: int
    content: RecordDict
    state: RecordDict = field(default_factory=RecordDict)
    work: float = 1.0


@dataclass
class ClientOutcome:
    """What became of one client's task."""

    pid: int
    status: str
    seconds: float = 0.0  # the client's own compute time, measured where it ran
    bytes_up: int = 0  # serialized size of `content`: what a device would upload
    measured_in: float = 0.0  # seconds it took to measure bytes_up (recording's own cost)
    content: RecordDict | None = None  # the reply its strategy aggregates
    state: RecordDict | None = None  # its memory after this round (None: unchanged)
    error: str = ""


def train_reply(arrays: ArrayRecord, metrics: dict[str, float | int]) -> RecordDict:
    """What Flower's strategies expect from a training client: one ArrayRecord and one
    MetricRecord holding the example count they weigh it by."""
    return RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics)})

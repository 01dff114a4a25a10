"""The bundle: several virtual clients' tasks in one engine message, and their outcomes
in one reply.

Flower's simulation engine costs about 20-80 ms per message whatever the message holds,
so a round of 100 one-image clients would cost seconds of bookkeeping for milliseconds
of training. Bundles are transport, not semantics: the exchange (fedsim.flower.exchange)
packs the loop's per-client tasks into bundles and unpacks each bundle's reply into
per-client outcomes before the loop, the strategy, the recorders or the clock see
anything.

A bundle holds each distinct record once (every client of a FedAvg round gets the same
model object) plus a `fedsim.bundle` ConfigRecord saying which records make up which
client's message, which client state goes with it, and by when the work must be done.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord, RecordDict

from fedsim.ground.messages import OK, ClientOutcome, ClientTask

BUNDLE = "fedsim.bundle"  # the envelope's record: which clients, round, deadline, layout


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

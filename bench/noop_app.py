"""The floor: fedsim's round loop with clients that do no work and no central evaluation.

A train call sends the global model straight back; what remains per round is Flower's
dispatch through Ray (messages, actors, records), the sampling and the aggregation.

    python -m bench.noop_app --clients 1000 --fraction-fit 0.05 --rounds 10 --data ...
"""

from __future__ import annotations

import math
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from bench.swap import simulate_with
from fedsim.config import RunConfig


class NoCentralEvaluation:
    """Stands in for the runner's CentralEvaluator: nothing to compute, NaN to report."""

    def __init__(self, cfg: RunConfig, dataset: Any) -> None:
        pass

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        return math.nan, math.nan


def build_client_app(cfg: RunConfig, data: Any) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"train_loss": 0.0, "num-examples": 1})
        content = RecordDict({"arrays": msg.content["arrays"], "metrics": metrics})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"eval_loss": 0.0, "eval_accuracy": 0.0, "num-examples": 1})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


if __name__ == "__main__":
    raise SystemExit(simulate_with(build_client_app, NoCentralEvaluation))

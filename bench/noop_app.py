"""The floor: Flower's own round loop (`FedAvg.start`) on its simulation engine, one
engine node per client as Flower's examples run it, with clients that do no work (a
train call sends the model straight back) and no evaluation. What remains per round is
Flower's dispatch through Ray: messages, node polling, actors, records.

    python -m bench.noop_app --clients 1000 --fraction-fit 0.05 --rounds 10 --data ...

It writes rounds.csv (round_seconds: from one `evaluate_fn` call to the next, which
Flower makes after every round) and config.json like a fedsim run, so bench/measure.py
reads it the same way.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from bench.reference import config_from
from fedsim.flower import engine, ray_instance
from fedsim.ground.files import CLIENTS_CSV, ROUNDS_CSV
from fedsim.learning import models
from fedsim.outputs.files import CsvRecorder
from fedsim.outputs.records import RoundRecord, Timings
from fedsim.runner import folders

client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"train_loss": 0.0, "num-examples": 1})
    content = RecordDict({"arrays": msg.content["arrays"], "metrics": metrics})
    return Message(content=content, reply_to=msg)


def main(argv: list[str]) -> Path:
    started = time.perf_counter()
    cfg = config_from(argv)
    with folders.claimed_run_dir(cfg) as run_dir:
        timings = Timings()
        recorder = CsvRecorder(run_dir / ROUNDS_CSV, run_dir / CLIENTS_CSV)
        last = [time.perf_counter()]

        def record_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            now = time.perf_counter()
            record = RoundRecord(
                round=server_round, round_seconds=now - last[0] if server_round else 0
            )
            recorder.on_round_end(record, arrays)
            last[0] = now
            return None

        server_app = ServerApp()
        finished = threading.Event()

        @server_app.main()
        def serve(grid: Grid, context: Context) -> None:
            strategy = FedAvg(
                fraction_train=cfg.fraction_fit,
                fraction_evaluate=0.0,
                min_train_nodes=1,
                min_available_nodes=cfg.clients,
            )
            initial = ArrayRecord(models.build_model(cfg.model, seed=cfg.seed).state_dict())
            try:
                strategy.start(grid, initial, num_rounds=cfg.rounds, evaluate_fn=record_round)
            finally:
                finished.set()

        ray = ray_instance.RayStarter(cfg)
        status = folders.RunStatus(run_dir, cfg, timings, {"engine": "flower floor"})
        try:
            with status.running(started):
                engine.run_simulation(
                    server_app, client_app, cfg.clients, ray.cluster(cfg), finished
                )
                recorder.on_run_end(None)
        finally:
            ray.stop()
    return run_dir


if __name__ == "__main__":
    print(f"noop: done -> {main(sys.argv[1:])}")

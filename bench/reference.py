"""The reference: the same FedAvg run as `simulate.py`, as a plain single-process loop.

Same options, data cache, partitions, model, initial weights, per-client seeds, local
training, client and central evaluation, and the same rounds.csv and config.json
(clients.csv without bytes: nothing is sent); no Flower, no Ray, no messages. Clients
train one after another, each with all the machine's threads, on tensors gathered once
before the first round. This is the physical limit the harness is measured against.
Only FedAvg is implemented.

    python -m bench.reference --clients 2 --rounds 3 --data ../shared/data/cifar10 [--device cuda]
    python -m bench.reference ... --ceiling   # the compute ceiling (CeilingLoop)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from fedsim.front import cli, sweep
from fedsim.ground import streams
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.ground.files import CLIENTS_CSV, ROUNDS_CSV
from fedsim.learning import models, training
from fedsim.learning.tasks import Task
from fedsim.outputs.files import CsvRecorder
from fedsim.outputs.records import ClientRecord, RoundRecord, Timings
from fedsim.runner import folders
from fedsim.runner.inputs import load_data
from fedsim.simulation.sampling import sample_clients

Split = tuple[torch.Tensor, torch.Tensor]
State = dict[str, torch.Tensor]


def _weighted_mean(values: list, weights: list[int]):
    total = sum(weights)
    return sum(v * (w / total) for v, w in zip(values, weights, strict=True))


class ReferenceLoop:
    """FedAvg rounds over in-memory client tensors, timed like fedsim's RoundLoop."""

    def __init__(
        self,
        cfg: RunConfig,
        train: list[Split],
        val: list[Split],
        test: Split,
        timings: Timings,
        device: torch.device,
        task: Task,
    ) -> None:
        self.cfg, self.train, self.val, self.test = cfg, train, val, test
        self.timings, self.task = timings, task
        self.settings = training.train_settings(cfg)
        self.model = models.build_model(cfg.model, seed=cfg.seed, task=task).to(device)
        self.state: State = {k: v.clone() for k, v in self.model.state_dict().items()}

    def central(self) -> tuple[float, float]:
        tick = time.perf_counter()
        self.model.load_state_dict(self.state)
        result = training.evaluate(
            self.model, self.task, *self.test, batch_size=training.CENTRAL_BATCH_SIZE
        )
        self.timings.central_evaluate += time.perf_counter() - tick
        return result

    def sampled(self, server_round: int) -> list[int]:
        cfg, stream = self.cfg, streams.TRAINING_SAMPLE
        return sample_clients(cfg.seed, server_round, cfg.clients, cfg.fraction_fit, stream)

    def round(self, server_round: int) -> RoundRecord:
        cfg, started = self.cfg, time.perf_counter()
        states, losses, sizes, clients = [], [], [], []
        for pid in self.sampled(server_round):
            tick = time.perf_counter()
            self.model.load_state_dict(self.state)
            seed = streams.client_seed(cfg.seed, server_round, pid, streams.LOCAL_TRAINING)
            generator = torch.Generator().manual_seed(seed)
            images, labels = self.train[pid]
            trained = training.train(
                self.model, self.task, images, labels, self.settings, generator
            )
            losses.append(trained.loss)
            states.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
            sizes.append(len(labels))
            seconds = time.perf_counter() - tick
            clients.append(
                ClientRecord(
                    server_round, "train", pid, len(labels), losses[-1], None, "ok", seconds, 0, 0
                )
            )
        tick = time.perf_counter()
        self.timings.train += tick - started
        self.state = {k: _weighted_mean([s[k] for s in states], sizes) for k in self.state}
        self.timings.aggregate += time.perf_counter() - tick
        record = RoundRecord(
            round=server_round, train_loss=_weighted_mean(losses, sizes), clients=clients
        )
        return self.evaluated(record, started)

    def evaluated(self, record: RoundRecord, started: float) -> RoundRecord:
        """The round's record with its evaluations and its time since `started`."""
        if self.cfg.evaluates_on_clients:
            self._evaluate_on_clients(record.round, record)
        record.central_loss, record.central_accuracy = self.central()
        record.round_seconds = time.perf_counter() - started
        self.timings.per_round.append(record.round_seconds)
        self.timings.rounds += record.round_seconds
        return record

    def _evaluate_on_clients(self, server_round: int, record: RoundRecord) -> None:
        cfg, tick = self.cfg, time.perf_counter()
        stream = streams.EVALUATION_SAMPLE
        pids = sample_clients(cfg.seed, server_round, cfg.clients, cfg.fraction_evaluate, stream)
        self.model.load_state_dict(self.state)
        results = [training.evaluate(self.model, self.task, *self.val[pid]) for pid in pids]
        sizes = [len(self.val[pid][1]) for pid in pids]
        record.eval_loss = _weighted_mean([loss for loss, _ in results], sizes)
        record.eval_accuracy = _weighted_mean([accuracy for _, accuracy in results], sizes)
        self.timings.client_evaluate += time.perf_counter() - tick


class CeilingLoop(ReferenceLoop):
    """The compute ceiling of a round: one SGD step over all the sampled clients'
    images in one batch (the same arithmetic work as their local epoch, with none of
    the small batches' overhead), then the same evaluations. Not federated learning:
    what the machine can do with a round's work at best."""

    def round(self, server_round: int) -> RoundRecord:
        started = time.perf_counter()
        pids = self.sampled(server_round)
        images = torch.cat([self.train[pid][0] for pid in pids])
        labels = torch.cat([self.train[pid][1] for pid in pids])
        self.model.load_state_dict(self.state)
        self.model.train()
        optimizer = training.SGD(list(self.model.parameters()), self.cfg.lr, 0.0, 0.0)
        loss = self.task.loss(self.model(self.task.inputs(images)), labels)
        loss.backward()
        optimizer.step()
        self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.timings.train += time.perf_counter() - started
        return self.evaluated(RoundRecord(round=server_round, train_loss=float(loss)), started)


def _split(
    images: torch.Tensor, labels: torch.Tensor, rows: np.ndarray, device: torch.device
) -> Split:
    index = torch.from_numpy(rows)
    return images[index].to(device), labels[index].to(device)


CPU = torch.device("cpu")


def run(cfg: RunConfig, device: torch.device = CPU, ceiling: bool = False) -> Path:
    """The loop on `device` (bench/gpu_share.py runs it on the GPU); `ceiling`: the
    compute ceiling's rounds instead (CeilingLoop)."""
    if cfg.strategy != "fedavg":
        raise ConfigError("--strategy", "the reference loop implements fedavg only")
    imports = time.time() - psutil.Process().create_time()  # the process's start counts
    started = time.perf_counter() - imports
    timings = Timings(imports=imports)
    dataset, parts = load_data(cfg, timings)
    cfg = cfg.replace(clients=parts.clients)  # --partition natural: the data's groups
    tick = time.perf_counter()
    images = torch.from_numpy(np.array(dataset.train_x))
    labels = torch.from_numpy(np.array(dataset.train_y))
    test = tuple(torch.from_numpy(np.array(a)).to(device) for a in (dataset.test_x, dataset.test_y))
    train = [_split(images, labels, parts.train(pid), device) for pid in range(cfg.clients)]
    val = [_split(images, labels, parts.val(pid), device) for pid in range(cfg.clients)]
    timings.partition += time.perf_counter() - tick

    torch.set_num_threads(os.cpu_count() or 1)
    loop = (CeilingLoop if ceiling else ReferenceLoop)(
        cfg, train, val, test, timings, device, dataset.task
    )
    extra = {"engine": "compute ceiling" if ceiling else "plain loop", "device": str(device)}
    with folders.claimed_run_dir(cfg) as run_dir:
        recorder = CsvRecorder(run_dir / ROUNDS_CSV, run_dir / CLIENTS_CSV, timings)
        with folders.RunStatus(run_dir, cfg, timings, extra).running(started):
            loss, accuracy = loop.central()
            recorder.on_round_end(
                RoundRecord(0, central_loss=loss, central_accuracy=accuracy), None
            )
            for server_round in range(1, cfg.rounds + 1):
                record = loop.round(server_round)
                recorder.on_round_end(record, None)
                print(f"reference: round {server_round} {record.round_seconds:.2f} s", flush=True)
            recorder.on_run_end(None)
    return run_dir


def config_from(argv: list[str]) -> RunConfig:
    """simulate.py's options, parsed and validated by fedsim's own CLI (one run)."""
    (cfg,) = sweep.expand([cli.given_options(cli.build_parser(argv).parse_args(argv))])
    return cfg


def main(argv: list[str]) -> None:
    """simulate.py's options, `--device cpu|cuda` (default cpu) and `--ceiling`."""
    device = "cpu"
    if "--device" in argv:
        at = argv.index("--device")
        device = argv[at + 1]
        argv = argv[:at] + argv[at + 2 :]
    ceiling = "--ceiling" in argv
    argv = [arg for arg in argv if arg != "--ceiling"]
    print(f"reference: done -> {run(config_from(argv), torch.device(device), ceiling)}")


if __name__ == "__main__":
    main(sys.argv[1:])

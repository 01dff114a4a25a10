"""fedsim as a Flower App: the same ClientApp and round loop, run by Flower's own engines.

`flwr run .` (Flower's simulation runtime behind a SuperLink) and the Deployment Engine
(a SuperLink and SuperNodes on real devices) load `server_app` and `client_app` from
here, as pyproject.toml's [tool.flwr.app.components] names them. A run's options are
[tool.flwr.app.config] with `flwr run --run-config` overrides: fedsim's options in
kebab case (`local-epochs`), or Flower's names where it has one (`num-server-rounds`),
read exactly as the command line reads them.

No fedsim driver runs here to put the data into Ray's object store, so the ServerApp
and each client process read CIFAR-10 themselves (decoded once into each machine's
cache) and compute the same seeded partitions; the server still names each client's
partition in every message, as in fedsim's own simulation.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Message, UserConfig
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedsim.flower import engine
from fedsim.flower.client_app import build_client_app
from fedsim.flower.exchange import Transport
from fedsim.front import cli, sweep
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.ground.option import flag
from fedsim.learning.partition import Partitions
from fedsim.learning.tasks import Task
from fedsim.runner import folders, options
from fedsim.runner.assembly import assemble, run_facts
from fedsim.runner.inputs import load_data, prepare


def option_name(key: str) -> str:
    """The option a run-config key sets: `local-epochs` -> local_epochs."""
    name = sweep.ALIASES.get(key, key.replace("-", "_"))
    if name not in options.every():
        raise ConfigError(key, "is not a fedsim option (see `python simulate.py --help`)")
    return name


def config_from(run_config: UserConfig) -> RunConfig:
    """The run's RunConfig, through the same parsing and checks as the command line."""
    argv = []
    for key, value in run_config.items():
        name = option_name(key)
        if value == "":  # fedsim's default: for data, $FEDSIM_DATA on this machine
            continue
        if isinstance(value, bool):
            argv.append(flag(name) if value else "--no-" + flag(name)[2:])
        else:
            argv += [flag(name), str(value)]
    configs = sweep.expand([cli.given_options(cli.build_parser(argv).parse_args(argv))])
    if len(configs) != 1:
        raise ConfigError("run-config", "takes one value per option in a Flower App run")
    return configs[0]


@dataclass(frozen=True)
class LocalData:
    """A client's data read in its own process: from `cfg.data` through this machine's
    decoded cache, partitioned with the run's settings."""

    cfg: RunConfig

    @property
    def key(self) -> str:
        return f"local-{hash(self.cfg):x}"

    def load(self) -> tuple[np.ndarray, np.ndarray, Partitions, Task]:
        dataset, partitions = load_data(self.cfg)
        return dataset.train_x, np.asarray(dataset.train_y), partitions, dataset.task


@functools.cache
def _client_app_for(cfg: RunConfig) -> ClientApp:
    """fedsim's ClientApp for one run's options, built once per process."""
    return build_client_app(cfg, LocalData(cfg))


def _handle(msg: Message, context: Context) -> Message:
    return _client_app_for(config_from(context.run_config))(msg, context)


client_app = ClientApp()
client_app.train()(_handle)
client_app.evaluate()(_handle)

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """fedsim's round loop on Flower's grid, assembled as simulate.py's is."""
    started = time.perf_counter()
    cfg = config_from(context.run_config)
    inputs = prepare(cfg, started)
    with folders.claimed_run_dir(inputs.cfg) as run_dir:
        facts = {**run_facts(inputs, run_dir, None), "engine": "flower-app"}
        run = assemble(inputs, run_dir, None, facts)
        transport = Transport(one_node_per_client=True)
        with run.status.running(started):
            run.loop.run(engine.exchange_on(grid, run.loop_run(), transport))

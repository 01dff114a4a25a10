"""The run configuration: a frozen dataclass that flows one way, each setting declared
once below (fedsim.ground.option's machinery: help, default, typed bounds, roles, and
the concern it belongs to, the `--help` groups); the values they take and their limits
are in fedsim.ground.choices, or in the dispatch table that holds them (models,
partitions, attacks, algorithms). The field order is the order of the words in a
sweep's run names (`clients-8_dirichlet_seed-1`). An algorithm's own options are
declared in its file (fedsim.algorithms); their values travel in `strategy_options`.
fedsim.runner.options gathers both into one catalog, from which the command line,
experiment files, the Flower App's run config, validation, the summary and the docs
derive."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from fedsim.ground.choices import (
    DP_MODES,
    HUB_CIFAR10,
    MAX_NOISE_MULTIPLIER,
    MAX_SEED,
    SGD,
    VECTORIZE,
)
from fedsim.ground.option import (
    ALGORITHM,
    CLOCK,
    COUNTED,
    DATA,
    FAULTS,
    FEDERATION,
    FIXED,
    NOT_COMPARED,
    OUTPUTS,
    PRIVACY,
    RESOURCES,
    SPLITS,
    SYNCHRONOUS,
    TRAINING,
    WHERE,
    Bounds,
    Declared,
    Option,
    StrategyOptions,
    at_least,
    declare,
    declared_options,
    greater_than,
)


@dataclass(frozen=True)
class RunConfig(Declared):
    """Everything that decides what a run computes (and where it writes)."""

    # Federation
    clients: int = declare(
        2,
        "number of simulated clients (one data partition each)",
        FEDERATION,
        roles=(SPLITS,),
        bounds=at_least(1),
        applies=COUNTED,
    )
    rounds: int = declare(3, "number of federated rounds", FEDERATION, bounds=at_least(1))
    fraction_fit: float = declare(
        1.0,
        "share of clients sampled to train each round",
        FEDERATION,
        bounds=Bounds(0, 1, low_open=True),
    )
    fraction_evaluate: float = declare(
        1.0,
        "share of clients sampled for client-side evaluation (0: none)",
        FEDERATION,
        bounds=Bounds(0, 1),
    )
    evaluate_all_every: int = declare(
        0,
        "every K rounds and after the last, evaluate on every client's held-out share "
        "(0: the sampled clients only)",
        FEDERATION,
        bounds=at_least(0),
    )
    strategy: str = declare("fedavg", "the algorithm (its options: below)", ALGORITHM)
    # The simulated clock (fedsim.simulation.clock): device profiles, how a round ends
    profiles: str = declare(
        "",
        "client device profiles: a CSV file (client, examples_per_second, down_mbps, up_mbps, "
        "online) or 'lognormal' (seeded draws around published medians); default: every "
        "client the median device, always online",
        CLOCK,
    )
    deadline: float | None = declare(
        None,
        "simulated seconds a round waits: the updates of clients not done by then are "
        "discarded and counted as stragglers (default: wait for every client)",
        CLOCK,
        bounds=greater_than(0),
        applies=SYNCHRONOUS,
        unset="none",
        type=float,
    )
    over_select: float | None = declare(
        None,
        "sample ceil(F·k) clients and keep the first k to finish (Bonawitz et al. 2019: 1.3)",
        CLOCK,
        bounds=at_least(1),
        applies=SYNCHRONOUS,
        unset="none",
        type=float,
    )
    target_accuracy: float | None = declare(
        None,
        "summary.csv's sim_seconds_to_target: simulated seconds until central accuracy "
        "first reaches this",
        CLOCK,
        roles=(FIXED, NOT_COMPARED),  # it only reads the rounds: a finished run stays valid
        bounds=Bounds(0, 1, low_open=True),
        unset="none",
        type=float,
    )
    # Differential privacy and attacks (fedsim.algorithms.privacy, .attacks)
    dp: str = declare(
        "off",
        "differential privacy: server-side fixed or adaptive clipping, or client-side "
        "fixed clipping, with Gaussian noise on the aggregate",
        PRIVACY,
    )
    dp_noise_multiplier: float = declare(
        1.0,
        "noise standard deviation over the clipping norm (> 0: without noise no privacy "
        "can be accounted)",
        PRIVACY,
        bounds=Bounds(0, MAX_NOISE_MULTIPLIER, low_open=True),
        applies=("dp", *DP_MODES[1:]),
    )
    dp_clipping_norm: float = declare(
        1.0,
        "L2 norm each client's update is clipped to (server-adaptive: the initial norm)",
        PRIVACY,
        bounds=greater_than(0),
        applies=("dp", *DP_MODES[1:]),
    )
    dp_delta: float = declare(
        1e-5,
        "delta at which the privacy spent (dp_epsilon in rounds.csv) is reported",
        PRIVACY,
        bounds=Bounds(0, 1, low_open=True, high_open=True),
        applies=("dp", *DP_MODES[1:]),
    )
    byzantine_fraction: float = declare(
        0.0,
        "share of clients that are malicious (chosen by the seed, listed in config.json)",
        PRIVACY,
        bounds=Bounds(0, 1, high_open=True),
    )
    attack: str = declare(
        "sign-flip",
        "what malicious clients do: send the negated update, noise of the update's scale, "
        "the update ×10, or train on flipped labels",
        PRIVACY,
    )
    # Data
    data: str = declare(
        HUB_CIFAR10,
        "the data (docs/tasks.md): a Hugging Face dataset id, a folder of HF parquet files "
        "(images or a table), train.csv and test.csv, a cifar-10-batches-py folder, train/ "
        "and test/ folders of class folders, or a play's input.txt "
        "(default: $FEDSIM_DATA or uoft-cs/cifar10)",
        DATA,
        roles=(FIXED, NOT_COMPARED),  # compared by its content key instead
    )
    partition: str = declare("iid", "how the training set is split", DATA, roles=(SPLITS,))
    alpha: float = declare(
        0.5,
        "Dirichlet concentration (--partition dirichlet)",
        DATA,
        roles=(SPLITS,),
        bounds=greater_than(0),
        applies=("partition", "dirichlet"),
    )
    dirichlet_balance: bool = declare(
        False,
        "NIID-Bench's balancing: a client holding more than its share of examples gets no "
        "more of the next label (flwr-datasets' self_balancing)",
        DATA,
        roles=(SPLITS,),
        applies=("partition", "dirichlet"),
    )
    min_partition_size: int = declare(
        0,
        "redraw the Dirichlet split until every client holds at least this many examples",
        DATA,
        roles=(SPLITS,),
        bounds=at_least(0),
        applies=("partition", "dirichlet"),
    )
    classes_per_client: int = declare(
        2,
        "labels per client (--partition pathological)",
        DATA,
        roles=(SPLITS,),
        bounds=at_least(1),
        applies=("partition", "pathological"),
    )
    shards_per_client: int = declare(
        2,
        "label-sorted shards per client (--partition shard)",
        DATA,
        roles=(SPLITS,),
        bounds=at_least(1),
        applies=("partition", "shard"),
    )
    partition_column: str = declare(
        "",
        "the data's column naming each example's client (--partition natural: one client "
        "per value, as a writer or a hospital; --clients then comes from the data; data "
        "that names its own groups, as Heart Disease's centres, "
        "needs none)",
        DATA,
        roles=(SPLITS,),
    )
    only_group: str = declare(
        "",
        "train on one group's examples alone (a centre: one of the data's groups or "
        "--partition-column's values), as one client: the local baseline of a "
        "cross-silo table; every group is still evaluated",
        DATA,
        roles=(SPLITS,),
    )
    val_fraction: float = declare(
        0.1,
        "share of each client's partition held out for its own evaluation",
        DATA,
        roles=(SPLITS,),
        bounds=Bounds(0, 1, high_open=True),
    )
    normalize: str = declare(
        "range",
        "how pixels become a model's inputs: range scales them to [-1, 1] (Flower's "
        "quickstart); train-split standardises each channel by the training split's "
        "mean and standard deviation",
        DATA,
    )
    # Local training
    model: str = declare("cnn", "model to train", TRAINING)
    local_epochs: int = declare(
        1, "local epochs per round", TRAINING, bounds=at_least(1), applies=("local_steps", None)
    )
    local_steps: int | None = declare(
        None,
        "local batches per round instead of epochs (each epoch a new permutation of the "
        "client's examples, as many as the steps need): FLamby's num_updates",
        TRAINING,
        bounds=at_least(1),
        type=int,
    )
    batch_size: int = declare(32, "local batch size", TRAINING, bounds=at_least(1))
    client_optimizer: str = declare(
        SGD,
        "the clients' optimizer: sgd (with --momentum and --weight-decay) or adam "
        "(torch's defaults but --lr; its moments restart every round)",
        TRAINING,
    )
    lr: float = declare(0.01, "client learning rate", TRAINING, bounds=greater_than(0))
    momentum: float = declare(
        0.9,
        "client SGD momentum",
        TRAINING,
        bounds=Bounds(0, 1, high_open=True),
        applies=("client_optimizer", SGD),
    )
    weight_decay: float = declare(0.0, "client SGD weight decay", TRAINING, bounds=at_least(0))
    augment: bool = declare(False, "random crop (padding 4) + horizontal flip on clients", TRAINING)
    vectorize: str = declare(
        "auto",
        "train a bundle's clients at once (torch.func.vmap over their stacked weights): on, "
        "off (one after another: the numbers of fedsim before it), or auto: on where "
        "the clients train on a GPU, off on a CPU, where it measured slower",
        TRAINING,
        choices=VECTORIZE,
    )
    seed: int = declare(
        0,
        "seed for partitions, init, shuffling and sampling (fedsim.ground.streams)",
        FEDERATION,
        roles=(SPLITS,),
        bounds=Bounds(0, MAX_SEED),
    )
    # Resources and transport: how the simulation runs, never what it computes
    cpus_per_client: float = declare(
        1.0,
        "CPUs reserved per client actor",
        RESOURCES,
        roles=(NOT_COMPARED,),
        bounds=greater_than(0),
    )
    gpus_per_client: float | None = declare(
        None,
        "GPU share per client, e.g. 0.25 (default: 0 without CUDA; with GPUs, as many "
        "clients side by side on each as the CPUs allow)",
        RESOURCES,
        roles=(NOT_COMPARED,),
        bounds=at_least(0),
        type=float,
    )
    clients_per_message: int | None = declare(
        None,
        "virtual clients one engine message carries (default: auto; 1: one each)",
        RESOURCES,
        roles=(NOT_COMPARED,),
        bounds=at_least(1),
        type=int,
    )
    ray_address: str = declare(
        "",
        "attach to an existing Ray cluster (HOST:PORT or auto); default: a private one",
        RESOURCES,
        roles=(FIXED, NOT_COMPARED),
    )
    # Faults (fedsim.flower.client_app drops clients out; the loop counts failed rounds)
    client_failure_rate: float = declare(
        0.0,
        "probability that a client's train call fails (simulated dropout)",
        FAULTS,
        bounds=Bounds(0, 1),
    )
    max_failed_rounds: int = declare(
        3,
        "stop after this many rounds in a row in which no update reached the server",
        FAULTS,
        bounds=at_least(1),
    )
    round_timeout: float = declare(
        3600.0,
        "seconds to wait for client replies before cutting them off",
        FAULTS,
        roles=(NOT_COMPARED,),
        bounds=greater_than(0),
    )
    # Outputs
    results_dir: str = declare(
        "results",
        "parent folder of the run folders",
        OUTPUTS,
        roles=(FIXED, WHERE, NOT_COMPARED),
    )
    tensorboard: str = declare(
        "",
        "write TensorBoard event files (config and every round's metrics) to this folder",
        OUTPUTS,
        roles=(FIXED, WHERE, NOT_COMPARED),
    )
    mlflow: str = declare(
        "",
        "log the config and every round's metrics to MLflow: a local folder (file store) "
        "or a tracking server URI",
        OUTPUTS,
        roles=(FIXED, WHERE, NOT_COMPARED),
    )
    name: str = declare(
        "",
        "run folder name (default: time and key settings)",
        OUTPUTS,
        roles=(FIXED, WHERE, NOT_COMPARED),
    )
    client_states: str = declare(
        "keep",
        "once the run is complete, keep or remove its clients' memories "
        "(client_states.sqlite: SCAFFOLD's, FedDyn's); kept, it can train further",
        OUTPUTS,
        roles=(FIXED, WHERE, NOT_COMPARED),
    )
    # The chosen algorithm's own options, as it declares them (fedsim.runner.options)
    strategy_options: StrategyOptions = field(default_factory=StrategyOptions)

    @property
    def evaluates_on_clients(self) -> bool:
        return self.fraction_evaluate > 0 and self.val_fraction > 0

    @property
    def sampled_per_round(self) -> int:
        """How many clients a round samples to train (fedsim.simulation draws which)."""
        return sample_count(self.clients, self.fraction_fit)


def sample_count(clients: int, fraction: float) -> int:
    """How many of `clients` a fraction samples: at least one."""
    return min(clients, max(1, int(clients * fraction)))


def core_options() -> dict[str, Option]:
    """RunConfig's own options by name, in field order."""
    return declared_options(RunConfig)


def default_data() -> str:
    return os.environ.get("FEDSIM_DATA") or HUB_CIFAR10

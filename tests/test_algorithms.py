"""The algorithms' arithmetic, in process: SCAFFOLD and FedNova against hand-written
references on a tiny synthetic problem, and the attacks' and DP's building blocks.

fedsim's side runs exactly as in a run: the algorithm's Flower strategy configures the
round, each client's `train` runs on a ClientContext (its memory included), and the
strategy aggregates the replies. The references are written from the papers'
formulas as NIID-Bench codes them, with torch.optim.SGD; they share only what defines
the experiment: the data, the initial weights and each client's seed.
"""

from __future__ import annotations

import io
import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from torch import nn

from fedsim import algorithms
from fedsim.algorithms import attacks, privacy
from fedsim.algorithms.context import ClientContext
from fedsim.algorithms.feddyn import GRADIENT
from fedsim.algorithms.fednova import local_norm
from fedsim.algorithms.scaffold import CONTROL
from fedsim.ground import messages
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.ground.streams import client_seed
from fedsim.learning.tasks import CIFAR10
from fedsim.learning.trainers import OneAtATime
from fedsim.runner.options import make_config
from tests.conftest import ROOT

SIZES = (7, 12, 5, 9)  # unequal: weights, step counts and a_i differ between clients
ROUNDS = ((0, 1, 2), (1, 2, 3))  # who trains in each round: partial participation


pytestmark = pytest.mark.usefixtures("in_a_run")  # Flower builds messages in a run


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 10))


def _data(sizes: tuple[int, ...] = SIZES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per client, uint8 2x2 RGB images and labels that depend on them."""
    rng = np.random.default_rng(0)
    clients = []
    for size in sizes:
        images = rng.integers(0, 256, size=(size, 3, 2, 2), dtype=np.uint8)
        labels = images.reshape(size, -1)[:, :10].argmax(axis=1)
        clients.append((torch.from_numpy(images), torch.from_numpy(labels)))
    return clients


def _cfg(strategy: str, **options) -> RunConfig:
    return RunConfig(
        strategy=strategy,
        clients=len(SIZES),
        fraction_fit=0.75,  # 3 of 4 a round, as ROUNDS has it (DP's m)
        local_epochs=2,
        batch_size=4,
        lr=0.1,
        momentum=0.9,
        weight_decay=0.01,
        seed=3,
        **options,
    )


class _Grid:
    def __init__(self, pids) -> None:
        self.pids = pids

    def get_node_ids(self) -> list[int]:
        return [pid + 1 for pid in self.pids]


def _fedsim(cfg: RunConfig, rounds=ROUNDS, sizes: tuple[int, ...] = SIZES, after=None):
    """fedsim's algorithm (inside its DP wrapper, if any) over `rounds`: the final global
    weights, the strategy, the clients' memories and each round's metrics. `after`: go
    on from what an earlier call returned, its round numbers going on too."""
    algorithm = algorithms.build(cfg)
    strategy = privacy.wrap(cfg, algorithm.strategy())
    model, data = _model(), _data(sizes)
    arrays = ArrayRecord(model.state_dict())
    states: dict[int, RecordDict] = {}
    first = 1
    if after is not None:
        weights, strategy, states, done = after
        arrays, states, first = ArrayRecord(weights), dict(states), len(done) + 1

    def load_model(record: ArrayRecord) -> nn.Module:
        model.load_state_dict(record.to_torch_state_dict())
        return model

    metrics = []
    for server_round, pids in enumerate(rounds, first):
        sent = strategy.configure_train(server_round, arrays, ConfigRecord(), _Grid(pids))
        replies = []
        for message in sorted(sent, key=lambda m: m.metadata.dst_node_id):
            pid = message.metadata.dst_node_id - 1
            ctx = ClientContext(
                cfg,
                pid,
                server_round,
                message.content,
                states.get(pid, RecordDict()),
                load_model,
                partial(lambda pid, split: data[pid], pid),
            )
            (trained,) = algorithm.train_group([ctx], OneAtATime(model, CIFAR10))
            assert trained.error is None, trained.error
            result = trained.made
            if cfg.dp == "client-fixed":  # as the client loop does
                privacy.clip_reply(message.content, result.content)
            if result.state is not None:
                states[pid] = result.state
            replies.append(Message(content=result.content, reply_to=message))
        arrays, round_metrics = strategy.aggregate_train(server_round, replies)
        metrics.append(round_metrics)
    return arrays.to_torch_state_dict(), strategy, states, metrics


def _local_sgd(cfg, model, x, y, server_round, pid, after_step=None, extra_loss=None) -> int:
    """Plain momentum SGD over the client's seeded batches; returns the step count."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    generator = torch.Generator().manual_seed(client_seed(cfg.seed, server_round, pid, 0))
    steps = 0
    for _ in range(cfg.local_epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            loss = F.cross_entropy(model(x[index].float() / 127.5 - 1.0), y[index])
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
            steps += 1
    return steps


def _scaffold_reference(cfg: RunConfig):
    """SCAFFOLD as NIID-Bench's train_net_scaffold and its server loop."""
    model, data = _model(), _data()
    x = {k: v.clone() for k, v in model.state_dict().items()}
    c = {k: torch.zeros_like(v) for k, v in x.items()}
    c_local = {pid: {k: torch.zeros_like(v) for k, v in x.items()} for pid in range(len(SIZES))}
    for server_round, pids in enumerate(ROUNDS, 1):
        models, sizes, total_delta = [], [], {k: torch.zeros_like(v) for k, v in x.items()}
        for pid in pids:
            model.load_state_dict(x)
            c_i = c_local[pid]

            def correct(net, c_i=c_i):
                weights = net.state_dict()
                for key in weights:
                    weights[key] = weights[key] - cfg.lr * (c[key] - c_i[key])
                net.load_state_dict(weights)

            steps = _local_sgd(cfg, model, *data[pid], server_round, pid, correct)
            y = model.state_dict()
            c_new = {k: c_i[k] - c[k] + (x[k] - y[k]) / (steps * cfg.lr) for k in x}
            for k in x:
                total_delta[k] += c_new[k] - c_i[k]
            c_local[pid] = c_new
            models.append({k: v.clone() for k, v in y.items()})
            sizes.append(len(data[pid][1]))
        for k in x:
            c[k] = c[k] + total_delta[k] / len(SIZES)
        x = {k: sum(m[k] * n / sum(sizes) for m, n in zip(models, sizes, strict=True)) for k in x}
    return x, c, c_local


def _fednova_reference(cfg: RunConfig):
    """FedNova as NIID-Bench's train_net_fednova and its server loop."""
    model, data = _model(), _data()
    x = {k: v.clone() for k, v in model.state_dict().items()}
    rho = cfg.momentum
    for server_round, pids in enumerate(ROUNDS, 1):
        d_total = {k: torch.zeros_like(v) for k, v in x.items()}
        sizes = [len(data[pid][1]) for pid in pids]
        coeff = 0.0
        for pid, n in zip(pids, sizes, strict=True):
            model.load_state_dict(x)
            tau = _local_sgd(cfg, model, *data[pid], server_round, pid)
            a_i = (tau - rho * (1 - pow(rho, tau)) / (1 - rho)) / (1 - rho)
            y = model.state_dict()
            for k in x:
                d_total[k] += torch.true_divide(x[k] - y[k], a_i) * n / sum(sizes)
            coeff += a_i * n / sum(sizes)
        x = {k: x[k] - coeff * d_total[k] for k in x}
    return x


def _close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Every entry of `expected` equals `actual`'s to 1e-6."""
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, atol=1e-6, rtol=0, msg=key)


def _feddyn_reference(cfg: RunConfig, alpha: float):
    """FedDyn as Acar et al.'s Algorithm 1 writes it, on the same clients and seeds."""
    model, data = _model(), _data()
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    h = {k: torch.zeros_like(v) for k, v in theta.items()}
    grads = {pid: {k: torch.zeros_like(v) for k, v in theta.items()} for pid in range(len(SIZES))}
    for server_round, pids in enumerate(ROUNDS, 1):
        models = []
        for pid in pids:
            model.load_state_dict(theta)
            g = grads[pid]

            def dynamic(net, g=g):
                w = dict(net.named_parameters())
                linear = sum((g[k] * w[k]).sum() for k in w)
                return alpha / 2 * sum((w[k] - theta[k]).pow(2).sum() for k in w) - linear

            _local_sgd(cfg, model, *data[pid], server_round, pid, extra_loss=dynamic)
            w = {k: v.clone() for k, v in model.state_dict().items()}
            grads[pid] = {k: g[k] - alpha * (w[k] - theta[k]) for k in w}
            models.append(w)
        for k in theta:
            h[k] = h[k] - alpha / len(SIZES) * sum(m[k] - theta[k] for m in models)
            theta[k] = sum(m[k] for m in models) / len(models) - h[k] / alpha
    return theta, h, grads


def test_feddyn_matches_a_hand_written_reference() -> None:
    cfg = make_config(**_cfg("feddyn").flat(), feddyn_alpha=0.1)
    model, strategy, states, _ = _fedsim(cfg)
    reference, h, grads = _feddyn_reference(cfg, alpha=0.1)
    _close(model, reference)
    _close(dict(zip(h, map(torch.from_numpy, strategy.correction), strict=True)), h)
    assert sorted(states) == [0, 1, 2, 3]  # every client that trained keeps its g_i
    for pid, state in states.items():
        _close(state[GRADIENT].to_torch_state_dict(), grads[pid])
    plain, *_ = _fedsim(_cfg("fedavg"))
    assert max(float((plain[k] - reference[k]).abs().max()) for k in reference) > 1e-3


def test_scaffold_matches_a_hand_written_reference() -> None:
    cfg = _cfg("scaffold")
    model, strategy, states, _ = _fedsim(cfg)
    reference, c, c_local = _scaffold_reference(cfg)
    _close(model, reference)
    _close(strategy.control.to_torch_state_dict(), c)
    assert sorted(states) == [0, 1, 2, 3]  # every client that trained keeps its c_i
    for pid, state in states.items():
        _close(state[CONTROL].to_torch_state_dict(), c_local[pid])
    # the comparison can fail: without the corrections the model is elsewhere
    plain, *_ = _fedsim(_cfg("fedavg"))
    assert max(float((plain[k] - reference[k]).abs().max()) for k in reference) > 1e-3


def test_fednova_matches_a_hand_written_reference() -> None:
    cfg = _cfg("fednova")
    model, _, states, _ = _fedsim(cfg)
    reference = _fednova_reference(cfg)
    for key, value in reference.items():
        torch.testing.assert_close(model[key], value, atol=1e-6, rtol=0, msg=key)
    assert states == {}  # FedNova's clients keep no memory
    plain, *_ = _fedsim(_cfg("fedavg"))
    assert max(float((plain[k] - reference[k]).abs().max()) for k in reference) > 1e-3


def test_fednova_is_fedavg_when_every_client_takes_as_many_steps() -> None:
    # NIID-Bench's #C=1 parties (docs/niid_bench.md): equal a_i, so x - a·sum p_i (x - y_i)/a
    # is FedAvg's sum p_i y_i up to rounding (with SIZES' unequal clients they differ: above)
    equal = (8, 8, 8, 8)
    nova, *_ = _fedsim(_cfg("fednova"), sizes=equal)
    plain, *_ = _fedsim(_cfg("fedavg"), sizes=equal)
    _close(nova, plain)


def test_fednova_local_norm() -> None:
    assert local_norm(7, 0.0) == 7.0
    assert local_norm(1, 0.9) == pytest.approx(1.0)  # one step: no momentum has built up
    assert local_norm(100, 0.9) == pytest.approx(10 * 100 - 90, rel=1e-4)


# ---- attacks ------------------------------------------------------------------------


def test_malicious_clients_are_a_seeded_share() -> None:
    cfg = RunConfig(clients=20, byzantine_fraction=0.3, seed=1)
    chosen = attacks.malicious(cfg)
    assert len(chosen) == 6 and chosen <= set(range(20))
    assert chosen == attacks.malicious(RunConfig(clients=20, byzantine_fraction=0.3, seed=1))
    assert chosen != attacks.malicious(cfg.replace(seed=2))
    assert attacks.malicious(cfg.replace(byzantine_fraction=0.0)) == frozenset()
    assert attacks.describe(cfg)["malicious_clients"] == sorted(chosen)


@pytest.mark.parametrize("attack", ["sign-flip", "scale", "gaussian"])
def test_model_poisoning_rewrites_the_update(attack) -> None:
    cfg = RunConfig(clients=2, byzantine_fraction=0.5, attack=attack)
    (pid,) = attacks.malicious(cfg)
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trained = {k: v + 0.01 * torch.randn_like(v) for k, v in start.items()}
    model.load_state_dict(trained)
    content = RecordDict({messages.ARRAYS: ArrayRecord(start)})
    ctx = ClientContext(cfg, pid, 1, content, RecordDict(), None, None)
    attacks.poison(ctx, model)
    for key, value in model.state_dict().items():
        update, honest = value - start[key], trained[key] - start[key]
        if attack == "sign-flip":
            torch.testing.assert_close(update, -honest)
        elif attack == "scale":
            torch.testing.assert_close(update, attacks.SCALE * honest)
        else:  # noise of the update's size, unrelated to its direction
            assert float(update.norm() / honest.norm()) == pytest.approx(1.0, abs=0.6)
            assert abs(float(F.cosine_similarity(update.flatten(), honest.flatten(), 0))) < 0.5
    honest_ctx = ClientContext(cfg, 1 - pid, 1, content, RecordDict(), None, None)
    model.load_state_dict(trained)
    attacks.poison(honest_ctx, model)
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained)


def test_label_flip() -> None:
    assert attacks.flip_labels(torch.tensor([0, 3, 9]), 10).tolist() == [9, 6, 0]


# ---- differential privacy -------------------------------------------------------------


def test_client_side_clipping_bounds_the_update_norm() -> None:
    sent_model = {"w": np.zeros(4, np.float32), "b": np.ones(2, np.float32)}
    sent = RecordDict(
        {
            messages.ARRAYS: ArrayRecord({k: Array(v) for k, v in sent_model.items()}),
            messages.CONFIG: ConfigRecord({"clipping_norm": 0.5}),
        }
    )
    reply_model = {"w": np.full(4, 3.0, np.float32), "b": np.full(2, 5.0, np.float32)}
    reply = messages.train_reply(
        ArrayRecord({k: Array(v) for k, v in reply_model.items()}), {"num-examples": 1}
    )
    privacy.clip_reply(sent, reply)
    clipped = reply[messages.ARRAYS].to_numpy_ndarrays()
    update = np.concatenate([c - s for c, s in zip(clipped, sent_model.values(), strict=True)])
    assert np.linalg.norm(update) == pytest.approx(0.5, rel=1e-5)
    assert update[0] / update[-1] == pytest.approx(3.0 / 4.0, rel=1e-5)  # direction kept


def test_accountant_is_dp_accounting_on_sampling_without_replacement() -> None:
    from dp_accounting import dp_event, rdp
    from dp_accounting.privacy_accountant import NeighboringRelation

    accountant = privacy.Accountant(clients=100, sampled=10, delta=1e-5)
    accountant.spend(0.5)
    expected = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    gaussian = dp_event.GaussianDpEvent(0.5)
    expected.compose(dp_event.SampledWithoutReplacementDpEvent(100, 10, gaussian))
    assert accountant.epsilon() == pytest.approx(expected.get_epsilon(1e-5), rel=1e-9)


DP = {"dp_noise_multiplier": 0.2, "dp_clipping_norm": 0.05}


def test_clipping_in_the_client_loop_equals_flowers_server_side_clipping() -> None:
    """Clipping every update to C on the clients, or on the server before aggregating,
    is the same arithmetic; with the same seeded noise, the same model."""
    server, _, _, server_metrics = _fedsim(_cfg("fedavg", dp="server-fixed", **DP))
    client, _, _, client_metrics = _fedsim(_cfg("fedavg", dp="client-fixed", **DP))
    for key, value in server.items():
        torch.testing.assert_close(client[key], value, atol=1e-6, rtol=0, msg=key)
    plain, *_ = _fedsim(_cfg("fedavg"))
    assert max(float((plain[k] - server[k]).abs().max()) for k in server) > 1e-3  # clipped
    epsilons = [m[messages.DP_EPSILON] for m in server_metrics]
    assert epsilons == [m[messages.DP_EPSILON] for m in client_metrics]
    assert 0 < epsilons[0] < epsilons[1]


def test_adaptive_clipping_accounts_for_both_of_its_noises() -> None:
    """Flower splits z between the update (its effective multiplier, with the norm it
    has just updated) and the clipped count (standard deviation m/20, sensitivity 1)."""
    from dp_accounting import dp_event, rdp
    from dp_accounting.privacy_accountant import NeighboringRelation

    cfg = _cfg("fedavg", dp="server-adaptive", **DP)
    _, strategy, _, metrics = _fedsim(cfg, rounds=ROUNDS[:1])
    z, m, norm_before = 0.2, 3, 0.05
    count_stddev = m / 20
    value = (z**-2 - (2 * count_stddev) ** -2) ** -0.5
    norm_after = strategy.wrapper.clipping_norm
    assert norm_after != norm_before
    per_round = ((value * norm_after / norm_before / 2) ** -2 + count_stddev**-2) ** -0.5
    accountant = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    gaussian = dp_event.GaussianDpEvent(per_round)
    accountant.compose(dp_event.SampledWithoutReplacementDpEvent(len(SIZES), m, gaussian))
    expected = accountant.get_epsilon(cfg.dp_delta)
    assert metrics[0][messages.DP_EPSILON] == pytest.approx(expected, rel=1e-9)


# ---- options that must agree, refused before anything starts ----------------------------

CONFIG_ERRORS = [
    ("--strategy bulyan --clients 6 --num-malicious 1", "--num-malicious: Bulyan needs 4 × 1 + 3"),
    ("--strategy multikrum --clients 4 --num-to-keep 5", "--num-to-keep: got 5, but 4 train"),
    ("--strategy scaffold --dp server-fixed", "--dp: scaffold: its reply carries its control"),
    ("--dp server-adaptive --clients 10", "--dp-noise-multiplier: server-adaptive clipping"),
    ("--trim-fraction 0.5", "--trim-fraction: got 0.5, must be in [0, 0.5)"),
    ("--attack flood", "--attack: unknown value 'flood'"),
]


@pytest.mark.parametrize(("args", "message"), CONFIG_ERRORS, ids=[a for a, _ in CONFIG_ERRORS])
def test_options_that_cannot_work_are_one_line_exit_2(args, message, tmp_path, capsys) -> None:
    from fedsim.front.cli import main

    results = tmp_path / "results"
    assert main([*args.split(), "--results-dir", str(results)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert not results.exists()


# ---- the algorithms describe themselves -----------------------------------------------


def _table_rows(path: Path) -> dict[str, str]:
    """`--strategy` name -> its table row, from a Markdown table whose first column
    names algorithms in backticks."""
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            for name in re.findall(r"`([a-z-]+)`", first):
                rows[name] = line
    return rows


@pytest.mark.parametrize("page", ["docs/algorithms.md", "README.md"])
def test_the_docs_tables_list_every_algorithm_with_its_options(page) -> None:
    from fedsim.ground.option import flag

    rows = _table_rows(ROOT / page)
    assert set(rows) >= set(algorithms.ALGORITHMS), set(algorithms.ALGORITHMS) - set(rows)
    for name in algorithms.ALGORITHMS:
        for option in algorithms.algorithm_class(name).options():
            assert f"`{flag(option.name)}`" in rows[name], (page, name, option.name)


def test_an_algorithms_options_are_its_own() -> None:
    """FedDyn's option is read from the run's options, its default where none is given,
    and is no option of another algorithm's run."""
    from fedsim.runner import options

    assert algorithms.build(make_config(strategy="feddyn")).feddyn_alpha == 0.01
    dyn = make_config(strategy="feddyn", feddyn_alpha=0.2)
    assert algorithms.build(dyn).feddyn_alpha == 0.2 and dyn.flat()["feddyn_alpha"] == 0.2
    plain = make_config(strategy="fedavg", feddyn_alpha=0.2)  # it would change nothing
    assert "feddyn_alpha" not in plain.strategy_options
    assert options.applies(dyn, "feddyn_alpha") and not options.applies(plain, "feddyn_alpha")
    with pytest.raises(ConfigError, match=r"^--feddyn-alpha: got -1\.0, must be > 0"):
        make_config(strategy="fedavg", feddyn_alpha=-1.0)
    assert options.owners()["server_lr"] == (
        "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedbuff"
    )  # fmt: skip


RESUMABLE = [
    (name, dp)
    for name in algorithms.ALGORITHMS
    if name != "fedbuff"  # its updates arrive on the clock: tests/test_clock.py resumes it
    for dp in ("off", "server-adaptive", "client-fixed")
    if dp == "off" or name in ("fedavg", "fedadam")
]


@pytest.mark.parametrize(("name", "dp"), RESUMABLE, ids=[f"{n}-{dp}" for n, dp in RESUMABLE])
def test_the_server_state_a_checkpoint_keeps_goes_on_as_the_strategy_would(name, dp) -> None:
    """After round 1, the strategy's state as checkpoint.pt keeps it (no pickled object:
    weights_only loads it) put into a fresh build of the strategy: round 2 from there
    gives exactly what round 2 from the strategy itself gives."""
    from fedsim.runner import server_state

    options = {"dp": dp, "dp_noise_multiplier": 0.01} if dp != "off" else {}
    cfg = _cfg(name, **options)
    first = _fedsim(cfg, rounds=ROUNDS[:1])
    buffer = io.BytesIO()
    torch.save(server_state.state_of(first[1]), buffer)
    buffer.seek(0)
    fresh = privacy.private(cfg, algorithms.build(cfg).strategy())
    server_state.restore(fresh, torch.load(buffer, weights_only=True))
    numpy_rng, torch_rng = np.random.get_state(), torch.get_rng_state()  # DP's noise
    going_on = _fedsim(cfg, rounds=ROUNDS[1:], after=first)
    np.random.set_state(numpy_rng)
    torch.set_rng_state(torch_rng)
    resumed = _fedsim(cfg, rounds=ROUNDS[1:], after=(first[0], fresh, first[2], first[3]))
    for key, value in going_on[0].items():
        assert torch.equal(value, resumed[0][key]), key
    assert going_on[3] == resumed[3]  # the round's metrics, dp_epsilon included
    assert server_state.state_of(going_on[1]).keys() == server_state.state_of(resumed[1]).keys()

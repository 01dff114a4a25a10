"""Differential privacy with Flower's own strategy wrappers, and the privacy it spends.

`--dp server-fixed` and `server-adaptive` wrap the algorithm's strategy in Flower's
DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping: the server clips each client's
update (its model minus the global one) to the clipping norm C, lets the strategy
aggregate, and adds Gaussian noise of standard deviation z·C/m to the result (m clients
a round; adaptive clipping, Andrew et al. 2021, moves C towards the median update norm
and spends part of the noise on counting clipped updates). `--dp client-fixed` wraps it
in DifferentialPrivacyClientSideFixedClipping, which sends C to the clients. Flower
clips there with its fixedclipping_mod, but a ClientApp mod sees a whole bundle of
fedsim's clients at once, so each client's reply is clipped in the client loop
(`clip_reply`) with the function the mod itself calls.

The privacy spent is accounted with Google's dp-accounting (Rényi DP): every round
samples exactly m of the N clients without replacement, a
SampledWithoutReplacementDpEvent, which the RDP accountant supports under the
replace-one relation. Replacing one client moves the sum of clipped updates by up to
2C, so the Gaussian's noise multiplier is z/2 relative to that sensitivity (the library
expects it so, google/differential-privacy#378; Flower's own accountant passes z). For
adaptive clipping the round's multiplier combines the value noise Flower applies (its
effective multiplier, times C after / C before the round: Flower noises with the norm
it has just updated) and the clipped-count noise (sensitivity 1). The guarantee is for
the mean of m clipped updates: FedAvg with equal client weights. Other aggregations get
Flower's clipping and noise, but the epsilon does not describe them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, compute_clip_model_update

from fedsim.ground import messages, streams
from fedsim.ground.choices import CLIENT_FIXED, DP_OFF, SERVER_ADAPTIVE, SERVER_FIXED
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.ground.option import flag


class Accountant:
    """Epsilon at `delta` after the rounds spent so far (RDP, sampling without
    replacement of `sampled` of `clients`). Its state is the list of the rounds' noise
    multipliers (`spent`, what a checkpoint keeps); dp-accounting's ledger is derived
    from it, composed in the same order whenever epsilon is asked for."""

    NOT_SAVED = ("_rdp", "_composed")  # derived from `spent` (fedsim.runner.server_state)

    def __init__(self, clients: int, sampled: int, delta: float) -> None:
        self.clients, self.sampled, self.delta = clients, sampled, delta
        self.spent: list[float] = []
        self._rdp: Any = None
        self._composed = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        """An accountant pickled by fedsim before checkpoints kept `spent` (a checkpoint
        of the first format) had composed its rounds into its ledger: read them back
        from it, in order (dp-accounting merges a run of equal rounds into one count)."""
        self.__dict__.update(state)
        if "spent" not in state:
            from dp_accounting import dp_event

            ledger = state["_rdp"].ledger
            if isinstance(ledger, dp_event.ComposedDpEvent):
                events = ledger.events
            else:  # one round's event, or none (a NoOpDpEvent)
                events = [] if isinstance(ledger, dp_event.NoOpDpEvent) else [ledger]
            self.spent = []
            for event in events:
                count = event.count if isinstance(event, dp_event.SelfComposedDpEvent) else 1
                inner = event.event if isinstance(event, dp_event.SelfComposedDpEvent) else event
                self.spent += [inner.event.noise_multiplier] * count
            self._rdp, self._composed = None, 0

    def spend(self, noise_multiplier: float) -> None:
        """One released round of a Gaussian mechanism with this multiplier (noise standard
        deviation over the replace-one sensitivity; > 0, fedsim.ground.config's bounds)."""
        self.spent.append(noise_multiplier)

    def epsilon(self) -> float:
        from dp_accounting import dp_event, rdp
        from dp_accounting.privacy_accountant import NeighboringRelation

        if self._rdp is None:
            self._rdp = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
            self._composed = 0
        for multiplier in self.spent[self._composed :]:
            gaussian = dp_event.GaussianDpEvent(multiplier)
            self._rdp.compose(
                dp_event.SampledWithoutReplacementDpEvent(self.clients, self.sampled, gaussian)
            )
        self._composed = len(self.spent)
        return float(self._rdp.get_epsilon(self.delta))


def _combined(*multipliers: float) -> float:
    """Gaussian mechanisms released together are one, with 1/z² = Σ 1/z_j²."""
    return sum(z**-2 for z in multipliers) ** -0.5


class PrivateStrategy(Strategy):
    """Flower's DP wrapper, and the accountant: each round's aggregate reports the privacy
    spent so far as the `dp_epsilon` metric. Both are in checkpoint.pt's server state
    (fedsim.runner.server_state), so a resumed run goes on with the same clipping norm
    and the same account."""

    def __init__(self, wrapper: Strategy, accountant: Accountant) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.accountant = accountant

    def _noise_multiplier(self, norm_before: float) -> float:
        wrapper = self.wrapper
        if isinstance(wrapper, DifferentialPrivacyServerSideAdaptiveClipping):
            value = wrapper.noise_multiplier * wrapper.clipping_norm / norm_before / 2
            return _combined(value, wrapper.clipped_count_stddev)
        return wrapper.noise_multiplier / 2

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.wrapper.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        norm_before = self.wrapper.clipping_norm
        arrays, metrics = self.wrapper.aggregate_train(server_round, list(replies))
        if arrays is not None:  # a round whose aggregate was released
            self.accountant.spend(self._noise_multiplier(norm_before))
        metrics = MetricRecord(dict(metrics or {}))
        metrics[messages.DP_EPSILON] = self.accountant.epsilon()
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.wrapper.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.wrapper.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.wrapper.summary()


def _server_fixed(strategy: Strategy, z: float, norm: float, sampled: int) -> Strategy:
    return DifferentialPrivacyServerSideFixedClipping(strategy, z, norm, sampled)


def _server_adaptive(strategy: Strategy, z: float, norm: float, sampled: int) -> Strategy:
    return DifferentialPrivacyServerSideAdaptiveClipping(
        strategy, z, sampled, initial_clipping_norm=norm
    )


def _client_fixed(strategy: Strategy, z: float, norm: float, sampled: int) -> Strategy:
    return DifferentialPrivacyClientSideFixedClipping(strategy, z, norm, sampled)


OFF = DP_OFF
WRAPPERS = {  # --dp's modes (fedsim.ground.choices.DP_MODES): Flower's wrapper for each
    SERVER_FIXED: _server_fixed,
    SERVER_ADAPTIVE: _server_adaptive,
    CLIENT_FIXED: _client_fixed,
}


def check(cfg: RunConfig) -> None:
    """What Flower's DP wrappers would refuse mid-run, and algorithms they cannot wrap."""
    if cfg.dp == OFF:
        return
    from fedsim.algorithms import algorithm_class

    reason = algorithm_class(cfg.strategy).not_with_dp
    if reason:
        raise ConfigError(flag("dp"), f"{cfg.strategy}: {reason}")
    sampled = cfg.sampled_per_round
    if cfg.dp == SERVER_ADAPTIVE and cfg.dp_noise_multiplier * 10 >= sampled:
        raise ConfigError(
            flag("dp_noise_multiplier"),
            f"server-adaptive clipping spends part of the noise on counting clipped updates "
            f"(standard deviation clients/20); Flower needs more than 10 × "
            f"{cfg.dp_noise_multiplier:g} clients a round, {sampled} train each round "
            "(--clients × --fraction-fit)",
        )


def wrap(cfg: RunConfig, strategy: Strategy) -> Strategy:
    """The algorithm's strategy as `--dp` asks: itself, or inside Flower's DP wrapper,
    whose noise is then seeded by the run's seed."""
    if cfg.dp == OFF:
        return strategy
    streams.seed_dp_noise(cfg.seed)
    return private(cfg, strategy)


def private(cfg: RunConfig, strategy: Strategy) -> Strategy:
    """`wrap` without seeding anything (to name what a run would use)."""
    if cfg.dp == OFF:
        return strategy
    sampled = cfg.sampled_per_round
    wrapper = WRAPPERS[cfg.dp](strategy, cfg.dp_noise_multiplier, cfg.dp_clipping_norm, sampled)
    return PrivateStrategy(wrapper, Accountant(cfg.clients, sampled, cfg.dp_delta))


def kind(strategy: Strategy) -> str:
    """What a strategy is, wrapper included: `FedAvg`, or `FedAvg in
    DifferentialPrivacyServerSideFixedClipping`."""
    if isinstance(strategy, PrivateStrategy):
        inner = type(strategy.wrapper.strategy).__name__
        return f"{inner} in {type(strategy.wrapper).__name__}"
    return type(strategy).__name__


def clip_reply(sent: RecordDict, reply: RecordDict) -> None:
    """What Flower's fixedclipping_mod does to one client's train reply, in place: clip
    (reply model - sent model) to the norm the server put in the config."""
    norm = float(sent[messages.CONFIG][KEY_CLIPPING_NORM])
    original = sent[messages.ARRAYS]
    ((key, arrays),) = reply.array_records.items()
    if list(arrays.keys()) != list(original.keys()):
        raise ValueError("the reply's arrays are not the model's: nothing to clip against")
    clipped = arrays.to_numpy_ndarrays()
    compute_clip_model_update(clipped, original.to_numpy_ndarrays(), norm)
    reply[key] = ArrayRecord(
        {name: Array(np.asarray(value)) for name, value in zip(arrays.keys(), clipped, strict=True)}
    )

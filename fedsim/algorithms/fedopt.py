"""Adaptive Federated Optimization (Reddi et al., ICLR 2021): FedAvg whose server
applies the averaged client update with an adaptive optimizer, FedAdam, FedYogi or
FedAdagrad. One algorithm with three server optimizers: Flower's FedOpt classes."""

from __future__ import annotations

from flwr.serverapp import strategy as strategies

from fedsim.algorithms.base import SAMPLE_ALL, SERVER_LR, Algorithm, given
from fedsim.ground.option import Bounds, Option, greater_than


class _FedOpt(Algorithm):
    source = "Reddi et al., ICLR 2021"
    optimizer: type[strategies.Strategy]
    server_lr = SERVER_LR
    server_tau = Option(
        None,
        "the server optimizer's adaptivity tau (auto: Flower's 1e-3; FLamby's 1e-8)",
        bounds=greater_than(0),
        type=float,
    )

    def strategy(self) -> strategies.Strategy:
        options = given(eta=self.server_lr, tau=self.server_tau, **self.moments())
        return self.optimizer(**SAMPLE_ALL, eta_l=self.cfg.lr, **options)

    def moments(self) -> dict[str, float | None]:
        return {}


class _WithMoments(_FedOpt):
    """FedAdam and FedYogi: a second-moment estimate with its own decay."""

    server_beta2 = Option(
        None,
        "the server optimizer's second-moment decay (auto: Flower's 0.99; FLamby's 0.999)",
        bounds=Bounds(0, 1, high_open=True),
        type=float,
    )

    def moments(self) -> dict[str, float | None]:
        return {"beta_2": self.server_beta2}


class FedAdam(_WithMoments):
    optimizer = strategies.FedAdam


class FedYogi(_WithMoments):
    optimizer = strategies.FedYogi


class FedAdagrad(_FedOpt):
    optimizer = strategies.FedAdagrad

"""Adaptive Federated Optimization (Reddi et al., ICLR 2021): FedAvg whose server
applies the averaged client update with an adaptive optimizer, FedAdam, FedYogi or
FedAdagrad. One algorithm with three server optimizers: Flower's FedOpt classes."""

from __future__ import annotations

from flwr.serverapp import strategy as strategies

from fedsim.algorithms.base import SAMPLE_ALL, SERVER_LR, Algorithm, given


class _FedOpt(Algorithm):
    source = "Reddi et al., ICLR 2021"
    optimizer: type[strategies.Strategy]
    server_lr = SERVER_LR

    def strategy(self) -> strategies.Strategy:
        return self.optimizer(**SAMPLE_ALL, eta_l=self.cfg.lr, **given(eta=self.server_lr))


class FedAdam(_FedOpt):
    optimizer = strategies.FedAdam


class FedYogi(_FedOpt):
    optimizer = strategies.FedYogi


class FedAdagrad(_FedOpt):
    optimizer = strategies.FedAdagrad

"""Simulated attacks: a seeded share of the clients is malicious (--byzantine-fraction).

Model poisoning (sign-flip, gaussian, scale) rewrites a malicious client's weights after
its local training, before its algorithm builds the reply; data poisoning (label-flip)
trains on wrong labels. Either way the server sees an ordinary reply, as it would from
a compromised device, and every algorithm (SCAFFOLD's control variates and FedNova's
normalised update included) is attacked through the same weights.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from fedsim.ground import messages, streams
from fedsim.ground.config import RunConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fedsim.algorithms.context import ClientContext

MODEL_POISONING = ("sign-flip", "gaussian", "scale")  # rewrite the trained weights
DATA_POISONING = ("label-flip",)  # train on wrong labels
ATTACKS = MODEL_POISONING + DATA_POISONING  # --attack's choices
SCALE = 10.0  # the scale attack's boost (Bhagoji et al., ICML 2019, "explicit boosting")


@functools.cache
def malicious(cfg: RunConfig) -> frozenset[int]:
    """The malicious partitions: round(F × clients) of them, drawn from the seed alone."""
    count = int(cfg.byzantine_fraction * cfg.clients + 0.5)
    rng = streams.run_rng(cfg.seed, streams.MALICIOUS)
    return frozenset(rng.choice(cfg.clients, size=count, replace=False).tolist())


def attack_of(cfg: RunConfig, pid: int) -> str | None:
    """What client `pid` does to its reply; None for an honest client."""
    return cfg.attack if pid in malicious(cfg) else None


def describe(cfg: RunConfig) -> dict[str, object]:
    """config.json's record of the attackers, if any (clients.csv keeps its columns)."""
    pids = sorted(malicious(cfg))
    return {"malicious_clients": pids, "attack": cfg.attack} if pids else {}


def announce(cfg: RunConfig) -> str:
    """The console's line about the attackers ("" without any)."""
    pids = sorted(malicious(cfg))
    if not pids:
        return ""
    shown = ", ".join(map(str, pids[:20])) + (", …" if len(pids) > 20 else "")
    return (
        f"\nfedsim: {len(pids)} of {cfg.clients} clients are malicious ({cfg.attack}): "
        f"{shown} (config.json lists them)"
    )


def flip_labels(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Label flipping (Fang et al., USENIX Security 2020): label l of C classes becomes
    C - 1 - l (9 - l on CIFAR-10)."""
    return classes - 1 - labels


def poison(ctx: ClientContext, model: nn.Module) -> None:
    """Rewrite a malicious client's trained weights w from the global weights g, in place:
    sign-flip sends g - (w - g), scale g + 10 (w - g), gaussian g + noise with the
    update's root-mean-square, tensor by tensor. Honest clients are left alone."""
    attack = attack_of(ctx.cfg, ctx.pid)
    if attack in MODEL_POISONING:
        _poison(ctx, model, attack)


def _poison(ctx: ClientContext, model: nn.Module, attack: str) -> None:
    import torch

    start = ctx.content[messages.ARRAYS].to_torch_state_dict()
    generator = ctx.generator(streams.ATTACK_NOISE)
    with torch.no_grad():
        for name, weights in model.state_dict().items():
            if not weights.is_floating_point():
                continue
            origin = start[name].to(weights.device)
            update = weights - origin
            if attack == "sign-flip":
                update = -update
            elif attack == "scale":
                update = SCALE * update
            else:
                noise = torch.randn(update.shape, generator=generator).to(weights.device)
                update = noise * update.pow(2).mean().sqrt()
            weights.copy_(origin + update)

"""Objectives as phases, and the registry `objective.name` is looked up in.

An objective is a sequence of phases. Each phase names the networks it updates and computes one
micro-batch's loss: `training_step` (train.steps) freezes every other network, accumulates the
phase's gradients over the micro-batches of a global batch and updates its networks once, then
runs the next phase. Soft-IntroVAE is an encoder phase and a decoder phase; the VAE one phase that
updates both; a model of more networks brings phases of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

Stats = dict[str, Tensor]
# run(backend, x, z_prior, carried, objective_config, scale) -> (loss, stats, value carried to the next phase);
# the backend is a train.backend.Backend, the config the run's objective section
PhaseRun = Callable[[Any, Tensor, Tensor, Any, Any, float], tuple[Tensor, Stats, Any]]


@dataclass(frozen=True)
class Phase:
    name: str  # keys its gradient scaler and its count of skipped updates
    updates: tuple[str, ...]  # the model's networks this phase trains; the others are frozen
    run: PhaseRun


OBJECTIVES: dict[str, tuple[Phase, ...]] = {}
WARMUPS: dict[str, str] = {}  # objective -> the objective its warm-up (train.vae_warmup_kimg) runs


def register_objective(name: str, phases: Sequence[Phase], warmup: str = "vae") -> None:
    """Make `objective.name: name` train with `phases`, in order, after a warm-up of the objective `warmup`
    (a later call replaces it)."""
    names = [phase.name for phase in phases]
    if not phases or len(set(names)) != len(names):
        raise ValueError(f"objective {name!r} needs phases with distinct names, got {names}")
    OBJECTIVES[name] = tuple(phases)
    WARMUPS[name] = warmup


def warmup_objective(name: str) -> str:
    return WARMUPS.get(name, "vae")


def objective_phases(name: str) -> tuple[Phase, ...]:
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name]

"""Schedules: warmup + cosine learning rate, temperature annealing, curriculum competence.

Every schedule is a pure function of the step (``value(step)`` / ``get_lr(step)``), plus a counter
advanced by ``step()`` that pushes the new value into an optional target (an optimizer's ``lr``, a
loss's ``temperature``). Nothing is random except :meth:`CurriculumScheduler.sample`, which is seeded.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._array import checked_options, non_negative_float, non_negative_int, one_of, positive_float, positive_int
from ..errors import ConfigError, ShapeError
from ._checks import matrix

__all__ = ["WarmupCosineScheduler", "TemperatureScheduler", "CurriculumScheduler"]


def _step_arg(step: Any) -> int:
    return non_negative_int(step, "step")


class WarmupCosineScheduler:
    """Linear warmup then cosine decay (Loshchilov & Hutter 2017, "SGDR"; Goyal et al. 2017 for warmup).

    For step ``s`` (the number of optimizer steps taken so far):

    * ``s < warmup_steps``: ``lr = warmup_start_lr + (base_lr - warmup_start_lr) * s / warmup_steps``;
    * ``warmup_steps <= s <= total_steps``: ``lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * q)) / 2``
      with ``q = (s - warmup_steps) / (total_steps - warmup_steps)``;
    * ``s > total_steps``: ``min_lr``.

    With ``warmup_start_lr = min_lr = 0`` this is Hugging Face's ``get_cosine_schedule_with_warmup``.
    ``optimizer``: if given, :meth:`step` sets its ``lr``; at construction it gets ``get_lr(0)``.
    """

    @checked_options
    def __init__(
        self, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0, warmup_start_lr: float = 0.0, optimizer: Any = None
    ) -> None:
        self.base_lr = non_negative_float(base_lr, "base_lr")
        self.warmup_steps = non_negative_int(warmup_steps, "warmup_steps")
        self.total_steps = positive_int(total_steps, "total_steps")
        if self.warmup_steps > self.total_steps:
            raise ConfigError(f"warmup_steps: expected at most total_steps = {self.total_steps}, got {warmup_steps!r}")
        self.min_lr = non_negative_float(min_lr, "min_lr")
        self.warmup_start_lr = non_negative_float(warmup_start_lr, "warmup_start_lr")
        self.optimizer = optimizer
        self.last_step = 0
        if optimizer is not None:
            if not hasattr(optimizer, "lr"):
                raise ConfigError(f"optimizer: expected an object with an 'lr' attribute, got {type(optimizer).__name__}")
            optimizer.lr = self.get_lr(0)

    def get_lr(self, step: int) -> float:
        """The learning rate at ``step``."""
        s = _step_arg(step)
        if s < self.warmup_steps:
            return self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * s / self.warmup_steps
        if s > self.total_steps:
            return self.min_lr
        span = self.total_steps - self.warmup_steps
        q = (s - self.warmup_steps) / span if span else 1.0
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * q))

    value = get_lr

    @property
    def lr(self) -> float:
        return self.get_lr(self.last_step)

    def step(self) -> float:
        """Advance one step; set and return the new learning rate."""
        self.last_step += 1
        lr = self.get_lr(self.last_step)
        if self.optimizer is not None:
            self.optimizer.lr = lr
        return lr


class TemperatureScheduler:
    """Temperature annealing from ``initial`` to ``final`` over ``total_steps`` (then held at ``final``).

    With ``f = min(step / total_steps, 1)``:

    * ``"linear"``: ``T = T0 + (T1 - T0) f``;
    * ``"exponential"``: ``T = T0 (T1 / T0)^f`` (geometric; both temperatures must be > 0);
    * ``"cosine"``: ``T = T1 + (T0 - T1) (1 + cos(pi f)) / 2``;
    * ``"step"``: the exponential schedule held constant over blocks of ``decay_steps`` steps,
      ``T = T0 (T1 / T0)^(min(floor(step / decay_steps) decay_steps / total_steps, 1))``
      (``decay_steps`` defaults to ``total_steps // 4``, i.e. four drops).

    ``target``: an object whose ``temperature`` attribute :meth:`step` updates (e.g. an
    :class:`~attnkit.training.InfoNCELoss`, or a mechanism with a ``temperature`` option).
    """

    @checked_options
    def __init__(
        self, initial: float, final: float, total_steps: int, schedule: str = "linear", decay_steps: int | None = None, target: Any = None
    ) -> None:
        self.initial = positive_float(initial, "initial")
        self.final = positive_float(final, "final")
        self.total_steps = positive_int(total_steps, "total_steps")
        self.schedule = one_of(schedule, "schedule", ("linear", "exponential", "cosine", "step"))
        self.decay_steps = max(1, self.total_steps // 4) if decay_steps is None else positive_int(decay_steps, "decay_steps")
        self.target = target
        self.last_step = 0
        if target is not None:
            if not hasattr(target, "temperature"):
                raise ConfigError(f"target: expected an object with a 'temperature' attribute, got {type(target).__name__}")
            target.temperature = self.value(0)

    def value(self, step: int) -> float:
        """The temperature at ``step``."""
        s = _step_arg(step)
        t0, t1 = self.initial, self.final
        if self.schedule == "step":
            s = (s // self.decay_steps) * self.decay_steps
        f = min(s / self.total_steps, 1.0)
        if self.schedule == "linear":
            return t0 + (t1 - t0) * f
        if self.schedule == "cosine":
            return t1 + (t0 - t1) * 0.5 * (1.0 + math.cos(math.pi * f))
        return t0 * (t1 / t0) ** f

    @property
    def temperature(self) -> float:
        return self.value(self.last_step)

    def step(self) -> float:
        """Advance one step; set and return the new temperature."""
        self.last_step += 1
        t = self.value(self.last_step)
        if self.target is not None:
            self.target.temperature = t
        return t


class CurriculumScheduler:
    """Competence-based curriculum (Platanios et al. 2019, "Competence-based Curriculum Learning for
    Neural Machine Translation"): at step ``t`` the model may see the easiest ``c(t)`` fraction of the
    data, with ``c0 = initial_competence`` and ``T = total_steps``:

    * ``"linear"``: ``c(t) = min(1, c0 + (1 - c0) t / T)``;
    * ``"sqrt"``: ``c(t) = min(1, sqrt(c0^2 + (1 - c0^2) t / T))`` (the paper's square-root pacing);
    * ``"step"``: ``num_stages`` equal stages, ``c = c0 + (1 - c0) k / (num_stages - 1)`` in stage ``k``.

    :meth:`select` returns the indices of the samples that are allowed (by difficulty rank; ties keep
    their order); :meth:`sample` draws a seeded batch from them; :meth:`stage` is the stage index
    (``floor(c * num_stages)`` clipped), handy to switch, e.g., to harder negative mining.
    """

    @checked_options
    def __init__(self, total_steps: int, initial_competence: float = 0.1, pacing: str = "sqrt", num_stages: int = 4, seed: int | None = None) -> None:
        self.total_steps = positive_int(total_steps, "total_steps")
        c0 = positive_float(initial_competence, "initial_competence")
        if c0 > 1.0:
            raise ConfigError(f"initial_competence: expected a value in (0, 1], got {initial_competence!r}")
        self.initial_competence = c0
        self.pacing = one_of(pacing, "pacing", ("linear", "sqrt", "step"))
        self.num_stages = positive_int(num_stages, "num_stages")
        if self.pacing == "step" and self.num_stages < 2:
            raise ConfigError(f"num_stages: the step pacing needs at least 2 stages, got {num_stages!r}")
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.last_step = 0

    def competence(self, step: int | None = None) -> float:
        """The fraction of the data (easiest first) available at ``step`` (default: the current step)."""
        t = self.last_step if step is None else _step_arg(step)
        c0, total = self.initial_competence, self.total_steps
        if self.pacing == "linear":
            return min(1.0, c0 + (1.0 - c0) * t / total)
        if self.pacing == "sqrt":
            return min(1.0, math.sqrt(c0 * c0 + (1.0 - c0 * c0) * t / total))
        k = min(self.num_stages - 1, t * self.num_stages // total)
        return c0 + (1.0 - c0) * k / (self.num_stages - 1)

    value = competence

    def stage(self, step: int | None = None) -> int:
        """The stage index in ``[0, num_stages)`` at ``step``."""
        c = self.competence(step)
        if self.pacing == "step":
            t = self.last_step if step is None else _step_arg(step)
            return min(self.num_stages - 1, t * self.num_stages // self.total_steps)
        return min(self.num_stages - 1, int(c * self.num_stages))

    def select(self, difficulties: Any, step: int | None = None) -> np.ndarray:
        """Indices of the ``ceil(c * n)`` easiest samples (at least one), sorted by difficulty."""
        d = matrix(difficulties, "difficulties", (1,))
        if d.shape[0] == 0:
            raise ShapeError("difficulties: expected at least one sample, got an empty array")
        n = max(1, math.ceil(self.competence(step) * d.shape[0] - 1e-12))
        return np.argsort(d, kind="stable")[:n]

    def sample(self, difficulties: Any, batch_size: int, step: int | None = None, replace: bool = False) -> np.ndarray:
        """A seeded random batch of indices from :meth:`select`'s pool."""
        pool = self.select(difficulties, step)
        b = positive_int(batch_size, "batch_size")
        if not replace and b > pool.shape[0]:
            raise ConfigError(f"batch_size: only {pool.shape[0]} samples are available at this competence, got {b} (or pass replace=True)")
        return self._rng.choice(pool, size=b, replace=replace)

    def step(self) -> float:
        """Advance one step; return the new competence."""
        self.last_step += 1
        return self.competence()

"""Optimizers for NumPy parameters: SGD (momentum, Nesterov, weight decay), Adam and AdamW.

``opt.step(params, grads)`` updates the parameters **in place** and returns them. ``params`` is a
dict of float NumPy arrays (e.g. a mechanism's ``parameters()`` or ``{"w": w}``), a list/tuple of
arrays, or one array; ``grads`` has the same structure and shapes. Per-parameter state (momentum
buffers, moments) is keyed by the dict key or the list position. The update rules are exactly those
of ``torch.optim`` (same order of operations, same bias correction), and the tests check them against
it on the same numbers. ``lr`` is an attribute a scheduler may change between steps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._array import checked_options, finite_float, int_option, non_negative_float, positive_float, shape_str
from ..errors import ConfigError, DTypeError, NonFiniteError, ShapeError

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


def _items(params: Any, name: str) -> list[tuple[Any, np.ndarray]]:
    if isinstance(params, Mapping):
        return list(params.items())
    if isinstance(params, (list, tuple)):
        return list(enumerate(params))
    if isinstance(params, np.ndarray):
        return [(0, params)]
    raise DTypeError(f"{name}: expected a dict, list or tuple of NumPy arrays, or one array, got {type(params).__name__}")


def _beta(value: Any, name: str) -> float:
    b = finite_float(value, name)
    if not 0.0 <= b < 1.0:
        raise ConfigError(f"{name}: expected a value in [0, 1), got {value!r}")
    return b


class Optimizer:
    """Base class: validation, per-parameter state, ``state_dict``/``load_state_dict``."""

    def __init__(self, lr: float, weight_decay: float = 0.0) -> None:
        self.lr = non_negative_float(lr, "lr")
        self.weight_decay = non_negative_float(weight_decay, "weight_decay")
        self.state: dict[Any, dict[str, Any]] = {}
        self.step_count = 0

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in ("state", "step_count"))
        return f"{type(self).__name__}({opts})"

    def step(self, params: Any, grads: Any) -> Any:
        """Apply one update to ``params`` (in place) from ``grads``; returns ``params``."""
        lr = non_negative_float(self.lr, "lr")
        p_items = _items(params, "params")
        g_map = dict(_items(grads, "grads"))
        if set(g_map) != {k for k, _ in p_items}:
            missing = sorted(map(str, {k for k, _ in p_items} - set(g_map)))
            extra = sorted(map(str, set(g_map) - {k for k, _ in p_items}))
            raise ShapeError(f"grads: expected the same keys as params; missing {missing}, unexpected {extra}")
        checked = []
        for key, p in p_items:
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise DTypeError(f"params[{key!r}]: expected a float NumPy array, got {type(p).__name__} {getattr(p, 'dtype', '')}")
            if not p.flags.writeable:
                raise ConfigError(f"params[{key!r}]: the array is read-only; the update is applied in place")
            g = np.asarray(g_map[key])
            if g.dtype.kind not in "fiu":
                raise DTypeError(f"grads[{key!r}]: expected a float array, got {g.dtype}")
            if g.shape != p.shape:
                raise ShapeError(f"grads[{key!r}]: expected shape {shape_str(p.shape)} (as the parameter), got {shape_str(g.shape)}")
            if not np.isfinite(g).all():
                raise NonFiniteError(f"grads[{key!r}]: expected finite values, found NaN or infinity")
            checked.append((key, p, g.astype(np.float64)))
        # all updates first, applied only if every one fits its parameter's dtype: an update that
        # overflows (e.g. lr = 1e308) is a NonFiniteError and leaves params and state as they were
        saved = {k: dict(v) for k, v in self.state.items()}  # _update rebinds its buffers, never mutates them
        updates = []
        for key, p, g in checked:
            st = self.state.setdefault(key, {})
            with np.errstate(over="ignore", invalid="ignore"):
                new = np.asarray(self._update(p.astype(np.float64), g, st, lr)).astype(p.dtype)
            if not np.isfinite(new).all():
                self.state = saved
                raise NonFiniteError(
                    f"params[{key!r}]: the update with lr = {lr:g} does not fit {p.dtype} (it overflows to infinity or NaN); "
                    "expected a smaller lr or smaller gradients"
                )
            updates.append((p, new))
        self.step_count += 1
        for p, new in updates:
            p[...] = new
        return params

    def _update(self, p: np.ndarray, g: np.ndarray, st: dict[str, Any], lr: float) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every buffer and the step count."""
        self.state = {}
        self.step_count = 0

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the optimizer's state and hyper-parameters (for checkpoints)."""
        return {"state": copy.deepcopy(self.state), "step_count": self.step_count, "lr": self.lr}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Adopt a :meth:`state_dict`: a mapping with ``state`` (a mapping), ``step_count`` (an int >= 0) and
        optionally ``lr``; anything else is a ``ConfigError`` naming the entry, and nothing is changed."""
        if not isinstance(state, Mapping):
            raise ConfigError(f"state: expected a mapping from state_dict(), got {type(state).__name__}")
        for key in ("state", "step_count"):
            if key not in state:
                raise ConfigError(f"state[{key!r}]: missing; expected a mapping from state_dict() with 'state' and 'step_count'")
        if not isinstance(state["state"], Mapping):
            raise ConfigError(f"state['state']: expected a mapping of per-parameter buffers, got {type(state['state']).__name__}")
        step_count = int_option(state["step_count"], "state['step_count']", minimum=0)
        lr = non_negative_float(state.get("lr", self.lr), "lr")
        self.state = copy.deepcopy(dict(state["state"]))
        self.step_count = step_count
        self.lr = lr


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD``:

    ``g <- g + wd p``; with momentum ``mu``: ``b <- g`` on the first step, then ``b <- mu b + (1 - dampening) g``;
    ``g <- g + mu b`` (Nesterov, Sutskever et al. 2013) or ``g <- b``; ``p <- p - lr g``.
    """

    @checked_options
    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0, dampening: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        self.momentum = non_negative_float(momentum, "momentum")
        self.nesterov = bool(nesterov)
        self.dampening = non_negative_float(dampening, "dampening")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ConfigError(f"nesterov: needs momentum > 0 and dampening = 0, got momentum={momentum!r}, dampening={dampening!r}")

    def _update(self, p: np.ndarray, g: np.ndarray, st: dict[str, Any], lr: float) -> np.ndarray:
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = st.get("momentum_buffer")
            buf = g.copy() if buf is None else self.momentum * buf + (1.0 - self.dampening) * g
            st["momentum_buffer"] = buf
            g = g + self.momentum * buf if self.nesterov else buf
        return p - lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam``; ``weight_decay`` is L2 added to the gradient:

    ``m <- b1 m + (1-b1) g``, ``v <- b2 v + (1-b2) g^2``,
    ``p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`` (``amsgrad``: ``v`` replaced by its running max).
    """

    decoupled = False

    @checked_options
    def __init__(
        self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False
    ) -> None:
        super().__init__(lr, weight_decay)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ConfigError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas = (_beta(betas[0], "betas[0]"), _beta(betas[1], "betas[1]"))
        self.eps = positive_float(eps, "eps")
        self.amsgrad = bool(amsgrad)

    def _update(self, p: np.ndarray, g: np.ndarray, st: dict[str, Any], lr: float) -> np.ndarray:
        b1, b2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                p = p * (1.0 - lr * self.weight_decay)
            else:
                g = g + self.weight_decay * p
        t = st.get("step", 0) + 1
        st["step"] = t
        m = st.get("exp_avg", np.zeros_like(p))
        v = st.get("exp_avg_sq", np.zeros_like(p))
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * g * g
        st["exp_avg"], st["exp_avg_sq"] = m, v
        if self.amsgrad:
            v = np.maximum(st.get("max_exp_avg_sq", np.zeros_like(p)), v)
            st["max_exp_avg_sq"] = v
        bc1 = 1.0 - b1**t
        bc2 = 1.0 - b2**t
        denom = np.sqrt(v) / math.sqrt(bc2) + self.eps
        return p - (lr / bc1) * m / denom


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019) as ``torch.optim.AdamW``: decoupled weight decay
    ``p <- p (1 - lr wd)`` before the Adam step (``weight_decay`` defaults to 0.01)."""

    decoupled = True

    @checked_options
    def __init__(
        self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01, amsgrad: bool = False
    ) -> None:
        super().__init__(lr, betas, eps, weight_decay, amsgrad)

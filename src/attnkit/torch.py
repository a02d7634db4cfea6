"""PyTorch front end: an attnkit mechanism as a ``torch.nn.Module`` whose parameters torch trains.

``AttentionModule(mechanism)`` registers every entry of ``mechanism.parameters()`` as an
``nn.Parameter`` under the same dotted name (``q_proj.weight`` lives in a child module ``q_proj``
as ``weight``), so ``state_dict()`` keys equal the mechanism's parameter names and
``torch.optim.Adam(module.parameters())`` trains them. ``forward`` calls
:func:`attnkit.functional_call` with those parameters, so the mechanism's own math runs on torch
tensors and autograd reaches every parameter (the convention of ``torch.func.functional_call``).
``module.mechanism`` hands the mechanism back carrying the current (trained) values.

Importing ``attnkit`` never imports torch; ``import attnkit.torch`` (or the attribute
``attnkit.torch`` after ``import attnkit``) does, and needs PyTorch installed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .mechanisms.base import Mechanism
from .mechanisms.functional import functional_call

__all__ = ["AttentionModule"]


class AttentionModule(torch.nn.Module):
    """A mechanism's parameters as ``nn.Parameter`` s, and its forward as the module's forward.

    ``mechanism``: any attnkit mechanism (parameter-free ones give a module with no parameters).
    The parameters start as copies of ``mechanism.parameters()`` (same dtype: float32 or float64);
    ``.to(device, dtype)`` moves and casts them like any module's. ``module.train()`` /
    ``module.eval()`` switch the mechanism's dropout too (a new module is in training mode, like
    every torch module, and so is its mechanism from then on).

    ``forward(query, key=None, value=None, mask=None, **extras)`` is
    ``attnkit.functional_call(mechanism, dict(parameters), query, key, value, mask=mask, **extras)``:
    the same inputs and output shapes as ``mechanism.forward`` (see its class for the layout).
    Inputs in another dtype than the parameters get the parameters cast to the inputs' dtype (the cast
    stays in the autograd graph).
    """

    def __init__(self, mechanism: Mechanism) -> None:
        if not isinstance(mechanism, Mechanism):
            raise ConfigError(f"mechanism: expected an attnkit mechanism, got {type(mechanism).__name__}")
        super().__init__()
        params = mechanism.parameters()  # checks liveness
        self._mechanism = mechanism
        self._names: tuple[str, ...] = tuple(params)
        for name, arr in params.items():
            self._register(name, torch.from_numpy(np.array(arr, copy=True)))
        self.train(self.training)

    def _register(self, name: str, value: torch.Tensor) -> None:
        """Register ``value`` under the dotted ``name``, creating the child modules on its path."""
        *path, leaf = name.split(".")
        owner: torch.nn.Module = self
        for i, part in enumerate(path):
            child = owner._modules.get(part)
            if child is None:
                if hasattr(owner, part) or part in owner._parameters:
                    raise ConfigError(f"mechanism: parameter name {name!r} clashes with {'.'.join(path[: i + 1])!r}")
                child = torch.nn.Module()
                owner.add_module(part, child)
            owner = child
        if leaf in owner._modules or leaf in owner._parameters or hasattr(owner, leaf):
            raise ConfigError(f"mechanism: parameter name {name!r} clashes with an existing attribute or module")
        owner.register_parameter(leaf, torch.nn.Parameter(value))

    def param_dict(self) -> dict[str, torch.nn.Parameter]:
        """The parameters by the mechanism's names (the keys of ``state_dict()``)."""
        return {name: self.get_parameter(name) for name in self._names}

    def forward(self, query: Any, key: Any = None, value: Any = None, mask: Any = None, **extras: Any) -> torch.Tensor:
        """The mechanism's output for these inputs, computed with this module's parameters.

        ``mask`` may also come fourth by position (as ``nn.MultiheadAttention``'s masks can): torch.onnx's
        TorchScript exporter (``dynamo=False``) calls ``forward`` with every defaulted parameter by position."""
        return functional_call(self._mechanism, self.param_dict(), query, key, value, mask=mask, **extras)

    def train(self, mode: bool = True) -> AttentionModule:
        super().train(mode)
        self._mechanism.train(mode)
        return self

    @property
    def mechanism(self) -> Mechanism:
        """The mechanism, after loading this module's current parameter values into it (NumPy copies).

        float64 parameters stay float64; any other float dtype (float16, bfloat16) comes back as float32.
        """
        if self._names:
            self._mechanism.load_parameters(_host_copies(self.param_dict()))
        return self._mechanism

    def extra_repr(self) -> str:
        return repr(self._mechanism)

    def __getstate__(self) -> dict[str, Any]:
        """For ``copy.deepcopy`` and pickling: the mechanism without autograd graphs.

        A forward leaves tensors of the graph in the mechanism (cached attention weights, MoE's auxiliary
        loss), and torch refuses to deep-copy non-leaf tensors; the copy holds them detached.
        """
        state = super().__getstate__()
        state["_mechanism"] = _without_graph(self._mechanism)
        return state


def _without_graph(x: Any) -> Any:
    """``x`` with every torch tensor that has a ``grad_fn`` detached (mechanisms and containers shallow-copied)."""
    if isinstance(x, torch.Tensor):
        return x.detach() if x.grad_fn is not None else x
    if isinstance(x, Mechanism):
        twin = copy.copy(x)
        twin.__dict__.update({k: _without_graph(v) for k, v in x.__dict__.items()})
        return twin
    if isinstance(x, dict):
        return {k: _without_graph(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_without_graph(v) for v in x) if type(x) in (list, tuple) else x
    return x


def _host_copies(params: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, p in params.items():
        t = p.detach().to("cpu", torch.float64 if p.dtype == torch.float64 else torch.float32)
        out[name] = t.numpy().copy()
    return out

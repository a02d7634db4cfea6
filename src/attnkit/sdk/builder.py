"""``AttentionBuilder``: fluent construction of any registered mechanism, and the spec's free functions.

Every setting reaches the built object. Each named setting (``dim``, ``heads``, ``dropout``,
``causal``, ``block_size``, ``curvature``, ``feature_map``) and each ``.option(name, value)`` goes to
the constructor option of the chosen mechanism that the registry's one alias table
(:data:`attnkit.mechanisms.registry.OPTION_ALIASES`) gives it: ``dim`` is ``model_dim`` on
multi_head and self (the model width), ``query_dim`` on cross, and ``dim`` on the others (flash,
linear, local_global: the width of one head; hyperbolic, scaled_dot_product: the embedding width);
``heads`` is ``heads``; ``curvature`` is ``curvature``; and any alias (``num_heads``, ``embed_dim``,
``c``, ``kernel``, ...) works through ``.option``. One option given under two names raises
:class:`~attnkit.errors.ConfigError` naming both.

A setting the chosen mechanism does not take raises :class:`~attnkit.errors.ConfigError` naming the
setting, with two exceptions that change nothing: ``causal(False)`` and ``dropout(0.0)`` on a mechanism
that has no such option (it is already non-causal and dropout-free). With ``AttentionType.AUTO`` the
settings that only the candidate not chosen takes (``feature_map`` when flash is chosen,
``block_size`` when linear is) are left out instead, and :meth:`AttentionBuilder.explain` lists them.
The resolution itself is :meth:`AttentionConfig.plan <attnkit.sdk.AttentionConfig.plan>`; the builder
only collects settings.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ..errors import ConfigError
from ..mechanisms import registry
from .config import AttentionConfig
from .selection import Selection
from .types import AttentionType

__all__ = ["AttentionBuilder", "multi_head", "flash", "linear", "hyperbolic"]


class AttentionBuilder:
    """Fluent construction of a mechanism: ``AttentionBuilder().type("flash").heads(4).dim(32).build()``.

    Each method validates its value at once (:class:`~attnkit.errors.ConfigError` naming the setting)
    and returns the builder. ``AttentionBuilder(**fields)`` starts from ``AttentionConfig(**fields)``.
    The type defaults to ``AUTO``: the length-and-memory rule of
    :func:`~attnkit.sdk.select_sequence_mechanism` picks flash or linear at :meth:`build` time.
    """

    def __init__(self, **fields: Any) -> None:
        self._config = AttentionConfig(**fields)
        self._reason: str | None = None

    # ---------------------------------------------------------------- state
    @classmethod
    def from_config(cls, config: AttentionConfig) -> AttentionBuilder:
        if not isinstance(config, AttentionConfig):
            raise ConfigError(f"config: expected an AttentionConfig, got {type(config).__name__}")
        b = cls()
        b._config = dataclasses.replace(config, options=dict(config.options))
        return b

    @property
    def config(self) -> AttentionConfig:
        """A copy of the settings so far."""
        return dataclasses.replace(self._config, options=dict(self._config.options))

    def copy(self) -> AttentionBuilder:
        return copy.deepcopy(self)

    def _set(self, **changes: Any) -> AttentionBuilder:
        self._config = dataclasses.replace(self._config, **changes)
        return self

    def __repr__(self) -> str:
        return f"AttentionBuilder({', '.join(f'{k}={v!r}' for k, v in self._config.to_dict().items())})"

    # ---------------------------------------------------------------- fluent settings
    def type(self, attention_type: AttentionType | str, **settings: Any) -> AttentionBuilder:
        """Choose the mechanism (an :class:`AttentionType` or registry name); ``settings`` as by :meth:`option`."""
        self._set(type=attention_type)
        self._reason = None
        for name, value in settings.items():
            self.option(name, value)
        return self

    attention_type = type

    def dim(self, dim: int) -> AttentionBuilder:
        """The width: ``model_dim`` of multi_head/cross/self, the head width of flash/linear, else ``dim``."""
        return self._set(dim=dim)

    hidden_dim = dim  # the spec's name

    def heads(self, heads: int) -> AttentionBuilder:
        return self._set(heads=heads)

    def dropout(self, p: float) -> AttentionBuilder:
        """Dropout on the attention probabilities while training, in [0, 1)."""
        return self._set(dropout=p)

    def causal(self, causal: bool = True) -> AttentionBuilder:
        """Mask future keys (bottom-right aligned when ``Lq != Lk``); the built object's ``.causal`` says so."""
        return self._set(causal=causal)

    def block_size(self, block_size: int) -> AttentionBuilder:
        return self._set(block_size=block_size)

    def curvature(self, c: float) -> AttentionBuilder:
        return self._set(curvature=c)

    def feature_map(self, name: str) -> AttentionBuilder:
        return self._set(feature_map=name)

    def option(self, name: str, value: Any) -> AttentionBuilder:
        """Any constructor option by name (a named setting such as ``"heads"`` goes to that setting)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"option: expected an option name, got {name!r}")
        field_names = {f.name for f in dataclasses.fields(AttentionConfig)} - {"options", "type"}
        if name in field_names:
            return self._set(**{name: value})
        if name == "type":
            return self.type(value)
        return self._set(options={**self._config.options, name: value})

    def options(self, **options: Any) -> AttentionBuilder:
        for name, value in options.items():
            self.option(name, value)
        return self

    def seed(self, seed: int) -> AttentionBuilder:
        """Seed the mechanism's random generator (dropout, random features): ``option("seed", seed)``."""
        return self.option("seed", seed)

    # automatic selection
    def max_len(self, n: int) -> AttentionBuilder:
        """The longest sequence the mechanism will see (drives ``AUTO``)."""
        return self._set(max_len=n)

    def memory_budget(self, budget: int | str) -> AttentionBuilder:
        """Bytes the attention may use, e.g. ``"512MiB"`` (drives ``AUTO``)."""
        return self._set(memory_budget=budget)

    def batch(self, n: int) -> AttentionBuilder:
        return self._set(batch=n)

    def exact_max_len(self, n: int) -> AttentionBuilder:
        return self._set(exact_max_len=n)

    def need_scores(self, flag: bool = True) -> AttentionBuilder:
        """The caller will read the dense ``attention_scores`` (an ``L x L`` matrix per head)."""
        return self._set(need_scores=flag)

    # ---------------------------------------------------------------- resolution
    def selection(self) -> Selection | None:
        """The automatic-selection outcome for ``AUTO`` (``None`` for an explicit type)."""
        return self._config.selection()

    def resolved_type(self) -> AttentionType | str:
        """The mechanism :meth:`build` will construct (``AUTO`` resolved)."""
        name = self._config.plan(self._reason).name
        try:
            return AttentionType(name)
        except ValueError:  # pragma: no cover - a mechanism newer than the enum
            return name

    def explain(self) -> str:
        """What :meth:`build` will construct and why, with each setting and where it goes."""
        plan = self._config.plan(self._reason)
        lines = [f"chosen: {plan.name}", f"why: {plan.reason}"]
        if plan.mapping:
            lines.append("settings: " + ", ".join(f"{s}={v!r}" + (f" -> {t}" if t != s else "") for s, v, t in plan.mapping))
        if plan.ignored:
            lines.append(
                "left out (the chosen mechanism does not take them and they change nothing for it): "
                + ", ".join(f"{s}={v!r}" for s, v in plan.ignored)
            )
        return "\n".join(lines)

    def build(self) -> Any:
        """Construct the mechanism; every setting given reaches it as the option of the table above."""
        plan = self._config.plan(self._reason)
        return registry.create(plan.name, **plan.kwargs)


# ---------------------------------------------------------------- the spec's free functions
def multi_head(dim: int, heads: int = 8) -> AttentionBuilder:
    """A builder for ``MultiHeadAttention(model_dim=dim, heads=heads)``."""
    return AttentionBuilder().type(AttentionType.MULTI_HEAD).dim(dim).heads(heads)


def flash(dim: int, block: int = 256) -> AttentionBuilder:
    """A builder for ``FlashAttention(dim=dim, block_size=block)`` (``dim`` is the width of one head)."""
    return AttentionBuilder().type(AttentionType.FLASH).dim(dim).block_size(block)


def linear(dim: int, feature_map: str | None = None, heads: int | None = None, **options: Any) -> AttentionBuilder:
    """A builder for ``LinearAttention(dim=dim, ...)``; ``options`` are further constructor options."""
    b = AttentionBuilder().type(AttentionType.LINEAR).dim(dim)
    if feature_map is not None:
        b.feature_map(feature_map)
    if heads is not None:
        b.heads(heads)
    return b.options(**options)


def hyperbolic(dim: int, c: float = 1.0) -> AttentionBuilder:
    """A builder for ``HyperbolicAttention(dim=dim, curvature=c)`` on the Poincaré ball of curvature ``-|c|``."""
    return AttentionBuilder().type(AttentionType.HYPERBOLIC).dim(dim).curvature(c)

"""The SDK's vocabulary: :class:`AttentionType` and the uniform :class:`Attention` protocol."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..mechanisms.base import BenchmarkResult, MemoryInfo

__all__ = ["AttentionType", "Attention", "normalize_name"]

#: spellings accepted besides the canonical names (the spec writes "multi-head", "scaled-dot-product")
_ALIASES = {
    "multihead": "multi_head",
    "mha": "multi_head",
    "scaled_dot": "scaled_dot_product",
    "dot_product": "scaled_dot_product",
    "neighbour": "scaled_dot_product",
    "neighbor": "scaled_dot_product",
    "self_attention": "self",
    "cross_attention": "cross",
    "localglobal": "local_global",
    "mixture_of_experts": "moe",
}


def normalize_name(name: object) -> str:
    """``"Multi-Head"`` -> ``"multi_head"``: lower case, ``-`` and spaces as ``_``, aliases resolved."""
    if isinstance(name, enum.Enum):
        name = name.value
    if not isinstance(name, str):
        raise ConfigError(f"type: expected a mechanism name (str or AttentionType), got {name!r}")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return _ALIASES.get(key, key)


class AttentionType(str, enum.Enum):
    """The kinds of attention the SDK builds; members are upper case, values the registry names.

    ``AttentionType.FLASH == "flash"``. ``AUTO`` is not a mechanism: the builder resolves it with
    the length-and-memory rule of :func:`attnkit.sdk.select_sequence_mechanism`. Lookup by value
    accepts the spec's spellings: ``AttentionType("multi-head") is AttentionType.MULTI_HEAD``.
    """

    SCALED_DOT_PRODUCT = "scaled_dot_product"
    MULTI_HEAD = "multi_head"
    FLASH = "flash"
    LINEAR = "linear"
    HYPERBOLIC = "hyperbolic"
    CROSS = "cross"
    SELF = "self"
    LOCAL_GLOBAL = "local_global"
    MOE = "moe"
    EDGE_FEATURED = "edge_featured"
    GRAPH_ROPE = "graph_rope"
    MIXED_CURVATURE = "mixed_curvature"
    DUAL_SPACE = "dual_space"
    AUTO = "auto"

    @classmethod
    def _missing_(cls, value: object) -> AttentionType | None:
        if isinstance(value, str):
            key = normalize_name(value)
            for member in cls:
                if member.value == key:
                    return member
        return None

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: object) -> AttentionType:
        """``value`` as a member, or :class:`~attnkit.errors.ConfigError` naming ``type``."""
        if isinstance(value, cls):
            return value
        try:
            return cls(normalize_name(value))
        except ValueError:
            raise ConfigError(f"type: expected one of {', '.join(m.value for m in cls)}, got {value!r}") from None

    @property
    def is_registered(self) -> bool:
        """Whether a mechanism class is registered under this name (``AUTO`` never is)."""
        from ..mechanisms import registry

        return self.value in registry.names()


@runtime_checkable
class Attention(Protocol):
    """What every attnkit mechanism offers, so front ends drive any of them through one code path.

    ``forward(query, key=None, value=None, *, mask=None)`` (the contract of :class:`attnkit.Mechanism`); ``forward_batch``,
    ``forward_async`` and ``forward_stream`` return exactly what ``forward`` returns for the same
    inputs. :class:`attnkit.Mechanism` implements it; ``isinstance(obj, Attention)`` checks the methods.
    """

    def forward(self, query: Any, key: Any = None, value: Any = None, *, mask: Any = None) -> Any: ...

    def forward_batch(self, queries: Sequence[Any], keys: Any = None, values: Any = None, mask: Any = None) -> list[Any]: ...

    async def forward_async(self, query: Any, key: Any = None, value: Any = None, *, mask: Any = None) -> Any: ...

    def forward_stream(self, inputs: AsyncIterable[tuple[Any, ...]], max_pending: int = 2) -> AsyncIterator[Any]: ...

    def memory_usage(self) -> MemoryInfo: ...

    def benchmark(self, seq_len: int = 128, repeats: int = 10, warmup: int = 2) -> BenchmarkResult: ...

    def dispose(self) -> None: ...

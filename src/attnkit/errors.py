"""The attnkit exception family.

Every error that attnkit raises on purpose derives from :class:`AttentionError`, itself a
``ValueError``, so ``except ValueError`` keeps working for callers that do not know attnkit.
Messages name the argument, what was expected and what was given.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "AttentionError",
    "ShapeError",
    "ConfigError",
    "DTypeError",
    "NonFiniteError",
    "DisposedError",
]


class AttentionError(ValueError):
    """Base class of every error attnkit raises on purpose."""


class ShapeError(AttentionError):
    """An array has the wrong number of dimensions or a size that does not match."""


class ConfigError(AttentionError):
    """An option given to a mechanism, builder or config file is out of range or unknown."""


class ArgumentError(ConfigError, TypeError):
    """A call with a missing or unknown argument: a :class:`ConfigError` naming it, and the ``TypeError``
    Python raises for such a call."""


class DTypeError(AttentionError, TypeError):
    """An array has a dtype attnkit cannot compute in (integer, bool, object, complex).

    It is also a ``TypeError``, as DESIGN.md asks for integer input.
    """


class NonFiniteError(AttentionError):
    """An input holds NaN or infinity while ``check_finite=True``."""


class DisposedError(AttentionError):
    """A mechanism was used after :meth:`dispose`."""

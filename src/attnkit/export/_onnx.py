"""ONNX export of any attnkit mechanism through ``ndonnx`` (an array-API library that builds ONNX graphs).

:func:`export_onnx` runs the mechanism's own ``_forward(params, query, key, value, *, mask)`` — the
array-API code NumPy, torch and JAX run — on ``ndonnx`` arrays, so the ONNX graph is that one formula
traced, not a second implementation. What changes under the exporter's namespace (see
:func:`attnkit._array.is_graph`):

* kernels take their whole-sequence (non-tiled) form, e.g. exact attention is
  ``attention_weights(q, k) @ v`` instead of the online-softmax loop over key tiles: a Python loop
  over tiles would be unrolled for the example's length, and the graph must take any length;
* checks that read values (finiteness) are skipped: a graph has no values;
* causal masks count their indices from the score matrix, since the lengths are symbolic.

The graph's inputs are the example inputs in order (``query``, ``key``, ``value``, then ``mask``
where one is given); batch and sequence axes are dynamic, and both length axes of a mask. Learned
parameters are stored unchanged (float32) as initializers under their :meth:`param_shapes` names, so
a tool can find and replace them. ``ndonnx``, ``onnx`` and ``onnxruntime`` come with the ``onnx``
extra (``pip install attnkit[onnx]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .._array import as_float_array
from ..errors import AttentionError, ConfigError, ShapeError
from ..mechanisms.base import Mechanism

__all__ = ["export_onnx", "export_status", "ExportInfo", "INPUT_NAMES"]

#: graph input names, in order
INPUT_NAMES = ("query", "key", "value")

#: the axis holding the sequence length, per input layout
_SEQ_AXIS = {"sequence": -3, "model": -2, "headless": -2, "graph": -2}
#: how many trailing axes are fixed features (heads, widths), per input layout
_FEATURE_AXES = {"sequence": 2, "model": 1, "headless": 1, "graph": 1}


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """What :func:`export_onnx` wrote: the file, its graph's input/output names, its initializers, size."""

    path: str
    inputs: tuple[str, ...]
    output: str
    initializers: tuple[str, ...]
    opset: int
    size_bytes: int


def export_status(mechanism: Mechanism) -> str | None:
    """``None`` when ``mechanism`` (as configured) exports to ONNX, else the reason it does not.

    A mechanism states its own reason through ``_export_blocker()`` (for example an iteration count that
    depends on the data); dropout while training is refused here for every mechanism.
    """
    if getattr(mechanism, "training", False) and float(getattr(mechanism, "dropout", 0.0) or 0.0) > 0.0:
        return "dropout is random while training; call .eval() before exporting"
    blocker = getattr(mechanism, "_export_blocker", None)
    return blocker() if callable(blocker) else None


def _require() -> Any:
    try:
        import ndonnx
        import onnx  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(f"export_onnx: needs the onnx extra (pip install 'attnkit[onnx]'): {exc}") from None
    return ndonnx


def _dynamic_shape(x: np.ndarray, name: str, layout: str, seq_name: str, batch_names: Sequence[str]) -> tuple[int | str, ...]:
    """``x.shape`` with the batch axes and the sequence axis symbolic (feature axes stay fixed)."""
    shape: list[int | str] = [int(d) for d in x.shape]
    nd = len(shape)
    feat = _FEATURE_AXES[layout]
    seq = nd + _SEQ_AXIS[layout]
    if layout == "graph" and name == "query" and nd < 2:
        return tuple(shape)
    for ax in range(max(nd - feat, 0)):
        if ax == seq:
            shape[ax] = seq_name
        else:
            shape[ax] = batch_names[len(batch_names) - (seq - ax)] if seq - ax <= len(batch_names) else f"batch{ax}"
    return tuple(shape)


def export_onnx(
    mechanism: Mechanism,
    path: str | os.PathLike[str],
    *example_inputs: Any,
    mask: Any = None,
    dynamic: bool = True,
    opset: int | None = None,
    output: str = "forward",
    **extras: Any,
) -> ExportInfo:
    """Write ``mechanism``'s forward as an ONNX model to ``path``.

    ``example_inputs``: ``query[, key[, value]]`` as ``forward`` takes them (default:
    ``mechanism.example_inputs()``); they fix the ranks and feature widths, and are run through the
    NumPy forward first, so inputs that ``forward`` refuses raise the same attnkit error here.
    ``mask``: an example mask; when given, the graph has a ``mask`` input of that dtype (bool: True =
    attend; float: added to the scores). ``dynamic``: batch and sequence axes (and both length axes of
    the mask) symbolic; ``False`` fixes every axis to the example's. ``opset``: the ONNX opset of the
    file (default: the exporter's). ``output``: ``"forward"`` (the attention output) or ``"weights"``
    (the attention weights ``softmax(scores + mask)`` of :meth:`attention_weights`, shape
    ``(..., heads, Lq, Lk)``; the graph's inputs are then ``query``, ``key`` and the mask).
    ``extras``: the mechanism's own keyword-only inputs, baked into the graph as constants. The file's
    ``metadata_props`` record ``attnkit.mechanism``, ``attnkit.options`` (JSON), ``attnkit.output``,
    ``attnkit.inputs`` and ``attnkit.version``.

    Raises :class:`~attnkit.errors.ConfigError` for a non-mechanism, a disposed one, or one whose
    configuration cannot be exported (with the reason and the form that does export), and
    :class:`~attnkit.errors.ShapeError` / :class:`~attnkit.errors.DTypeError` for bad inputs.
    """
    if not isinstance(mechanism, Mechanism):
        raise ConfigError(f"mechanism: expected an attnkit mechanism (e.g. attnkit.FlashAttention()), got {type(mechanism).__name__}")
    mechanism._check_alive()
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"path: expected a file path, got {type(path).__name__}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 23):
        raise ConfigError(f"opset: expected an ONNX opset between 13 and 23, got {opset!r}")
    if output not in ("forward", "weights"):
        raise ConfigError(f"output: expected 'forward' or 'weights', got {output!r}")
    if output == "weights" and not mechanism.has_attention_weights:
        raise ConfigError(f"output: {mechanism.name!r} has no attention weights to export; use output='forward'")
    reason = export_status(mechanism)
    if reason is not None:
        raise ConfigError(f"mechanism: {mechanism.name!r} cannot be exported to ONNX as configured: {reason}")
    if len(example_inputs) > 3:
        raise ShapeError(f"example_inputs: expected query[, key[, value]], got {len(example_inputs)} arrays")
    if not example_inputs:
        example_inputs = mechanism.example_inputs(8, np.random.default_rng(0))
        extras = extras or mechanism.example_extras(8, np.random.default_rng(1))
    arrays = [np.asarray(as_float_array(x, n), dtype=np.float32) for x, n in zip(example_inputs, INPUT_NAMES, strict=False)]
    np_mask = None if mask is None else np.asarray(mask)
    if np_mask is not None and np_mask.dtype.kind not in "bf":
        raise ShapeError(f"mask: expected a bool mask (True = attend) or a float mask, got dtype {np_mask.dtype}")
    if np_mask is not None and np_mask.dtype.kind == "f":
        np_mask = np_mask.astype(np.float32)
    if extras.get("cache") is not None:
        raise ConfigError("cache: a KVCache is Python state filled step by step and cannot be exported to ONNX; export the forward without cache=")
    # the NumPy forward validates the inputs (its errors name the argument) and checks the mechanism runs
    if output == "weights":
        arrays = arrays[:2]
        mechanism._run_weights(arrays[0], arrays[1] if len(arrays) > 1 else None, mask=np_mask, **extras)
    else:
        mechanism.forward(*arrays, mask=np_mask, **extras)

    ndx = _require()
    layout = mechanism.input_layout
    same = bool(getattr(mechanism, "same_length", False)) or len(arrays) == 1
    nbatch = max(len(a.shape) - _FEATURE_AXES[layout] - 1 for a in arrays)
    batch_names = [f"batch{i}" for i in range(max(nbatch, 0))]
    graph_inputs: dict[str, Any] = {}
    for i, (a, n) in enumerate(zip(arrays, INPUT_NAMES, strict=False)):
        seq_name = "Lq" if i == 0 or same else "Lk"
        shape = _dynamic_shape(a, n, layout, seq_name, batch_names) if dynamic else tuple(int(d) for d in a.shape)
        graph_inputs[n] = ndx.argument(shape=shape, dtype=ndx.float32)
    if np_mask is not None:
        mshape: list[int | str] = [int(d) for d in np_mask.shape]
        if dynamic and len(mshape) >= 2:
            for ax, sym in ((-2, "Lq"), (-1, "Lq" if same else "Lk")):
                if mshape[ax] != 1:
                    mshape[ax] = sym
        elif dynamic and len(mshape) == 1 and mshape[0] != 1:
            mshape[0] = "Lq" if same else "Lk"
        graph_inputs["mask"] = ndx.argument(shape=tuple(mshape), dtype=ndx.bool if np_mask.dtype == bool else ndx.float32)

    for n, x in extras.items():  # the mechanism's own keyword-only array inputs (e.g. edge features), after the mask
        if x is None or isinstance(x, (bool, int, float, str)):
            continue
        arr = np.asarray(x)
        xshape: list[int | str] = [int(d) for d in arr.shape]
        if dynamic and len(xshape) >= 2:
            xshape[-2] = "Lq" if same else "Lk"
            for ax in range(len(xshape) - 2):
                xshape[ax] = f"{n}_batch{ax}"
        dt = ndx.bool if arr.dtype == bool else (ndx.int64 if arr.dtype.kind in "iu" else ndx.float32)
        graph_inputs[n] = ndx.argument(shape=tuple(xshape), dtype=dt)
        extras = {**extras, n: graph_inputs[n]}
    own = {k: np.asarray(v, dtype=np.float32) for k, v in mechanism._own_params().items()}
    params = {k: ndx.argument(shape=v.shape, dtype=ndx.float32) for k, v in own.items()}
    args = [graph_inputs.get(n) for n in INPUT_NAMES]
    try:
        with _plain_matmul():
            if output == "weights":
                out = mechanism._attention_weights(params, args[0], args[1], mask=graph_inputs.get("mask"), **extras)
            else:
                out = mechanism._forward(params, *args, mask=graph_inputs.get("mask"), **extras)
    except AttentionError:
        raise
    except Exception as exc:  # an operation the mechanism's code uses that does not trace into a graph
        raise ConfigError(f"mechanism: {mechanism.name!r} could not be traced into an ONNX graph ({type(exc).__name__}: {exc})") from exc
    model = ndx.build({**graph_inputs, **params}, {"output": out})
    model = _params_to_initializers(model, own, prune=output == "weights")
    if opset is not None:
        model = _convert_opset(model, opset)
    import onnx

    model.producer_name = "attnkit"
    model.doc_string = f"attnkit {mechanism!r}"
    _set_metadata(model, mechanism, output, tuple(graph_inputs))
    onnx.save(model, os.fspath(path))
    return ExportInfo(
        path=os.fspath(path),
        inputs=tuple(graph_inputs),
        output="output",
        initializers=tuple(t.name for t in model.graph.initializer if t.name in own),
        opset=_opset_of(model),
        size_bytes=os.path.getsize(path),
    )


@contextlib.contextmanager
def _plain_matmul() -> Iterator[None]:
    """Build ``a @ b`` as one ONNX ``MatMul`` while tracing.

    ndonnx wraps every matmul in an ``If`` over "is either input empty" with a zeros branch (a workaround
    for an ONNX Runtime bug with 0-length inputs), inlined from a sub-model whose constants spox evaluates
    one by one: ~3 s of build time per matmul and a branch in the hot path at run time. attnkit's
    mechanisms refuse empty key sets (and an empty query gives an empty output either way), so the plain
    ``MatMul`` is used here; ndonnx's function is restored afterwards.
    """
    try:
        from ndonnx._typed_array import onnx as typed
        from spox import Var  # noqa: F401
    except ImportError:  # pragma: no cover - another ndonnx layout: keep its matmul
        yield
        return
    original = getattr(typed, "_matmul_mitigate_zero_sized", None)
    if original is None:  # pragma: no cover
        yield
        return

    def matmul(a: Any, b: Any) -> Any:
        return type(a)(typed.op.matmul(a._var, b._var))

    typed._matmul_mitigate_zero_sized = matmul
    try:
        yield
    finally:
        typed._matmul_mitigate_zero_sized = original


def _params_to_initializers(model: Any, params: dict[str, np.ndarray], *, prune: bool = False) -> Any:
    """Turn the parameter graph inputs into initializers holding ``params`` unchanged.

    ``prune``: drop the parameters no node reads (the weights graph of multi-head attention never
    reads the value and output projections)."""
    from onnx import numpy_helper

    g = model.graph
    if prune:
        used = {name for node in g.node for name in node.input}
        unused = {k for k in params if k not in used}
        params = {k: v for k, v in params.items() if k not in unused}
        kept = [i for i in g.input if i.name not in unused]
        del g.input[:]
        g.input.extend(kept)
    keep = [i for i in g.input if i.name not in params]
    for name in [i.name for i in g.input if i.name in params]:
        g.initializer.append(numpy_helper.from_array(params[name], name))
    del g.input[:]
    g.input.extend(keep)
    missing = sorted(set(params) - {t.name for t in g.initializer})
    if missing:  # pragma: no cover - a parameter the forward never read
        raise ConfigError(f"mechanism: parameter {missing[0]!r} is not used by the exported graph")
    return model


def _set_metadata(model: Any, mechanism: Mechanism, output: str, inputs: tuple[str, ...]) -> None:
    """Record what the file computes in the model's ``metadata_props`` (read by the JS ``LocalEngine``):
    ``attnkit.mechanism`` (registry name), ``attnkit.options`` (the constructor options, JSON),
    ``attnkit.output`` (``forward`` or ``weights``), ``attnkit.inputs`` (graph inputs, comma-separated)
    and ``attnkit.version``."""
    import json

    from .. import __version__

    def plain(v: Any) -> Any:
        if isinstance(v, (bool, int, float, str)) or v is None:
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return repr(v)

    options = {k: plain(v) for k, v in mechanism.options().items()}
    entries = {
        "attnkit.mechanism": str(mechanism.name),
        "attnkit.options": json.dumps(options, sort_keys=True),
        "attnkit.output": output,
        "attnkit.inputs": ",".join(inputs),
        "attnkit.version": str(__version__),
    }
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def _opset_of(model: Any) -> int:
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _convert_opset(model: Any, opset: int) -> Any:
    if _opset_of(model) == opset:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:
        raise ConfigError(f"opset: the graph cannot be converted to opset {opset} ({exc}); try {_opset_of(model)}") from None

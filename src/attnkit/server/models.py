"""The model repository: named mechanisms with fixed options and weights, built once per process.

A repository is a directory of ``NAME.toml`` files, each::

    type = "multi_head"          # a registered mechanism
    [options]
    model_dim = 64
    heads = 8

with an optional ``NAME.safetensors`` of weights beside it (names as :meth:`Mechanism.param_shapes`
declares them). A single model can also be given as ``NAME=TYPE[:weights.safetensors]``. Options that
the weights determine (the class's ``shape_options`` that appear in a parameter's shape, such as
``model_dim``, ``kdim``, ``vdim``) are read from the weights when not given; options that no shape
holds (``heads``) may be stored in the safetensors file's metadata under their names
(``{"heads": "2"}``), which a ``--model`` spec reads (a ``NAME.toml`` gives them in ``[options]``).

Weights not given are drawn with the fixed seed :data:`DEFAULT_SEED`, so a model answers the same
request with the same bytes after a restart, in every ``--workers`` process and after any cache
eviction. When weights are replaced (``PUT /v1/models/{name}/weights``), they are written to the
repository atomically (a temporary file in the same directory, then ``os.replace``); every worker
notices the new file (its size and modification time) on its next request to that model and reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import os
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..errors import AttentionError, ConfigError, ShapeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from ..mechanisms import registry
from ..mechanisms.base import Mechanism
from .codec import ApiError

__all__ = [
    "DEFAULT_SEED",
    "Model",
    "ModelRepository",
    "build_model",
    "infer_options_from_weights",
    "infer_options_from_shapes",
    "router",
]

#: the seed of weights that are not given (models and the ad-hoc route alike)
DEFAULT_SEED = 0
#: the input names of the contract, in ``forward``'s order
INPUT_NAMES = ("query", "key", "value", "mask")
#: keyword-only tensor inputs a mechanism may take besides those (``edge_features`` of ``edge_featured``)
EXTRA_INPUTS = ("edge_features",)
_NDIM = {"sequence": 3, "model": 2, "headless": 2}


@dataclasses.dataclass
class Model:
    """One named model: its mechanism (built once), the options it was built with, its weights file."""

    name: str
    type: str
    options: dict[str, Any]
    mechanism: Any
    weights_path: Path | None = None
    weights_stamp: tuple[int, int] | None = None

    def describe(self) -> dict[str, Any]:
        """Type, options, input layout, inputs and parameter shapes (``GET /v1/models/{name}``)."""
        mech = self.mechanism
        cls = type(mech)
        return {
            "name": self.name,
            "type": cls.name,
            "class": cls.__name__,
            "options": _jsonable(mech.options()),
            "input_layout": cls.input_layout,
            "inputs": input_specs(mech),
            "param_shapes": {k: list(v) for k, v in mech.param_shapes().items()},
            "weights_file": str(self.weights_path) if self.weights_path is not None else None,
            "has_attention_weights": bool(cls.has_attention_weights),
        }


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (tuple, list)):
            v = list(v)
        elif isinstance(v, np.generic):
            v = v.item()
        elif not (v is None or isinstance(v, (bool, int, float, str))):
            v = repr(v)
        out[k] = v
    return out


def input_specs(mech: Any) -> list[dict[str, Any]]:
    """The contract's inputs of ``mech`` without a batch axis: name, rank, known sizes (-1: any), whether optional.

    Axes named by the class's ``shape_options`` hold the option's value when the instance has one.
    """
    cls = type(mech)
    layout = cls.input_layout
    opts = mech.options()
    specs: list[dict[str, Any]] = []
    for name in ("query", "key", "value"):
        if layout == "graph":
            ndim = 1 if name == "query" else 2
        else:
            ndim = _NDIM[layout]
        shape = [-1] * ndim
        for opt, (inp, axis) in cls.shape_options.items():
            if inp == name and isinstance(opts.get(opt), int) and not isinstance(opts.get(opt), bool):
                shape[axis] = int(opts[opt])
        optional = name != "query" and not (name == "key" and cls.key_required)
        specs.append({"name": name, "shape": shape, "optional": optional})
    specs.append({"name": "mask", "shape": None, "optional": True})
    for name in extra_inputs(cls.name):  # (k, edge_dim) per query row, as the neighbour form takes them
        shape = [-1, -1]
        for opt, (inp, axis) in cls.shape_options.items():
            if inp == name and isinstance(opts.get(opt), int) and not isinstance(opts.get(opt), bool):
                shape[axis] = int(opts[opt])
        specs.append({"name": name, "shape": shape, "optional": not opts.get("edge_dim")})
    return specs


@functools.lru_cache(maxsize=256)
def extra_inputs(name: str) -> tuple[str, ...]:
    """The :data:`EXTRA_INPUTS` that mechanism ``name``'s ``forward`` takes (keyword-only)."""
    params = inspect.signature(registry.get(name).forward).parameters
    return tuple(n for n in EXTRA_INPUTS if n in params and params[n].kind is inspect.Parameter.KEYWORD_ONLY)


# ---------------------------------------------------------------------- options from shapes
def infer_options_from_shapes(
    cls: type[Mechanism], options: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], max_option: int = 2**62
) -> dict[str, Any]:
    """``options`` with the class's ``shape_options`` filled in from the input ``shapes`` (by contract name).

    An option given with a different value than the shape says raises :class:`ShapeError` naming both
    (options larger than ``max_option`` are left for the caller's own limit check).
    Inputs that are absent, or of a lower rank than the class's layout (flat arrays), leave the option as it is.
    """
    out = dict(options)
    layout = cls.input_layout
    for opt, (inp, axis) in cls.shape_options.items():
        shape = shapes.get(inp)
        full = (1 if inp == "query" else 2) if layout == "graph" else _NDIM.get(layout, 2)
        if inp not in INPUT_NAMES[:3]:
            full = 1
        if shape is None or len(shape) < max(full, -axis if axis < 0 else axis + 1):
            continue  # absent, or the spec's flat form (``(L*H*D,)``): the mechanism reads it with its options
        size = int(shape[axis])
        given = out.get(opt)
        if given is None:
            out[opt] = size
        elif not isinstance(given, bool) and isinstance(given, int) and given != size and 0 < given <= max_option:
            raise ShapeError(
                f"{inp}: axis {axis} has size {size} (shape {tuple(shape)}) but options.{opt} is {given}; leave {opt} out to take it from the shape"
            )
    return out


_CONTRACT_NAMES = {"query": "query", "keys": "key", "values": "value", "mask": "mask", **{n: n for n in EXTRA_INPUTS}}


@functools.lru_cache(maxsize=256)
def _option_specs(name: str) -> dict[str, registry.OptionSpec]:
    """A mechanism's option specs by name (cached: building them reads type hints, every request needs them)."""
    return {s.name: s for s in registry.option_specs(name)}


def adhoc_options(name: str, options: Mapping[str, Any], tensors: Mapping[str, Any], max_option: int = 2**62) -> dict[str, Any]:
    """The ad-hoc route's options: shape options inferred from the request's tensors (server field names).

    An unknown mechanism is left to the caller (it answers 404); string values (query strings) are
    converted to the option's type first so that ``?heads=2`` compares equal to a size of 2.
    """
    try:
        cls = registry.get(name)
    except ConfigError:
        return dict(options)
    specs = _option_specs(cls.name)
    try:  # aliases (num_heads, d_model, ...) under the mechanism's own names, so an inferred option meets its alias
        opts = registry.canonical_options(cls, options)
    except ConfigError:
        return dict(options)  # unknown or doubled names: the caller's own check answers them
    for k in cls.shape_options:
        if k in opts and k in specs and isinstance(opts[k], str):
            opts[k] = registry.coerce_option(specs[k], opts[k])
    shapes = {_CONTRACT_NAMES[f]: tuple(t.shape) for f, t in tensors.items() if f in _CONTRACT_NAMES and t is not None}
    return infer_options_from_shapes(cls, opts, shapes, max_option)


# ---------------------------------------------------------------------- options from weights
def infer_options_from_weights(cls: type[Mechanism], options: Mapping[str, Any], weights: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the shape options that the weights determine filled in from the weights' shapes.

    For each of the class's ``shape_options`` not given, a probe instance with that option set to a
    new value shows which parameter axes carry it; the weights' size on the axes that carry only that
    option is its value. A given option that disagrees with the weights raises :class:`ConfigError`.
    """
    base = {**cls.example_options, **{k: v for k, v in options.items() if v is not None}}
    if "seed" in {s.name for s in registry.option_specs(cls)}:
        base["seed"] = DEFAULT_SEED

    def shapes_of(opts: Mapping[str, Any]) -> dict[str, tuple[int, ...]] | None:
        try:
            return registry.create(cls.name, **opts).param_shapes()
        except (AttentionError, TypeError, ValueError):
            return None

    ref = shapes_of(base)
    if not ref:
        return dict(options)
    carried: dict[str, set[tuple[str, int]]] = {}
    for opt in cls.shape_options:
        cur = base.get(opt)
        probe_value = 3 * cur if isinstance(cur, int) and not isinstance(cur, bool) and cur > 0 else 13
        probed = shapes_of({**base, opt: probe_value})
        if probed is None or set(probed) != set(ref):
            continue
        carried[opt] = {(p, ax) for p, shape in probed.items() for ax, n in enumerate(shape) if n == probe_value and ref[p][ax] != n}
    out = dict(options)
    for opt, positions in carried.items():
        others = set().union(*(v for o, v in carried.items() if o != opt)) if len(carried) > 1 else set()
        own = sorted(positions - others) or sorted(positions)
        sizes = {int(np.shape(weights[p])[ax]) for p, ax in own if p in weights and len(np.shape(weights[p])) > ax}
        if len(sizes) > 1:
            raise ConfigError(f"weights: the tensors disagree on {opt} (sizes {sorted(sizes)} on {', '.join(f'{p}[{a}]' for p, a in own)})")
        if not sizes:
            continue
        (size,) = sizes
        given = options.get(opt)
        if given is None:
            out[opt] = size
        elif given != size:
            raise ConfigError(f"{opt}: options.{opt} is {given} but the weights have {size} ({own[0][0]} axis {own[0][1]})")
    return out


def build_model(
    name: str,
    type_name: str,
    options: Mapping[str, Any] | None = None,
    weights: Mapping[str, Any] | None = None,
    weights_path: Path | None = None,
) -> Model:
    """Build the model ``name``: options checked, options from the weights, the default seed, the weights loaded."""
    cls = registry.get(type_name)
    specs = {s.name: s for s in registry.option_specs(cls)}
    opts = {k: registry.coerce_option(specs[k], v) if k in specs else v for k, v in (options or {}).items()}
    if weights is not None:
        weights = {k: np.asarray(v) for k, v in weights.items()}
        opts = infer_options_from_weights(cls, opts, weights)
    if "seed" in specs and opts.get("seed") is None:
        opts["seed"] = DEFAULT_SEED
    mech = registry.create(cls.name, **opts)
    mech.eval()
    if weights is not None:
        mech.load_parameters(weights)
    return Model(name=name, type=cls.name, options=dict(opts), mechanism=mech, weights_path=weights_path, weights_stamp=_stamp(weights_path))


def _stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a weights file; a ``torch.nn.MultiheadAttention`` or Hugging Face BERT state dict
    is converted to attnkit's names (``q_proj.weight`` ...) first."""
    from ..weights import load_state

    return _attnkit_names(load_state(path))


def _attnkit_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from ..weights import detect_layout, to_attnkit

    try:
        foreign = detect_layout(state) in ("torch_mha", "hf_bert")
    except ConfigError:
        foreign = False
    return to_attnkit(state) if foreign else state


def _weights_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (``__metadata__``): options such as ``heads`` may be there."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # noqa: BLE001 - a bad file is reported by _read_weights
        return {}


def _metadata_options(cls: type[Mechanism], path: Path | None) -> dict[str, Any]:
    """Options stored in a weights file's metadata under the option's name (``{"heads": "2"}``)."""
    if path is None or path.suffix != ".safetensors" or not path.is_file():
        return {}
    specs = {s.name: s for s in registry.option_specs(cls)}
    return {k: registry.coerce_option(specs[k], v) for k, v in _weights_metadata(path).items() if k in specs}


def _check_name(name: str, where: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ConfigError(f"{where}: model name {name!r}: expected letters, digits, '-', '_' or '.'")
    return name


class ModelRepository:
    """The models of one server process, by name (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, specs: tuple[str, ...] | list[str] = ()) -> None:
        self.directory = Path(directory) if directory else None
        self.models: dict[str, Model] = {}
        self._lock = threading.Lock()
        if self.directory is not None:
            if not self.directory.is_dir():
                raise ConfigError(f"models: no such directory {str(self.directory)!r}")
            for toml_path in sorted(self.directory.glob("*.toml")):
                self._add(self._from_toml(toml_path))
        for spec in specs:
            self._add(self._from_spec(spec))

    def _add(self, model: Model) -> None:
        if model.name in self.models:
            raise ConfigError(f"models: model {model.name!r} is defined twice")
        self.models[model.name] = model

    def _from_toml(self, path: Path) -> Model:
        name = _check_name(path.stem, str(path))
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the model ({exc})") from None
        unknown = sorted(set(doc) - {"type", "options"})
        if unknown:
            raise ConfigError(f"{path}: {unknown[0]}: unknown key; a model file has type and [options]")
        if not isinstance(doc.get("type"), str):
            raise ConfigError(f"{path}: type: expected a mechanism name (one of {', '.join(registry.names())})")
        options = doc.get("options", {})
        if not isinstance(options, dict):
            raise ConfigError(f"{path}: options: expected a table")
        wpath = path.with_suffix(".safetensors")
        weights = _read_weights(wpath) if wpath.is_file() else None
        try:
            return build_model(name, doc["type"], options, weights, wpath)
        except AttentionError as exc:
            raise type(exc)(f"{path}: {exc}") from None

    def _from_spec(self, spec: str) -> Model:
        name, sep, rest = str(spec).partition("=")
        if not sep or not rest:
            raise ConfigError(f"--model: expected NAME=TYPE[:weights.safetensors], got {spec!r}")
        name = _check_name(name.strip(), "--model")
        type_name, _, wfile = rest.partition(":")
        wpath = Path(wfile) if wfile else (self.directory / f"{name}.safetensors" if self.directory else None)
        weights = _read_weights(wpath) if wpath is not None and wpath.is_file() else None
        if wfile and weights is None:
            raise ConfigError(f"--model {name}: no such weights file {wfile!r}")
        try:
            options = _metadata_options(registry.get(type_name.strip()), wpath)
            return build_model(name, type_name.strip(), options, weights, wpath)
        except AttentionError as exc:
            raise type(exc)(f"--model {name}: {exc}") from None

    # ------------------------------------------------------------ lookup
    def names(self) -> list[str]:
        return sorted(self.models)

    def get(self, name: str) -> Model:
        """The model ``name`` (404 if unknown), reloaded first if another process replaced its weights file."""
        model = self.models.get(name)
        if model is None:
            raise ApiError(404, "unknown_model", f"model: unknown model {name[:80]!r}; served models: {', '.join(self.names()) or 'none'}", "model")
        if model.weights_path is not None:
            stamp = _stamp(model.weights_path)
            if stamp is not None and stamp != model.weights_stamp:
                with self._lock:
                    current = self.models[name]
                    if _stamp(current.weights_path) != current.weights_stamp:
                        self.models[name] = model = build_model(
                            name,
                            current.type,
                            current.options,
                            None if current.weights_path is None else _read_weights(current.weights_path),
                            current.weights_path,
                        )
                    else:
                        model = current
        return model

    # ------------------------------------------------------------ admin
    def replace_weights(self, name: str, body: bytes) -> Model:
        """Check ``body`` (safetensors) against the model, write it to the repository atomically, and adopt it."""
        from ..weights import load_state

        model = self.get(name)
        if model.weights_path is None:
            raise ApiError(409, "no_repository", f"model {name!r} has no weights file to write (start the server with --models DIR)", "model")
        weights = _attnkit_names(load_state(body))
        try:
            new = build_model(name, model.type, model.options, weights, None)
        except AttentionError as exc:
            raise ApiError(422, "config_error", str(exc), "body") from None
        path = model.weights_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        new.weights_path = path
        new.weights_stamp = _stamp(path)
        with self._lock:
            self.models[name] = new
        return new


# ---------------------------------------------------------------------- routes
#: every status these routes may answer, documented for clients (and checked by schemathesis)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    c: {"description": d}
    for c, d in (
        (400, "malformed body"),
        (401, "missing API key"),
        (403, "wrong API key or no key configured"),
        (404, "unknown model"),
        (409, "the model has no file to write"),
        (413, "too large"),
        (415, "unsupported media type"),
        (422, "invalid tensors or options"),
        (503, "overloaded"),
        (504, "timed out"),
    )
}

router = APIRouter(tags=["models"])


def repository(request: Request) -> ModelRepository:
    return request.app.state.models


@router.get("/v1/models", responses=ERROR_RESPONSES, summary="the served models: type, options, input layout, parameter shapes")
async def list_models(request: Request) -> JSONResponse:
    repo = repository(request)
    return JSONResponse({"models": [repo.get(n).describe() for n in repo.names()]})


@router.get("/v1/models/{name}", responses=ERROR_RESPONSES, summary="one served model: type, options, input layout, parameter shapes")
async def show_model(name: str, request: Request) -> JSONResponse:
    return JSONResponse(repository(request).get(name).describe())


@router.put(
    "/v1/models/{name}/weights",
    responses=ERROR_RESPONSES,
    summary="admin: replace a model's weights (a safetensors body); written to the repository atomically",
    description="Needs the server's API key; refused (403) when the server has none. The tensors must have the model's "
    "parameter names and shapes (422 otherwise).",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-safetensors": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    response_class=JSONResponse,
)
async def replace_weights(name: str, request: Request) -> Response:
    state = request.app.state.attnkit
    if not state.settings.api_key:
        raise ApiError(403, "forbidden", "admin routes need the server's API key: start it with an api_key setting", None)
    from .app import read_body

    body = await read_body(request, state.settings.max_body_bytes)
    repo = repository(request)
    # in this process (its repository is the one written); the compute workers reload the new file themselves
    model = await asyncio.to_thread(repo.replace_weights, name, body)
    return JSONResponse(model.describe())

"""What one computation of the server does, independent of where it runs (a thread or a worker process).

:class:`Compute` decodes a request body, builds (or reuses) the mechanism, checks the work the request
asks for (:mod:`.admission`), runs the forward pass or the attention weights, and encodes the answer.
It holds no asyncio state, so the same object serves the thread runner and each worker process of the
process runner (:mod:`.isolation`). Every failure is an :class:`~.codec.ApiError` naming the field.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np

from ..errors import AttentionError, ConfigError, DTypeError, NonFiniteError, ShapeError
from ..mechanisms import registry
from . import codec
from .admission import Work, estimate_work
from .cache import MechanismCache
from .codec import ApiError
from .models import DEFAULT_SEED, adhoc_options, extra_inputs
from .scores import WeightsLayout, estimate_elements, weights_layout
from .settings import Settings

__all__ = ["Compute", "attention_error", "MASK_KINDS"]

log = logging.getLogger("attnkit.server")

_REQUEST_KEYS = frozenset({"query", "keys", "values", "mask", "edge_features", "mask_kind", "options", "encoding", "dtype"})
#: how a mask is read: ``bool`` (True = may attend) or ``additive`` (float, added to the scores)
MASK_KINDS = ("bool", "additive")
_FIELD_ALIASES = {
    "q": "query", "query": "query", "a": "query", "x": "query",
    "k": "keys", "key": "keys", "keys": "keys", "b": "keys",
    "v": "values", "value": "values", "values": "values", "c": "values",
    "mask": "mask",
}  # fmt: skip
_ERROR_CODES: tuple[tuple[type[Exception], str], ...] = (
    (ShapeError, "shape_error"),
    (DTypeError, "dtype_error"),
    (NonFiniteError, "non_finite"),
    (ConfigError, "config_error"),
    (AttentionError, "attention_error"),
)


def _field_of(message: str, option_names: set[str]) -> str | None:
    m = re.match(r"^\s*([A-Za-z_][\w.\[\]]*)(?:\s*,\s*[A-Za-z_][\w.]*)*\s*:", message)
    if not m:
        return None
    name = m.group(1)
    if name in _FIELD_ALIASES:
        return _FIELD_ALIASES[name]
    if name == "type":
        return "mechanism"
    if name in option_names:
        return f"options.{name}"
    return name


def attention_error(exc: AttentionError, option_names: set[str] = frozenset(), default_field: str = "body") -> ApiError:  # type: ignore[assignment]
    """Map an attnkit error to a 422 answer that names the request field (``default_field`` when the
    message does not start with one)."""
    code = next(c for t, c in _ERROR_CODES if isinstance(exc, t))
    message = str(exc)
    return ApiError(422, code, message, _field_of(message, set(option_names)) or default_field)


@functools.lru_cache(maxsize=256)
def _specs(name: str) -> dict[str, registry.OptionSpec]:
    """Option specs of a mechanism class by name (cached: building them reads type hints)."""
    return {sp.name: sp for sp in registry.option_specs(name)}


def _option_value_ok(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return not (isinstance(value, float) and not math.isfinite(value))
    if isinstance(value, list) and depth < 2 and len(value) <= 1024:
        return all(_option_value_ok(v, depth + 1) for v in value)
    return False


def _too_big(value: Any, limit: int) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) > limit
    if isinstance(value, float):
        return abs(value) > 1e300
    if isinstance(value, list):
        return any(_too_big(v, limit) for v in value)
    return False


def _json_request(doc: Any, max_elements: int, where: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any], str, str | None]:
    """Tensors, options, answer encoding and mask kind of one JSON request object."""
    if not isinstance(doc, dict):
        raise ApiError(422, "bad_request", f"{where or 'body'}: expected a JSON object with query, keys, values", where[:-1] or "body")
    unknown = sorted(set(doc) - _REQUEST_KEYS)
    if unknown:
        name = codec.safe_text(unknown[0])
        raise ApiError(422, "bad_request", f"{where}{name}: unknown key; expected {', '.join(sorted(_REQUEST_KEYS))}", where + name)
    if doc.get("query") is None:
        raise ApiError(422, "bad_request", f"{where}query: required", where + "query")
    dtype_name = doc.get("dtype", "float32")
    if dtype_name not in ("float32", "float64"):
        raise ApiError(422, "bad_request", f"{where}dtype: expected 'float32' or 'float64', got {codec._short(dtype_name)}", where + "dtype")
    encoding = doc.get("encoding", "list")
    if encoding not in ("list", "base64"):
        raise ApiError(422, "bad_request", f"{where}encoding: expected 'list' or 'base64', got {codec._short(encoding)}", where + "encoding")
    mask_kind = doc.get("mask_kind")
    if mask_kind is not None and mask_kind not in MASK_KINDS:
        raise ApiError(422, "bad_request", f"{where}mask_kind: expected 'bool' or 'additive', got {codec._short(mask_kind)}", where + "mask_kind")
    options = doc.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ApiError(422, "bad_request", f"{where}options: expected a JSON object, got {type(options).__name__}", where + "options")
    tensors = {}
    for f in codec.TENSOR_FIELDS + codec.EXTRA_FIELDS:
        if doc.get(f) is not None:
            try:
                tensors[f] = codec.decode_json_tensor(doc[f], f, max_elements, np.dtype(dtype_name))
            except ApiError as err:
                err.field = where + (err.field or f)
                raise
    return tensors, options, encoding, mask_kind


def check_mask(tensors: dict[str, np.ndarray], mask_kind: str | None, where: str = "", how: str = '"mask_kind": "additive"') -> None:
    """A mask is bool (True = may attend), or float and explicitly marked additive; integer masks and
    unmarked numeric masks are refused, since 0/1 added to the scores is not what a 0/1 mask means."""
    mask = tensors.get("mask")
    if mask is None:
        return
    field = where + "mask"
    if mask.dtype == np.bool_:
        if mask_kind == "additive":
            raise ApiError(422, "bad_mask", f"{field}: marked additive but holds true/false values; drop the mark", field)
        return
    if mask_kind != "additive":
        raise ApiError(
            422, "bad_mask",
            f"{field}: a numeric mask is ambiguous (0/1 added to the scores does not mask anything); send true/false values "
            f"(True = may attend), or a float mask added to the scores marked with {how}",
            field,
        )  # fmt: skip
    if mask.dtype.kind != "f":
        tensors["mask"] = mask.astype(np.float32)


class Plan:
    """What a request's ``(name, options, tensor shapes)`` resolve to: the mechanism class, its validated
    options (with those the shapes imply), option names, cache key, and the admission estimate (with
    the mechanism it was made for: an evicted and rebuilt mechanism is estimated again)."""

    __slots__ = ("cls", "clean", "names", "key", "work")

    def __init__(self, cls: Any, clean: dict[str, Any], names: set[str], key: Hashable) -> None:
        self.cls, self.clean, self.names, self.key = cls, clean, names, key
        self.work: tuple[Any, Work | None] | None = None


def plan_key(name: str, options: Mapping[str, Any], tensors: Mapping[str, Any]) -> Hashable | None:
    """A key for :class:`Plan`: the name, the options as given (with their types: ``8``, ``8.0`` and
    ``True`` are equal keys in Python but not the same option) and each tensor's shape and dtype; ``None``
    when an option value cannot be hashed (a JSON list), which is then resolved each time."""
    opts = tuple((k, type(v), v) for k, v in options.items())
    key = (name, opts, tuple((f, t.shape, t.dtype.str) for f, t in tensors.items() if t is not None))
    try:
        hash(key)
    except TypeError:
        return None
    return key


#: the most plans a :class:`Compute` remembers (all are forgotten when it is full)
MAX_PLANS = 4096


class Compute:
    """Request handling of one process: the mechanism cache, the probes, decode -> compute -> encode."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = MechanismCache(settings.cache_size, settings.cache_bytes)
        self._plans: dict[Hashable, Plan] = {}  # (name, options, shapes) -> what they resolve to

    # ------------------------------------------------------------ plans
    def plan(self, name: str, options: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> Plan:
        """What ``(name, options, tensor shapes)`` resolve to (:meth:`_inferred_options` then :meth:`resolve`,
        whose errors it raises), looked up when the same ones came before."""
        key = plan_key(name, options, tensors)
        plan = self._plans.get(key) if key is not None else None
        if plan is None:
            plan = Plan(*self.resolve(name, self._inferred_options(name, options, tensors)))
            if key is not None:
                if len(self._plans) >= MAX_PLANS:
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    def planned_mechanism(self, plan: Plan) -> Any:
        """The mechanism of ``plan``: from the cache, or built (and cached)."""
        mech = self.cache.get(plan.key)
        return mech if mech is not None else self.build(plan.cls, plan.clean, plan.names, plan.key)

    def plan_work(self, plan: Plan, mech: Any, tensors: Mapping[str, np.ndarray]) -> Work | None:
        """The admission estimate of ``mech`` on ``tensors`` (the shapes of ``plan``), made once per mechanism."""
        work = plan.work
        if work is None or work[0] is not mech:
            plan.work = work = (mech, self.estimate(mech, tensors))
        return work[1]

    # ------------------------------------------------------------ mechanisms
    def mechanism(self, name: Any, options: Any, where: str = "") -> tuple[Any, set[str], Any]:
        """A constructed mechanism for ``(name, options)`` (from the cache when possible), its option
        names and its cache key."""
        cls, clean, names, cache_key = self.resolve(name, options, where)
        mech = self.cache.get(cache_key)
        if mech is not None:
            return mech, names, cache_key
        return self.build(cls, clean, names, cache_key, where), names, cache_key

    def resolve(self, name: Any, options: Any, where: str = "") -> tuple[Any, dict[str, Any], set[str], Any]:
        """The mechanism class, its validated options, its option names and the cache key of
        ``(name, options)``: everything but building it."""
        if not isinstance(name, str) or not name:
            raise ApiError(422, "bad_request", f"{where}mechanism: expected a mechanism name", f"{where}mechanism")
        try:
            cls = registry.get(name)
        except ConfigError:
            shown = codec.safe_text(name[:80])
            raise ApiError(
                404, "unknown_mechanism", f"mechanism: unknown mechanism {shown!r}; expected one of {', '.join(registry.names())}",
                f"{where}mechanism",
            ) from None  # fmt: skip
        if not isinstance(options, dict):
            raise ApiError(422, "bad_request", f"{where}options: expected a JSON object, got {type(options).__name__}", f"{where}options")
        specs = _specs(cls.name)
        names = set(specs)
        clean: dict[str, Any] = {}
        spelled: dict[str, str] = {}
        for raw_key, value in options.items():
            given = codec.safe_text(str(raw_key))
            field = f"{where}options.{given}"
            key = registry.find_option(specs, given)  # any name of the registry's alias table (num_heads, embed_dim, ...)
            if key is None:
                raise ApiError(422, "config_error", f"{given}: unknown option for {cls.name!r}; expected one of {', '.join(specs)}", field)
            if key in spelled:
                raise ApiError(422, "config_error", f"{key}: given twice, as {spelled[key]!r} and as {given!r}", field)
            spelled[key] = given
            if not _option_value_ok(value):
                raise ApiError(
                    422, "config_error",
                    f"{key}: expected a number, bool, string or null (or a list of them), got {type(value).__name__}", field,
                )  # fmt: skip
            if isinstance(value, str):
                value = codec.safe_text(value)
            try:
                value = registry.coerce_option(specs[key], value)
            except AttentionError as exc:
                raise ApiError(422, "config_error", str(exc), field) from None
            if key != "seed" and _too_big(value, self.settings.max_option_int):
                raise ApiError(
                    422, "option_too_large",
                    f"{key}: integer options are limited to {self.settings.max_option_int} on this server, got {value!r}", field,
                )  # fmt: skip
            clean[key] = value
        if "seed" in specs and clean.get("seed") is None:
            clean["seed"] = DEFAULT_SEED  # issue 14: the same answer across restarts, workers and evictions
        cache_key = (cls.name, json.dumps(clean, sort_keys=True, default=repr))
        return cls, clean, names, cache_key

    def build(self, cls: Any, clean: dict[str, Any], names: set[str], cache_key: Any, where: str = "") -> Any:
        """Construct the mechanism of :meth:`resolve`'s answer and keep it in the cache."""
        try:
            mech = registry.create(cls.name, **clean)
        except AttentionError as exc:
            err = attention_error(exc, names, "options")
            err.field = where + (err.field or "options")
            raise err from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ApiError(422, "config_error", f"options: {cls.name} rejected the options ({exc})", f"{where}options") from None
        except MemoryError:
            raise ApiError(413, "too_large", "options: the mechanism's weights do not fit in memory", f"{where}options") from None
        self.cache.put(cache_key, mech)
        return mech

    def _inferred_options(self, name: str, options: dict[str, Any], tensors: Mapping[str, np.ndarray], where: str = "") -> dict[str, Any]:
        """Options the tensors' shapes determine, filled in (issue 14); a conflict is a 422 naming both."""
        try:
            return adhoc_options(name, options, tensors, self.settings.max_option_int)
        except AttentionError as exc:
            err = attention_error(exc, set(options) | {"heads", "dim"}, "query")
            err.field = where + (err.field or "query")
            raise err from None

    # ------------------------------------------------------------ named models (issue 14)
    def _models(self) -> Any:
        """This process's model repository (built on first use from the same files and seed as the server's)."""
        repo = getattr(self, "_repo", None)
        if repo is None:
            from .models import ModelRepository

            repo = self._repo = ModelRepository(self.settings.models_dir, self.settings.models)
        return repo

    def kserve_parse(self, body: bytes, header_length: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray], bool]:
        """Decode an Open Inference Protocol request: its JSON header, input tensors, binary answer wanted."""
        from . import kserve

        return kserve.parse_request(body, header_length, self.settings.max_elements)

    def model_forward(self, name: str, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        """The forward of the named model for protocol inputs (batch axis first)."""
        from . import kserve

        model = self._models().get(name)
        self.admit(model.mechanism, {"query": tensors["query"], "keys": tensors.get("key"), "values": tensors.get("value")})
        return kserve.forward(self, model.mechanism, tensors)

    def kserve_encode(self, name: str, doc: dict[str, Any], out: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str], str]:
        from . import kserve

        return kserve.infer_response(self._models().get(name), doc, out, binary)

    # ------------------------------------------------------------ admission
    def estimate(self, mech: Any, tensors: Mapping[str, np.ndarray | None]) -> Work | None:
        """The admission estimate of ``mech``'s forward on ``tensors`` (``None`` without a query)."""
        q, k, v, mask = (tensors.get(f) for f in codec.TENSOR_FIELDS)
        if q is None:
            return None
        return estimate_work(mech, self.layout(mech), q, k, v, mask)

    def admit(self, mech: Any, tensors: Mapping[str, np.ndarray | None], where: str = "", work: Work | None = None) -> None:
        """Refuse (413) a forward pass whose estimated FLOPs or bytes exceed the server's bounds (``work``:
        the estimate when the caller has it already)."""
        work = work or self.estimate(mech, tensors)
        if work is None:
            return
        s = self.settings
        if work.flops > s.max_flops or work.nbytes > s.max_work_bytes:
            what = (
                f"about {work.flops:.3g} floating-point operations (at most {s.max_flops:.3g}, max_flops)"
                if work.flops > s.max_flops
                else f"about {work.nbytes / 2**20:.0f} MiB of scores and buffers (at most {s.max_work_bytes / 2**20:.0f} MiB, max_work_bytes)"
            )
            raise ApiError(
                413, "too_much_work",
                f"query, keys: this request needs {what} for batch {work.batch}, {work.lq} queries and {work.lk} keys; "
                "send shorter sequences or smaller batches", where + "query",
            )  # fmt: skip

    # ------------------------------------------------------------ computing
    def forward(self, mech: Any, tensors: Mapping[str, np.ndarray], names: set[str], where: str = "", work: Work | None = None) -> np.ndarray:
        q, k, v, mask = (tensors.get(f) for f in codec.TENSOR_FIELDS)
        if q is None:
            raise ApiError(422, "bad_request", f"{where}query: required", f"{where}query")
        # keys without values are refused, except by mechanisms that need keys and read values their own way
        # (graph attention: the keys are the source nodes and carry the messages)
        if (k is None) != (v is None) and not (v is None and type(mech).key_required):
            missing = "values" if v is None else "keys"
            raise ApiError(422, "bad_request", f"{where}{missing}: pass both keys and values, or neither (self-attention)", f"{where}{missing}")
        self.admit(mech, tensors, where, work)
        extras = self.extras(mech, tensors, where)
        return self._call(mech, lambda: mech.forward(q, k, v, mask=mask, **extras), names, where)

    def extras(self, mech: Any, tensors: Mapping[str, np.ndarray], where: str = "") -> dict[str, np.ndarray]:
        """The keyword-only tensor inputs (``edge_features``) of the request, refused (422) when ``mech``
        takes none of that name."""
        given = {f: tensors[f] for f in codec.EXTRA_FIELDS if tensors.get(f) is not None}
        accepted = extra_inputs(type(mech).name)
        for f in given:
            if f not in accepted:
                takers = [n for n in registry.names() if f in extra_inputs(n)]
                raise ApiError(
                    422, "bad_request", f"{where}{f}: {type(mech).name!r} takes no {f}; mechanisms that do: {', '.join(takers)}", where + f
                )  # fmt: skip
        return given

    def _call(self, mech: Any, fn: Callable[[], Any], names: set[str], where: str = "") -> np.ndarray:
        """Run ``fn`` (a forward or weights call of ``mech``), mapping its errors to API errors."""
        try:
            out = fn()
        except AttentionError as exc:
            err = attention_error(exc, names, "query")
            err.field = where + (err.field or "query")
            raise err from None
        except MemoryError:
            raise ApiError(413, "too_large", "query: the computation does not fit in memory; send smaller tensors", where + "query") from None
        except (ValueError, TypeError, IndexError, ArithmeticError, RecursionError) as exc:
            # the mechanism failed to validate something a client sent: still the client's input
            log.warning("%s: unvalidated input reached the kernel", mech.name, exc_info=True)
            raise ApiError(422, "invalid_input", f"{mech.name} could not use these inputs ({str(exc)[:200]})", where + "query") from None
        out = np.asarray(out[0] if isinstance(out, tuple) else out)
        if out.dtype.kind == "f" and out.size and not np.isfinite(out).all():
            raise ApiError(
                422, "non_finite_output", "query: the output holds NaN or infinity (inputs so large that the scores overflow?)",
                where + "query",
            )  # fmt: skip
        return out

    def layout(self, mech: Any) -> WeightsLayout | None:
        """Where the sequence runs in ``mech``'s inputs, from the layout it declares (see :mod:`.scores`);
        ``None`` for a mechanism whose declared layout the server cannot read (every row then counts as a
        position)."""
        try:
            return weights_layout(mech)
        except Exception:  # noqa: BLE001 - e.g. a layout without the options it implies
            return None

    def scores(self, mech: Any, tensors: Mapping[str, np.ndarray], names: set[str]) -> np.ndarray:
        """The attention weights of ``mech`` for the request's query, keys (default: the query) and mask,
        refused (413) before any work when they would hold more than ``max_elements`` numbers."""
        q, k, v, mask = (tensors.get(f) for f in codec.TENSOR_FIELDS)
        if q is None:
            raise ApiError(422, "bad_request", "query: required", "query")
        if v is not None and k is None:
            raise ApiError(422, "shape_error", "keys: pass keys when values are given (weights depend on the keys only)", "keys")
        if not mech.has_attention_weights:
            with_weights = [n for n in registry.names() if registry.get(n).has_attention_weights]
            raise ApiError(
                422, "no_weights",
                f"mechanism: {mech.name!r} exposes no attention weights; mechanisms with weights: {', '.join(with_weights)}", "mechanism",
            )  # fmt: skip
        limit = self.settings.max_elements
        kk = q if k is None else k
        layout = self.layout(mech)
        n = 0 if layout is None else estimate_elements(layout, q.shape, kk.shape, None if mask is None else mask.shape)
        if n > limit:
            raise ApiError(
                413, "too_many_elements",
                f"query, keys: the attention weights would hold {n} elements (batch x heads x Lq x Lk), "
                f"at most {limit} (max_elements) on this server; send shorter sequences", "query",
            )  # fmt: skip
        self.admit(mech, {"query": q, "keys": kk, "values": v if v is not None else kk, "mask": mask})
        extras = self.extras(mech, tensors)
        out = self._call(mech, lambda: mech.attention_weights(q, k, mask=mask, **extras), names)
        if out.size > limit:  # a layout the probe did not foresee: still never answer more than the limit
            raise ApiError(
                413, "too_many_elements", f"query, keys: the attention weights hold {out.size} elements, at most {limit} (max_elements)",
                "query",
            )  # fmt: skip
        return out

    # ------------------------------------------------------------ one request
    def attention(
        self, name: str, media: str, body: bytes, headers: Mapping[str, str], query: Mapping[str, str], accept: str,
        scores: bool = False,
    ) -> tuple[bytes, dict[str, str]]:  # fmt: skip
        """One request to ``/v1/attention/{name}`` (``scores=False``) or ``/v1/attention/{name}/scores``."""
        t0 = time.perf_counter()
        tensors, options, encoding = self.decode_body(media, body, headers, query)
        plan = self.plan(name, options, tensors)  # options inferred from the shapes, validated: once per kind
        mech = self.planned_mechanism(plan)
        work = None
        if not scores:
            try:
                work = self.plan_work(plan, mech, tensors)
            except Exception:  # noqa: BLE001 - inputs the forward refuses: its checks answer, in their order
                work = None
        return self.respond(mech, plan.names, plan.key, tensors, encoding, accept, scores, t0, work)

    def decode(
        self, name: str, media: str, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
        """The tensors, options (those the shapes imply filled in) and answer encoding of a request body
        (binary bodies are read in place, without copies)."""
        tensors, options, encoding = self.decode_body(media, body, headers, query)
        return tensors, self._inferred_options(name, options, tensors), encoding

    def decode_body(
        self, media: str, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
        """:meth:`decode` without filling in the options the shapes imply."""
        s = self.settings
        encoding = "list"
        options: dict[str, Any] = dict(query)
        mask_kind = options.pop("mask_kind", None) or (headers.get("x-attnkit-mask-kind") or "").strip().lower() or None
        how = "the header X-Attnkit-Mask-Kind: additive"
        if media == codec.JSON:
            doc = codec.parse_json(body)
            tensors, body_options, encoding, json_kind = _json_request(doc, s.max_elements)
            options.update(body_options)
            mask_kind = json_kind or mask_kind
            how = '"mask_kind": "additive"'
        elif media == codec.NPY:
            tensors = codec.decode_npy_stream(body, s.max_elements)
        elif media == codec.SAFETENSORS:
            tensors = codec.decode_safetensors(body, s.max_elements)
        else:
            tensors = codec.decode_octet(body, headers, s.max_elements)
        if mask_kind is not None and mask_kind not in MASK_KINDS:
            raise ApiError(422, "bad_request", f"mask_kind: expected 'bool' or 'additive', got {codec._short(mask_kind)}", "mask_kind")
        check_mask(tensors, mask_kind, how=how)
        return tensors, options, encoding

    def respond(
        self, mech: Any, names: set[str], key: Any, tensors: Mapping[str, np.ndarray], encoding: str, accept: str, scores: bool,
        t0: float, work: Work | None = None, refresh: bool = True,
    ) -> tuple[bytes, dict[str, str]]:  # fmt: skip
        """Run a decoded request on ``mech`` and encode the answer (``t0``: when the request's work began;
        ``work``: its admission estimate if known; ``refresh``: measure the cached mechanism again)."""
        out = self.scores(mech, tensors, names) if scores else self.forward(mech, tensors, names, work=work)
        if refresh:
            self.cache.refresh(key)
        elapsed = (time.perf_counter() - t0) * 1e3
        content, out_headers = codec.encode_output(out, accept, encoding=encoding, extra={"mechanism": mech.name, "elapsed_ms": elapsed})
        out_headers["X-Attnkit-Elapsed-Ms"] = f"{elapsed:.3f}"
        return content, out_headers

    def batch(self, body: bytes) -> bytes:
        doc = codec.parse_json(body)
        if not isinstance(doc, dict):
            raise ApiError(422, "bad_request", f"body: expected a JSON object with 'requests', got {type(doc).__name__}", "body")
        unknown = sorted(set(doc) - {"requests", "encoding"})
        if unknown:
            name = codec.safe_text(unknown[0])
            raise ApiError(422, "bad_request", f"{name}: unknown key; a batch has requests and encoding", name)
        items = doc.get("requests")
        if not isinstance(items, list):
            raise ApiError(422, "bad_request", "requests: expected a list of request objects", "requests")
        if len(items) > self.settings.max_batch_items:
            raise ApiError(413, "too_many_items", f"requests: at most {self.settings.max_batch_items} items per batch, got {len(items)}", "requests")
        encoding = doc.get("encoding", "list")
        if encoding not in ("list", "base64"):
            raise ApiError(422, "bad_request", f"encoding: expected 'list' or 'base64', got {codec._short(encoding)}", "encoding")
        results = []
        for i, item in enumerate(items):
            where = f"requests[{i}]."
            try:
                if not isinstance(item, dict):
                    raise ApiError(422, "bad_request", f"{where[:-1]}: expected an object, got {type(item).__name__}", where[:-1])
                rest = {k: v for k, v in item.items() if k != "mechanism"}
                tensors, options, item_enc, mask_kind = _json_request(rest, self.settings.max_elements, where)
                check_mask(tensors, mask_kind, where)
                if isinstance(item.get("mechanism"), str):
                    options = self._inferred_options(item["mechanism"], options, tensors, where)
                mech, names, key = self.mechanism(item.get("mechanism"), options, where)
                out = self.forward(mech, tensors, names, where)
                self.cache.refresh(key)
                body_i, _ = codec.encode_output(out, codec.JSON, encoding=item_enc if "encoding" in item else encoding)
                results.append({"status": 200, "mechanism": mech.name, **codec.parse_json(body_i)})
            except ApiError as err:
                if not err.field:
                    err.field = where[:-1]
                elif not err.field.startswith("requests["):
                    err.field = where + err.field
                results.append({"status": err.status, **err.body()})
        return codec.dumps({"results": results})

"""Every bad input raises an attnkit error of the right class whose message names the argument.

Messages follow DESIGN.md: they start with the argument's name followed by a colon and say what was
expected and what was given, so each case matches ``^<name>:`` (or a more specific pattern).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from attnkit import (
    AttentionError,
    ConfigError,
    CrossAttention,
    DisposedError,
    DTypeError,
    FlashAttention,
    MultiHeadAttention,
    NonFiniteError,
    ScaledDotProduct,
    SelfAttention,
    ShapeError,
    create_mask,
)
from attnkit.mechanisms import registry

_g = np.random.default_rng(0)
Q = _g.standard_normal((3, 2, 4))  # flash: (L, H=2, D=4)
K = _g.standard_normal((5, 2, 4))
V = _g.standard_normal((5, 2, 4))
X = _g.standard_normal((3, 8))  # MHA: (L, E=8)
MEM = _g.standard_normal((5, 8))
NQ = _g.standard_normal(4)  # neighbour: d=4
NK = _g.standard_normal((6, 4))
NV = _g.standard_normal((6, 3))
PQ = np.array([[0.1, 0.2], [0.0, -0.3]])  # hyperbolic: points inside the unit ball
PK = np.array([[0.2, 0.1], [-0.1, 0.4], [0.3, 0.0]])


def with_value(x: np.ndarray, value: float) -> np.ndarray:
    y = x.copy()
    y.flat[y.size // 2] = value
    return y


def flash(**kw):
    return FlashAttention(heads=2, dim=4, **kw)


def mha(**kw):
    return MultiHeadAttention(8, heads=2, **kw)


def sdp(**kw):
    return ScaledDotProduct(4, **kw)


def disposed(obj):
    obj.dispose()
    return obj


def mha_weights(**changes):
    w = MultiHeadAttention(8, heads=2, seed=0).parameters()
    w.update(changes)
    return {k: v for k, v in w.items() if v is not None}


def mixed_query():
    return flash().forward(torch.from_numpy(Q), K, V)


_NONFINITE = [("nan", np.nan), ("posinf", np.inf), ("neginf", -np.inf)]


def _nonfinite_cases():
    out = []
    for tag, val in _NONFINITE:
        out += [
            pytest.param(lambda val=val: flash().forward(with_value(Q, val), K, V), NonFiniteError, r"^query:", id=f"flash-q-{tag}"),
            pytest.param(lambda val=val: flash().forward(Q, with_value(K, val), V), NonFiniteError, r"^key:", id=f"flash-k-{tag}"),
            pytest.param(lambda val=val: flash().forward(Q, K, with_value(V, val)), NonFiniteError, r"^value:", id=f"flash-v-{tag}"),
            pytest.param(lambda val=val: mha().forward(with_value(X, val)), NonFiniteError, r"^query:", id=f"mha-query-{tag}"),
            pytest.param(lambda val=val: mha().forward(X, with_value(MEM, val), MEM), NonFiniteError, r"^key:", id=f"mha-key-{tag}"),
            pytest.param(lambda val=val: mha().forward(X, MEM, with_value(MEM, val)), NonFiniteError, r"^value:", id=f"mha-value-{tag}"),
            pytest.param(lambda val=val: sdp().forward(with_value(NQ, val), NK, NV), NonFiniteError, r"^query:", id=f"sdp-query-{tag}"),
            pytest.param(lambda val=val: sdp().forward(NQ, with_value(NK, val), NV), NonFiniteError, r"^key:", id=f"sdp-keys-{tag}"),
            pytest.param(lambda val=val: sdp().forward(NQ, NK, with_value(NV, val)), NonFiniteError, r"^value:", id=f"sdp-values-{tag}"),
        ]
    return out


_BAD_DTYPES = [
    ("int", Q.astype(np.int64)),
    ("bool", Q > 0),
    ("complex", Q.astype(np.complex128)),
    ("object", Q.astype(object)),
    ("str", "not an array"),
    ("bytes", b"\x00\x01"),
]


def _dtype_cases():
    out = []
    for tag, bad in _BAD_DTYPES:
        out.append(pytest.param(lambda bad=bad: flash().forward(bad, K, V), DTypeError, r"^query:", id=f"flash-q-dtype-{tag}"))
    out += [
        pytest.param(lambda: flash().forward(Q, K.astype(np.int32), V), DTypeError, r"^key:", id="flash-k-dtype-int32"),
        pytest.param(lambda: flash().forward(Q, K, V.astype(np.complex64)), DTypeError, r"^value:", id="flash-v-dtype-complex"),
        pytest.param(lambda: flash().forward(torch.from_numpy(Q).long(), torch.from_numpy(K), torch.from_numpy(V)), DTypeError, r"^query:",
                     id="flash-q-torch-int64"),
        pytest.param(lambda: mha().forward(X.astype(np.int16)), DTypeError, r"^query:", id="mha-query-dtype-int"),
        pytest.param(lambda: mha().forward(X, MEM > 0, MEM), DTypeError, r"^key:", id="mha-key-dtype-bool"),
        pytest.param(lambda: sdp().forward("abcd", NK, NV), DTypeError, r"^query:", id="sdp-query-dtype-str"),
        pytest.param(lambda: sdp().forward(NQ, NK.astype(object), NV), DTypeError, r"^key:", id="sdp-keys-dtype-object"),
        pytest.param(lambda: sdp().forward(NQ, NK, NV.astype(np.uint8)), DTypeError, r"^value:", id="sdp-values-dtype-uint8"),
        pytest.param(mixed_query, DTypeError, r"mix array libraries", id="flash-mixed-libraries"),
    ]
    return out


def _linear_cases():
    if importlib.util.find_spec("attnkit.mechanisms.linear") is None:
        mark = pytest.mark.skip(reason="attnkit.mechanisms.linear does not exist yet")
        return [pytest.param(None, None, None, id="linear-missing", marks=mark)]
    from attnkit import LinearAttention

    def lin(**kw):
        return LinearAttention(4, heads=2, **kw)

    return [
        pytest.param(lambda: lin(feature_map="softmax"), ConfigError, r"^feature_map:", id="linear-unknown-feature-map"),
        pytest.param(lambda: lin(feature_map=3), ConfigError, r"^feature_map:", id="linear-feature-map-int"),
        pytest.param(lambda: lin(eps=0.0), ConfigError, r"^eps:", id="linear-eps-zero"),
        pytest.param(lambda: lin(eps=-1e-6), ConfigError, r"^eps:", id="linear-eps-negative"),
        pytest.param(lambda: lin(eps=float("nan")), ConfigError, r"^eps:", id="linear-eps-nan"),
        pytest.param(lambda: LinearAttention(4, heads=0), ConfigError, r"^heads:", id="linear-heads-zero"),
        pytest.param(lambda: lin(nu=2), ConfigError, r"^nu:", id="linear-nu-without-dpfp"),
        pytest.param(lambda: lin().forward(with_value(Q, np.nan), K, V), NonFiniteError, r"^query:", id="linear-q-nan"),
        pytest.param(lambda: lin().forward(Q, K[..., :3], V), ShapeError, r"^key:", id="linear-k-width"),
    ]


def _hyperbolic_cases():
    if importlib.util.find_spec("attnkit.mechanisms.hyperbolic") is None:
        mark = pytest.mark.skip(reason="attnkit.mechanisms.hyperbolic does not exist yet")
        return [pytest.param(None, None, None, id="hyperbolic-missing", marks=mark)]
    from attnkit import HyperbolicAttention

    def hyp(**kw):
        return HyperbolicAttention(2, **kw)

    return [
        pytest.param(lambda: hyp(curvature=float("nan")), ConfigError, r"^curvature:", id="hyperbolic-curvature-nan"),
        pytest.param(lambda: hyp(kappa="sphere"), ConfigError, r"^kappa:", id="hyperbolic-kappa-str"),
        pytest.param(lambda: hyp(curvature=float("inf")), ConfigError, r"^curvature:", id="hyperbolic-curvature-inf"),
        pytest.param(lambda: hyp(curvature="1"), ConfigError, r"^curvature:", id="hyperbolic-curvature-str"),
        pytest.param(lambda: hyp(temperature=0.0), ConfigError, r"^temperature:", id="hyperbolic-temperature-zero"),
        pytest.param(lambda: hyp(aggregation="mean"), ConfigError, r"^aggregation:", id="hyperbolic-unknown-aggregation"),
        pytest.param(lambda: hyp().forward(np.array([[0.9, 0.9]]), PK, PK), AttentionError, r"^query:.*ball", id="hyperbolic-q-outside-ball"),
        pytest.param(lambda: hyp().forward(PQ, np.array([[0.6, 0.8]]), np.array([[0.1, 0.1]])), AttentionError, r"^key:.*ball",
                     id="hyperbolic-keys-on-boundary"),
        pytest.param(lambda: hyp(curvature=4.0).forward(PQ, np.array([[0.55, 0.0]]), np.array([[0.1, 0.1]])), AttentionError,
                     r"^key:.*ball", id="hyperbolic-keys-outside-smaller-ball"),
        pytest.param(lambda: hyp().forward(with_value(PQ, np.nan), PK, PK), NonFiniteError, r"^query:", id="hyperbolic-q-nan"),
        pytest.param(lambda: hyp().forward(PQ, PK[:, :1], PK), ShapeError, r"^key:", id="hyperbolic-keys-width"),
    ]


CASES = [
    # ---- FlashAttention: shapes
    pytest.param(lambda: flash().forward(Q[:, :1], K, V), ShapeError, r"^query:.*heads", id="flash-q-wrong-heads"),
    pytest.param(lambda: flash().forward(np.zeros((3, 2, 5)), K, V), ShapeError, r"^query:.*dim", id="flash-q-wrong-dim"),
    pytest.param(lambda: flash().forward(Q, K[..., :3], V), ShapeError, r"^key:", id="flash-k-wrong-dim"),
    pytest.param(lambda: flash().forward(Q, K, V[:4]), ShapeError, r"^value:", id="flash-v-length-mismatch"),
    # keys with 1 head are multi-query attention (valid); 3 heads do not divide heads = 2
    pytest.param(lambda: flash().forward(Q, np.concatenate([K, K[:, :1]], axis=1), V), ShapeError, r"^key:.*heads", id="flash-k-wrong-heads"),
    pytest.param(lambda: flash().forward(Q, K[:, :1], V), ShapeError, r"^value: expected 1 heads \(as key\)", id="flash-v-heads-not-k-heads"),
    pytest.param(lambda: flash().forward(np.zeros((3, 8)), K, V), ShapeError, r"^query:", id="flash-q-2d"),
    pytest.param(lambda: flash().forward(np.zeros((2, 3, 2, 4)), np.zeros((3, 5, 2, 4)), np.zeros((3, 5, 2, 4))), ShapeError,
                 r"^query, key, value:.*broadcast", id="flash-batch-no-broadcast"),
    pytest.param(lambda: flash().forward(Q, K[:0], V[:0]), ShapeError, r"^key:.*empty", id="flash-empty-keys"),
    pytest.param(lambda: flash().forward(Q, K), ShapeError, r"^key, value:", id="flash-k-without-v"),
    pytest.param(lambda: flash().forward(np.zeros(7), np.zeros(8), np.zeros(8)), ShapeError, r"^query:.*flat", id="flash-flat-q-length"),
    pytest.param(lambda: flash().forward(np.zeros(8), np.zeros(12), np.zeros(8)), ShapeError, r"^key:.*flat", id="flash-flat-k-length"),
    pytest.param(lambda: flash().forward(np.zeros(8), np.zeros(8), np.zeros(8), mask=np.ones(3, dtype=bool)), ShapeError, r"^mask:",
                 id="flash-flat-mask-length"),
    pytest.param(lambda: flash().forward([[1.0, 2.0], [3.0]], K, V), ShapeError, r"^query:", id="flash-ragged-list"),
    pytest.param(lambda: flash().attention_scores(Q, K[..., :2]), ShapeError, r"^key:", id="flash-scores-k-wrong-dim"),
    # ---- FlashAttention: masks
    pytest.param(lambda: flash().forward(Q, K, V, mask=np.ones((3, 7), dtype=bool)), ShapeError, r"^mask:", id="flash-mask-shape"),
    pytest.param(lambda: flash().forward(Q, K, V, mask=np.ones((4, 2, 3, 5), dtype=bool)), ShapeError, r"^mask:",
                 id="flash-mask-enlarges"),
    pytest.param(lambda: flash().forward(Q, K, V, mask=np.ones((3, 5), dtype=np.int64)), DTypeError, r"^mask:", id="flash-mask-int"),
    pytest.param(lambda: flash().forward(Q, K, V, mask=with_value(np.zeros((3, 5)), np.nan)), NonFiniteError, r"^mask:",
                 id="flash-mask-nan"),
    pytest.param(lambda: flash().forward(Q, K, V, mask=with_value(np.zeros((3, 5)), np.inf)), NonFiniteError, r"^mask:",
                 id="flash-mask-posinf"),
    pytest.param(lambda: flash().forward(Q, K, V, mask=np.ones((3, 5), dtype=np.complex64)), DTypeError, r"^mask:",
                 id="flash-mask-complex"),
    pytest.param(lambda: flash().forward(Q, K, V, mask=torch.ones(3, 5, dtype=torch.bool)), DTypeError, r"^mask:",
                 id="flash-mask-other-library"),
    # ---- FlashAttention: options
    pytest.param(lambda: flash(block_size=0), ConfigError, r"^block_size:", id="flash-block-size-zero"),
    pytest.param(lambda: flash(block_size=-4), ConfigError, r"^block_size:", id="flash-block-size-negative"),
    pytest.param(lambda: flash(block_size=True), ConfigError, r"^block_size:", id="flash-block-size-bool"),
    pytest.param(lambda: FlashAttention(heads=0), ConfigError, r"^heads:", id="flash-heads-zero"),
    pytest.param(lambda: FlashAttention(heads=-2), ConfigError, r"^heads:", id="flash-heads-negative"),
    pytest.param(lambda: FlashAttention(heads="8"), ConfigError, r"^heads:", id="flash-heads-str"),
    pytest.param(lambda: FlashAttention(heads=2.5), ConfigError, r"^heads:", id="flash-heads-float"),
    pytest.param(lambda: FlashAttention(dim=0), ConfigError, r"^dim:", id="flash-dim-zero"),
    pytest.param(lambda: flash(dropout=1.0), ConfigError, r"^dropout:", id="flash-dropout-one"),
    pytest.param(lambda: flash(dropout=-0.1), ConfigError, r"^dropout:", id="flash-dropout-negative"),
    pytest.param(lambda: flash(dropout="0.1"), ConfigError, r"^dropout:", id="flash-dropout-str"),
    pytest.param(lambda: flash(dropout=True), ConfigError, r"^dropout:", id="flash-dropout-bool"),
    pytest.param(lambda: flash(dropout=float("nan")), ConfigError, r"^dropout:", id="flash-dropout-nan"),
    pytest.param(lambda: flash(scale=0.0), ConfigError, r"^scale:", id="flash-scale-zero"),
    pytest.param(lambda: flash(scale=float("inf")), ConfigError, r"^scale:", id="flash-scale-inf"),
    # ---- MultiHeadAttention / CrossAttention / SelfAttention
    pytest.param(lambda: MultiHeadAttention(8, heads=3), ConfigError, r"^heads:.*model_dim", id="mha-heads-not-dividing"),
    pytest.param(lambda: MultiHeadAttention(0), ConfigError, r"^model_dim:", id="mha-model-dim-zero"),
    pytest.param(lambda: MultiHeadAttention(8.0), ConfigError, r"^model_dim:", id="mha-model-dim-float"),
    pytest.param(lambda: mha(kdim=0), ConfigError, r"^kdim:", id="mha-kdim-zero"),
    pytest.param(lambda: mha(vdim=-3), ConfigError, r"^vdim:", id="mha-vdim-negative"),
    pytest.param(lambda: mha(dropout=1.5), ConfigError, r"^dropout:", id="mha-dropout-above-one"),
    pytest.param(lambda: mha().forward(X[:, :7]), ShapeError, r"^query:", id="mha-query-width"),
    pytest.param(lambda: mha(kdim=6).forward(X, MEM, MEM), ShapeError, r"^key:", id="mha-key-width-kdim"),
    pytest.param(lambda: mha().forward(X, MEM, MEM[:4]), ShapeError, r"^value:", id="mha-value-length"),
    pytest.param(lambda: mha().forward(X, MEM[:0], MEM[:0]), ShapeError, r"^key:.*empty", id="mha-empty-keys"),
    pytest.param(lambda: mha().forward(X, None, MEM), ShapeError, r"^key:", id="mha-value-without-key"),
    pytest.param(lambda: mha().forward(np.zeros(7)), ShapeError, r"^query:.*flat", id="mha-flat-query-length"),
    pytest.param(lambda: mha().forward(np.zeros((2, 3, 8)), np.zeros((3, 5, 8))), ShapeError, r"^query, key, value:.*broadcast",
                 id="mha-batch-no-broadcast"),
    pytest.param(lambda: mha().forward(X, mask=np.ones((3, 4), dtype=bool)), ShapeError, r"^mask:", id="mha-mask-shape"),
    pytest.param(lambda: mha().forward(X, mask=np.ones((3, 3), dtype=np.int32)), DTypeError, r"^mask:", id="mha-mask-int"),
    pytest.param(lambda: mha().forward(X, mask=with_value(np.zeros((3, 3)), np.nan)), NonFiniteError, r"^mask:", id="mha-mask-nan"),
    pytest.param(lambda: mha().get_attention_weights(), AttentionError, r"^get_attention_weights:", id="mha-weights-before-forward"),
    pytest.param(lambda: CrossAttention(8, 0), ConfigError, r"^key_dim:", id="cross-key-dim-zero"),
    pytest.param(lambda: CrossAttention(8, 5, heads=2).forward(X), ShapeError, r"^key:", id="cross-missing-key"),
    pytest.param(lambda: CrossAttention(8, 5, heads=2).forward(X, MEM), ShapeError, r"^key:", id="cross-key-wrong-width"),
    pytest.param(lambda: SelfAttention(8, heads=2).forward(X, X), ConfigError, r"^key:", id="self-given-key"),
    # ---- weights
    pytest.param(lambda: mha().load_weights(mha_weights(**{"k_proj.weight": None})), ConfigError, r"^weights:.*k_proj\.weight.*missing",
                 id="weights-missing-key"),
    pytest.param(lambda: mha().load_weights(mha_weights(**{"k_proj.weight": np.zeros((8, 7), np.float32)})), ShapeError,
                 r"^weights:.*k_proj\.weight", id="weights-wrong-shape"),
    pytest.param(lambda: mha().load_weights(b"\x00garbage bytes that are not safetensors"), ConfigError, r"^weights:",
                 id="weights-garbage-bytes"),
    pytest.param(lambda: mha().load_weights("/nonexistent/w.safetensors"), ConfigError, r"^weights:.*no such file",
                 id="weights-missing-file"),
    pytest.param(lambda: mha().load_weights(12345), ConfigError, r"^weights:", id="weights-wrong-type"),
    pytest.param(lambda: mha().load_weights(mha_weights(**{"v_proj.weight": np.full((8, 8), np.nan, np.float32)})), ConfigError,
                 r"^weights:.*v_proj\.weight", id="weights-nan"),
    pytest.param(lambda: mha().load_weights(mha_weights(**{"out_proj.weight": np.zeros((8, 8), np.int32)})), ConfigError,
                 r"^weights:.*out_proj\.weight", id="weights-int-tensor"),
    pytest.param(lambda: mha(bias=False).load_weights(mha_weights()), ConfigError, r"^weights:.*bias", id="weights-bias-into-no-bias"),
    pytest.param(lambda: mha().load_weights({"foo": np.zeros(3)}), ConfigError, r"^weights:.*layout", id="weights-unknown-layout"),
    # ---- ScaledDotProduct
    pytest.param(lambda: ScaledDotProduct(0), ConfigError, r"^dim:", id="sdp-dim-zero"),
    pytest.param(lambda: sdp(scale=0.0), ConfigError, r"^scale:", id="sdp-scale-zero"),
    pytest.param(lambda: sdp().forward(NQ[:3], NK, NV), ShapeError, r"^query:", id="sdp-query-width"),
    pytest.param(lambda: sdp().forward(NQ, NK[:, :3], NV), ShapeError, r"^key:", id="sdp-keys-width"),
    pytest.param(lambda: sdp().forward(NQ, NK, NV[:5]), ShapeError, r"^value:", id="sdp-values-length"),
    pytest.param(lambda: sdp().forward(NQ), ShapeError, r"^key:", id="sdp-keys-missing"),
    pytest.param(lambda: sdp().forward(NQ, NK[:0], NV[:0]), ShapeError, r"^key:.*empty", id="sdp-empty-keys"),
    pytest.param(lambda: sdp().forward(np.zeros((2, 4)), np.zeros((3, 6, 4)), np.zeros((3, 6, 3))), ShapeError,
                 r"^query, key, value:.*broadcast"),
    pytest.param(lambda: sdp().forward(NQ, NK.ravel(), NV.ravel(), num_neighbors=0), ConfigError, r"^num_neighbors:",
                 id="sdp-num-neighbors-zero"),
    pytest.param(lambda: sdp().forward(NQ, NK.ravel()[:-1], NV.ravel(), num_neighbors=6), ShapeError, r"^key:.*num_neighbors",
                 id="sdp-flat-keys-length"),
    pytest.param(lambda: sdp().forward(NQ, NK.ravel(), NV.ravel()[:-1], num_neighbors=6), ShapeError, r"^value:",
                 id="sdp-flat-values-length"),
    pytest.param(lambda: sdp().forward(NQ, NK, NV, mask=np.ones(5, dtype=bool)), ShapeError, r"^mask:", id="sdp-mask-shape"),
    pytest.param(lambda: sdp().forward(NQ, NK, NV, mask=with_value(np.zeros(6), np.nan)), NonFiniteError, r"^mask:", id="sdp-mask-nan"),
    # ---- create_mask
    pytest.param(lambda: create_mask("diagonal", 4), ConfigError, r"^kind:", id="mask-unknown-kind"),
    pytest.param(lambda: create_mask(3, 4), ConfigError, r"^kind:", id="mask-kind-int"),
    pytest.param(lambda: create_mask("causal", 0), ConfigError, r"^seq_len:", id="mask-seq-len-zero"),
    pytest.param(lambda: create_mask("causal", "4"), ConfigError, r"^seq_len:", id="mask-seq-len-str"),
    pytest.param(lambda: create_mask("padding", 4, positions=[4]), ConfigError, r"^positions:", id="mask-position-out-of-range"),
    pytest.param(lambda: create_mask("padding", 4, positions=[-1]), ConfigError, r"^positions:", id="mask-position-negative"),
    pytest.param(lambda: create_mask("block", 4, positions=[1.5]), ConfigError, r"^positions:", id="mask-position-float"),
    pytest.param(lambda: create_mask("block", 4, positions=[True]), ConfigError, r"^positions:", id="mask-position-bool"),
    pytest.param(lambda: create_mask("causal", 4, positions=[1]), ConfigError, r"^positions:", id="mask-causal-with-positions"),
    # ---- registry
    pytest.param(lambda: registry.create("no_such_attention"), ConfigError, r"^type:.*no_such_attention", id="registry-unknown-name"),
    pytest.param(lambda: registry.create("flash", foo=1), ConfigError, r"^foo:.*unknown option", id="registry-unknown-option"),
    pytest.param(lambda: registry.create("multi_head"), ConfigError, r"^model_dim:.*missing", id="registry-missing-option"),
    pytest.param(lambda: registry.create("flash", heads="many"), ConfigError, r"^heads:", id="registry-uncoercible-option"),
    pytest.param(lambda: registry.create("flash", causal="maybe"), ConfigError, r"^causal:", id="registry-bad-bool-string"),
    # ---- lifecycle, batch, benchmark
    pytest.param(lambda: disposed(flash()).forward(Q, K, V), DisposedError, r"^FlashAttention:.*disposed", id="disposed-flash-forward"),
    pytest.param(lambda: disposed(flash()).attention_scores(Q, K), DisposedError, r"disposed", id="disposed-flash-scores"),
    pytest.param(lambda: disposed(mha()).forward(X), DisposedError, r"^MultiHeadAttention:.*disposed", id="disposed-mha-forward"),
    pytest.param(lambda: disposed(mha()).save_weights(), DisposedError, r"disposed", id="disposed-mha-save"),
    pytest.param(lambda: disposed(mha()).load_weights(mha_weights()), DisposedError, r"disposed", id="disposed-mha-load"),
    pytest.param(lambda: disposed(sdp()).forward(NQ, NK, NV), DisposedError, r"^ScaledDotProduct:.*disposed", id="disposed-sdp-forward"),
    pytest.param(lambda: disposed(sdp()).memory_usage(), DisposedError, r"disposed", id="disposed-memory-usage"),
    pytest.param(lambda: disposed(flash()).benchmark(8), DisposedError, r"disposed", id="disposed-benchmark"),
    pytest.param(lambda: disposed(flash()).forward_batch([Q], K, V), DisposedError, r"disposed", id="disposed-forward-batch"),
    pytest.param(lambda: flash().benchmark(0), ConfigError, r"^seq_len:", id="benchmark-seq-len-zero"),
    pytest.param(lambda: flash().forward_batch(Q, K, V), ShapeError, r"^queries:", id="forward-batch-not-a-list"),
    pytest.param(lambda: flash().forward_batch([Q, Q], [K], [V]), ShapeError, r"^key:.*list of 2", id="forward-batch-keys-length"),
    pytest.param(lambda: flash().forward_batch([Q, Q], K, V, mask=[None, None, None]), ShapeError, r"^mask:", id="forward-batch-masks-length"),
    *_nonfinite_cases(),
    *_dtype_cases(),
    *_linear_cases(),
    *_hyperbolic_cases(),
]


@pytest.mark.parametrize("call,error,pattern", CASES)
def test_bad_input_raises_named_error(call, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        call()
    assert isinstance(info.value, AttentionError)  # one family, and a ValueError too
    assert isinstance(info.value, ValueError)


def test_at_least_sixty_distinct_cases():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 60


def test_dtype_errors_are_type_errors():
    with pytest.raises(TypeError):
        flash().forward(Q.astype(np.int64), K, V)


def test_check_finite_false_skips_the_scan():
    out = FlashAttention(heads=2, dim=4, check_finite=False).forward(with_value(Q, np.nan), K, V)
    assert np.isnan(out).any()  # the caller opted out: no error, NaN propagates

"""Graph attention: GAT v1/v2 with edge features, GraphRoPEAttention, segment softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnkit
from attnkit import ConfigError, DisposedError, DTypeError, NonFiniteError, ShapeError
from attnkit.kernels.segment import segment_max, segment_softmax, segment_sum
from attnkit.mechanisms import registry
from attnkit.mechanisms.graph import EdgeFeaturedAttention, GraphRoPEAttention


def leaky(x, slope):
    return np.where(x >= 0, x, slope * x)


def gat_reference(mech, x, edge_index, edge_attr):
    """float64 GAT / GATv2 written with loops over nodes and their incoming edges."""
    p = {k: v.astype(np.float64) for k, v in mech.parameters().items()}
    h, c, slope = mech.heads, mech.channels, mech.negative_slope
    n = x.shape[0]
    edges = []  # (src, dst, features)
    for e in range(edge_index.shape[1]):
        s, d = int(edge_index[0, e]), int(edge_index[1, e])
        if mech.self_loops and s == d:
            continue
        edges.append((s, d, None if edge_attr is None else edge_attr[e]))
    if mech.self_loops:
        for i in range(n):
            feats = [f for (_, d, f) in edges if d == i]
            fill = None if edge_attr is None else (np.mean(feats, axis=0) if feats else np.zeros(edge_attr.shape[1]))
            edges.append((i, i, fill))
    out = np.zeros((n, h, c))
    for i in range(n):
        inc = [(s, f) for (s, d, f) in edges if d == i]
        if not inc:
            continue
        logits, msgs = [], []
        for s, f in inc:
            ew = (p["lin_edge.weight"] @ f).reshape(h, c) if f is not None else np.zeros((h, c))
            if mech.version == "v1":
                wj = (p["lin.weight"] @ x[s]).reshape(h, c)
                wi = (p["lin.weight"] @ x[i]).reshape(h, c)
                sc = (wj * p["att_src"]).sum(-1) + (wi * p["att_dst"]).sum(-1)
                if f is not None:
                    sc = sc + (ew * p["att_edge"]).sum(-1)
                logits.append(leaky(sc, slope))
            else:
                wj = (p["lin_l.weight"] @ x[s] + p.get("lin_l.bias", 0)).reshape(h, c)
                z = wj + (p["lin_r.weight"] @ x[i] + p.get("lin_r.bias", 0)).reshape(h, c) + ew
                logits.append((leaky(z, slope) * p["att"]).sum(-1))
            msgs.append(wj)
        lg = np.array(logits)  # (deg, H)
        a = np.exp(lg - lg.max(0))
        a /= a.sum(0)
        out[i] = np.einsum("eh,ehc->hc", a, np.array(msgs))
    res = out.reshape(n, h * c) if mech.concat else out.mean(1)
    return res + (p["bias"] if mech.bias else 0)


def graph(rng, n=7, e=14, edge_dim=3):
    ei = rng.integers(0, n, size=(2, e))
    ei[:, 0] = [2, 2]  # an existing self loop
    ei[:, 1] = [0, 3]
    ei[:, 2] = [0, 3]  # a duplicate edge
    ei[1, ei[1] == n - 1] = 0  # node n-1 has no incoming edge
    x = rng.standard_normal((n, 5))
    ea = rng.standard_normal((e, edge_dim)) if edge_dim else None
    return x, ei, ea


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("heads,concat", [(1, True), (3, True), (2, False)])
@pytest.mark.parametrize("self_loops", [True, False])
@pytest.mark.parametrize("edge_dim", [0, 3])
def test_graph_form_matches_loop_reference(version, heads, concat, self_loops, edge_dim) -> None:
    rng = np.random.default_rng(hash((version, heads, self_loops, edge_dim)) % 2**32)
    x, ei, ea = graph(rng, edge_dim=edge_dim)
    mech = EdgeFeaturedAttention(dim=5, edge_dim=edge_dim, heads=heads, out_dim=6, version=version, concat=concat, self_loops=self_loops, seed=3)
    mech.load_weights({k: rng.standard_normal(v.shape) for k, v in mech.parameters().items()})  # non-zero bias too
    out = mech.forward_graph(x, ei, ea)
    np.testing.assert_allclose(out, gat_reference(mech, x, ei, ea), rtol=1e-10, atol=1e-12)
    if not self_loops:  # node 6 has no incoming edge: bias only
        np.testing.assert_allclose(out[6], mech.parameters()["bias"], atol=0)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_neighbour_form_equals_graph_form(version) -> None:
    rng = np.random.default_rng(1)
    x, ei, ea = graph(rng)
    mech = EdgeFeaturedAttention(dim=5, edge_dim=3, heads=2, out_dim=4, version=version)
    full = mech.forward_graph(x, ei, ea)
    for i in range(x.shape[0] - 1):
        idx = np.where((ei[1] == i) & (ei[0] != i))[0]
        if idx.size == 0:
            continue
        np.testing.assert_allclose(mech(x[i], x[ei[0, idx]], edge_features=ea[idx]), full[i], rtol=1e-10, atol=1e-12)
    # padded, batched neighbour lists with a mask give the same rows
    k = 6
    nb = np.zeros((x.shape[0], k, 5))
    ef = np.zeros((x.shape[0], k, 3))
    m = np.zeros((x.shape[0], k), dtype=bool)
    for i in range(x.shape[0]):
        idx = np.where((ei[1] == i) & (ei[0] != i))[0][:k]
        nb[i, : idx.size], ef[i, : idx.size], m[i, : idx.size] = x[ei[0, idx]], ea[idx], True
    batched = mech(x, nb, edge_features=ef, mask=m)
    np.testing.assert_allclose(batched, full, rtol=1e-10, atol=1e-12)


def test_self_loop_option_is_honoured() -> None:
    rng = np.random.default_rng(2)
    x, ei, ea = graph(rng)
    on = EdgeFeaturedAttention(dim=5, edge_dim=3, self_loops=True, seed=1)
    off = EdgeFeaturedAttention(dim=5, edge_dim=3, self_loops=False, seed=1)
    edges_on, a_on = on.graph_attention_weights(x, ei, ea)
    edges_off, a_off = off.graph_attention_weights(x, ei, ea)
    loops_on = edges_on[0] == edges_on[1]
    assert loops_on.sum() == x.shape[0]  # exactly one self loop per node, the input's own loop replaced
    assert (edges_off[0] == edges_off[1]).sum() == (ei[0] == ei[1]).sum() >= 1  # the input's loops kept as given
    for edges, a in ((edges_on, a_on), (edges_off, a_off)):
        sums = np.zeros(x.shape[0])
        np.add.at(sums, edges[1], a[:, 0])
        has_in = np.isin(np.arange(x.shape[0]), edges[1])
        np.testing.assert_allclose(sums[has_in], 1.0, atol=1e-12)
    # the isolated node attends only to itself with self loops: output = W x_i + bias
    p = on.parameters()
    np.testing.assert_allclose(on.forward_graph(x, ei, ea)[6], p["lin.weight"] @ x[6] + p["bias"], rtol=1e-6)
    # neighbour form: with no neighbour left the output is the bias (no loop) or the node's own message
    single = rng.standard_normal(5)
    none_left = np.zeros((1, 5))
    none_left_e = np.zeros((1, 3))
    np.testing.assert_allclose(off(single, none_left, edge_features=none_left_e, mask=np.array([False])), p["bias"], atol=0)
    np.testing.assert_allclose(
        on(single, none_left, edge_features=none_left_e, mask=np.array([False])), p["lin.weight"] @ single + p["bias"], rtol=1e-6
    )


def test_v1_and_v2_differ_and_heads_average() -> None:
    rng = np.random.default_rng(4)
    x, ei, ea = graph(rng)
    a = EdgeFeaturedAttention(dim=5, edge_dim=3, version="v1").forward_graph(x, ei, ea)
    b = EdgeFeaturedAttention(dim=5, edge_dim=3, version="v2").forward_graph(x, ei, ea)
    assert a.shape == b.shape == (7, 5) and np.abs(a - b).max() > 1e-3


def test_torch_in_torch_out_and_autograd() -> None:
    rng = np.random.default_rng(5)
    x, ei, ea = graph(rng)
    mech = EdgeFeaturedAttention(dim=5, edge_dim=3, heads=2, out_dim=4, version="v2")
    tx = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    out = mech.forward_graph(tx, torch.tensor(ei), torch.tensor(ea, dtype=torch.float32))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.detach().numpy(), gat_reference(mech, x, ei, ea), atol=1e-5)
    out.sum().backward()
    assert tx.grad is not None and torch.isfinite(tx.grad).all() and tx.grad.abs().sum() > 0
    nb = mech(torch.tensor(x[0]), torch.tensor(x[1:4]), edge_features=torch.tensor(ea[:3]))
    assert isinstance(nb, torch.Tensor) and nb.dtype == torch.float64
    assert mech.forward_graph(x.astype(np.float32), ei, ea.astype(np.float32)).dtype == np.float32


def test_weights_roundtrip_and_seed() -> None:
    a = EdgeFeaturedAttention(dim=4, edge_dim=2, heads=2, seed=7)
    b = EdgeFeaturedAttention(dim=4, edge_dim=2, heads=2, seed=7)
    c = EdgeFeaturedAttention(dim=4, edge_dim=2, heads=2, seed=8)
    for k, v in a.parameters().items():
        np.testing.assert_array_equal(v, b.parameters()[k])
    assert any(np.abs(v - c.parameters()[k]).max() > 0 for k, v in a.parameters().items())
    c.load_weights(a.save_weights())
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    ei = np.array([[0, 1, 2], [1, 2, 0]])
    ea = np.ones((3, 2), dtype=np.float32)
    np.testing.assert_array_equal(a.forward_graph(x, ei, ea), c.forward_graph(x, ei, ea))
    with pytest.raises(ShapeError, match="lin.weight"):
        c.load_weights({**a.parameters(), "lin.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ConfigError, match="missing"):
        c.load_weights({k: v for k, v in a.parameters().items() if k != "bias"})
    with pytest.raises(ConfigError, match="unexpected"):
        c.load_weights({**a.parameters(), "extra": np.zeros(2, np.float32)})


def test_segment_softmax_numpy_torch_and_edge_cases() -> None:
    rng = np.random.default_rng(6)
    seg = np.array([0, 0, 2, 2, 2, 3, 0])
    s = rng.standard_normal((7, 2)) * 1e4  # huge logits must not overflow
    s[5] = -np.inf  # the only edge of segment 3 is masked -> zeros
    got = segment_softmax(s, seg, 5, attnkit._array.namespace(s))
    for g in (0, 2):
        rows = seg == g
        e = np.exp(s[rows] - s[rows].max(0))
        np.testing.assert_allclose(got[rows], e / e.sum(0), atol=1e-12)
    assert np.all(got[5] == 0) and np.isfinite(got).all()
    tg = segment_softmax(torch.tensor(s), torch.tensor(seg), 5, attnkit._array.namespace(torch.tensor(s)))
    np.testing.assert_allclose(tg.numpy(), got, atol=1e-12)
    xp = attnkit._array.namespace(s)
    np.testing.assert_array_equal(segment_max(s, seg, 5, xp)[1], [-np.inf, -np.inf])  # empty segment
    np.testing.assert_allclose(segment_sum(np.ones(7), seg, 5, xp), [3, 0, 3, 1, 0])


def rope_sdp_reference(q, k, v, qpos, kpos, rope, scale):
    qr = rope.apply(q[None], [qpos])[0]
    kr = rope.apply(k, kpos)
    s = kr @ qr * scale
    a = np.exp(s - s.max())
    return (a / a.sum()) @ v


def test_graph_rope_neighbour_form_and_relative_positions() -> None:
    rng = np.random.default_rng(7)
    mech = GraphRoPEAttention(dim=8, base=100.0)
    rope = attnkit.RotaryEmbedding(8, base=100.0)
    q, k, v = rng.standard_normal(8), rng.standard_normal((5, 8)), rng.standard_normal((5, 3))
    kpos = np.array([1, 2, 2, 3, 7])
    got = mech(q, k, v, query_positions=4, key_positions=kpos)
    np.testing.assert_allclose(got, rope_sdp_reference(q, k, v, 4, kpos, rope, 1 / np.sqrt(8)), atol=1e-12)
    np.testing.assert_allclose(mech(q, k, v, query_positions=104, key_positions=kpos + 100), got, atol=1e-10)
    np.testing.assert_allclose(mech(q, k, v), rope_sdp_reference(q, k, v, 0, np.arange(5), rope, 1 / np.sqrt(8)), atol=1e-12)
    # many queries with their own positions and neighbour sets
    qs, ks, vs = rng.standard_normal((3, 8)), rng.standard_normal((3, 5, 8)), rng.standard_normal((3, 5, 3))
    kp = rng.integers(0, 9, size=(3, 5))
    batch = mech(qs, ks, vs, query_positions=np.array([0, 1, 2]), key_positions=kp)
    for i in range(3):
        np.testing.assert_allclose(batch[i], rope_sdp_reference(qs[i], ks[i], vs[i], i, kp[i], rope, 1 / np.sqrt(8)), atol=1e-12)
    m = np.array([True, False, True, True, False])
    np.testing.assert_allclose(
        mech(q, k, v, mask=m, key_positions=kpos, query_positions=4), rope_sdp_reference(q, k[m], v[m], 4, kpos[m], rope, 1 / np.sqrt(8)), atol=1e-12
    )


@pytest.mark.parametrize("self_loops", [False, True])
def test_graph_rope_graph_form(self_loops) -> None:
    rng = np.random.default_rng(8)
    n = 6
    x, ei, _ = graph(rng, n=n, edge_dim=0)
    q, k, v = rng.standard_normal((n, 4)), rng.standard_normal((n, 4)), rng.standard_normal((n, 2))
    pos = rng.uniform(0, 10, size=n)
    mech = GraphRoPEAttention(dim=4, layout="interleaved", self_loops=self_loops)
    rope = attnkit.RotaryEmbedding(4, layout="interleaved")
    out = mech.forward_graph(q, ei, k, v, positions=pos)
    for i in range(n):
        srcs = [int(s) for s, d in ei.T if d == i and not (self_loops and s == d)] + ([i] if self_loops else [])
        if not srcs:
            np.testing.assert_array_equal(out[i], 0)
            continue
        np.testing.assert_allclose(out[i], rope_sdp_reference(q[i], k[srcs], v[srcs], pos[i], pos[srcs], rope, 0.5), atol=1e-12)
    np.testing.assert_allclose(mech.forward_graph(q, ei, k, v, positions=pos + 50), out, atol=1e-10)
    t = mech.forward_graph(torch.tensor(q), torch.tensor(ei), torch.tensor(k), torch.tensor(v), positions=torch.tensor(pos))
    np.testing.assert_allclose(t.numpy(), out, atol=1e-12)


def test_registry_features_and_sample_inputs() -> None:
    feats = attnkit.supported_features()
    assert "edge_featured" in feats and "graph_rope" in feats
    for name in ("edge_featured", "graph_rope"):
        mech = registry.create(name, dim="8")
        out = mech(*mech.example_inputs(6, np.random.default_rng(0)), **mech.example_extras(6, np.random.default_rng(1)))
        assert out.shape == (6, 8) and out.dtype == np.float32
    assert attnkit.EdgeFeaturedAttention is EdgeFeaturedAttention and attnkit.GraphRoPEAttention is GraphRoPEAttention
    assert EdgeFeaturedAttention(dim=8, edge_dim=0).sample_inputs(3)[1].shape == (3, 8)


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="version"):
        EdgeFeaturedAttention(version="v3")
    with pytest.raises(ConfigError, match="out_dim"):
        EdgeFeaturedAttention(dim=4, heads=3)
    with pytest.raises(ConfigError, match="negative_slope"):
        EdgeFeaturedAttention(negative_slope=-1)
    with pytest.raises(ConfigError, match="edge_dim"):
        EdgeFeaturedAttention(edge_dim=-1)
    mech = EdgeFeaturedAttention(dim=4, edge_dim=2)
    x = np.zeros((3, 4))
    ea = np.zeros((2, 2))
    with pytest.raises(ShapeError, match="edge_index"):
        mech.forward_graph(x, np.array([[0, 5], [1, 2]]), ea)
    with pytest.raises(ShapeError, match="edge_index"):
        mech.forward_graph(x, np.array([[0, -1], [1, 2]]), ea)
    with pytest.raises(ShapeError, match="edge_index"):
        mech.forward_graph(x, np.array([0, 1, 2]), ea)
    with pytest.raises(DTypeError, match="edge_index"):
        mech.forward_graph(x, np.array([[0.0, 1.0], [1.0, 2.0]]), ea)
    with pytest.raises(ShapeError, match="edge_attr"):
        mech.forward_graph(x, np.array([[0, 1], [1, 2]]), None)
    with pytest.raises(ShapeError, match="edge_attr"):
        mech.forward_graph(x, np.array([[0, 1], [1, 2]]), np.zeros((3, 2)))
    with pytest.raises(ShapeError, match="x"):
        mech.forward_graph(np.zeros((3, 5)), np.array([[0, 1], [1, 2]]), ea)
    with pytest.raises(ShapeError, match="key"):
        mech(np.zeros(4))
    with pytest.raises(ShapeError, match="edge_features"):
        mech(np.zeros(4), np.zeros((2, 4)))
    with pytest.raises(ShapeError, match="edge_features"):
        mech(np.zeros(4), np.zeros((2, 4)), edge_features=np.zeros((3, 2)))
    with pytest.raises(ShapeError, match="query"):
        mech(np.zeros(5), np.zeros((2, 4)), edge_features=ea)
    with pytest.raises(ShapeError, match="mask"):
        mech(np.zeros(4), np.zeros((2, 4)), edge_features=ea, mask=np.ones(3, dtype=bool))
    with pytest.raises(NonFiniteError, match="key"):
        mech(np.zeros(4), np.full((2, 4), np.nan), edge_features=ea)
    with pytest.raises(TypeError, match="query"):
        mech(np.zeros(4, dtype=np.int64), np.zeros((2, 4)), edge_features=ea)
    g = GraphRoPEAttention(dim=4)
    with pytest.raises(ConfigError, match="dim"):
        GraphRoPEAttention(dim=5)
    with pytest.raises(ShapeError, match="key"):
        g(np.zeros(4))
    with pytest.raises(ShapeError, match="query"):
        g(np.zeros(3), np.zeros((2, 4)))
    with pytest.raises(ShapeError, match="positions"):
        g.forward_graph(np.zeros((3, 4)), np.array([[0], [1]]), positions=[0, 1])
    with pytest.raises(NonFiniteError, match="key"):
        g(np.zeros(4), np.full((2, 4), np.inf))
    mech.dispose()
    with pytest.raises(DisposedError):
        mech.forward_graph(x, np.array([[0, 1], [1, 2]]), ea)

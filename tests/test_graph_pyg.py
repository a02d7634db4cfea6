"""EdgeFeaturedAttention against PyTorch Geometric's GATConv / GATv2Conv, option by option.

Each case builds a PyG layer (float64), loads its ``state_dict()`` into attnkit as it is (``att_*`` of
shape (1, H, C)) and compares outputs, attention weights (with the edge list PyG returns) and the
gradients of a loss with respect to the node and edge features (torch inputs through attnkit). The
reverse direction loads attnkit's own (seeded, bias made non-zero) parameters into a fresh PyG layer
through ``attnkit.weights.to_pyg_gat`` and compares again.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnkit import ConfigError
from attnkit.mechanisms.graph import EdgeFeaturedAttention
from attnkit.weights import from_pyg_gat, to_pyg_gat

torch = pytest.importorskip("torch")
pyg = pytest.importorskip("torch_geometric")
from torch_geometric.nn import GATConv, GATv2Conv  # noqa: E402

# (name, options): version, heads, concat, edge_dim (None | int | "1d"), fill_value, self_loops, bipartite,
# residual, bias, share_weights
BASE = dict(
    version="v1",
    heads=2,
    concat=True,
    edge_dim=3,
    fill_value="mean",
    self_loops=True,
    bipartite=False,
    residual=False,
    bias=True,
    share_weights=False,
    slope=0.2,
)
CASES = {
    "v1": {},
    "v2": dict(version="v2"),
    "v1-no-edges": dict(edge_dim=None),
    "v2-no-edges-mean-heads": dict(version="v2", edge_dim=None, heads=3, concat=False),
    "v1-fill-constant": dict(fill_value=0.5),
    "v2-fill-constant": dict(version="v2", fill_value=-1.25),
    "v1-fill-add": dict(fill_value="add"),
    "v2-fill-max": dict(version="v2", fill_value="max"),
    "v1-fill-min": dict(fill_value="min"),
    "v1-edge-weights-1d": dict(edge_dim="1d"),
    "v2-edge-weights-1d": dict(version="v2", edge_dim="1d", fill_value=1.0),
    "v1-no-self-loops": dict(self_loops=False),
    "v2-no-self-loops": dict(version="v2", self_loops=False),
    "v1-bipartite": dict(bipartite=True),
    "v2-bipartite": dict(version="v2", bipartite=True),
    # more targets than sources: PyG adds loops for i < min(N_src, N_dst) (its "mean" fill cannot index
    # targets past that, so a constant fill)
    "v1-bipartite-more-targets": dict(bipartite="wide", fill_value=0.5),
    # a pair (x_src, x_dst) of one width and different sizes: PyG's int in_channels, one shared lin
    "v1-pair-one-width": dict(bipartite="shared"),
    "v2-pair-one-width-residual": dict(version="v2", bipartite="shared", residual=True),
    "v1-residual": dict(residual=True),
    "v2-residual-mean-heads": dict(version="v2", residual=True, concat=False, heads=3),
    "v2-bipartite-residual-no-loops": dict(version="v2", bipartite=True, residual=True, self_loops=False),
    "v1-no-bias": dict(bias=False),
    "v2-no-bias": dict(version="v2", bias=False),
    "v2-share-weights": dict(version="v2", share_weights=True),
    "v1-slope": dict(slope=0.05),
}
C = 4  # channels per head
F_SRC, F_DST = 5, 6


def build(case: dict):
    o = {**BASE, **case}
    edge_dim = 1 if o["edge_dim"] == "1d" else o["edge_dim"]
    bip = o["bipartite"] not in (False, "shared")
    in_ch = (F_SRC, F_DST) if bip else F_SRC
    cls = GATConv if o["version"] == "v1" else GATv2Conv
    kw = dict(
        heads=o["heads"],
        concat=o["concat"],
        negative_slope=o["slope"],
        add_self_loops=o["self_loops"],
        edge_dim=edge_dim,
        fill_value=o["fill_value"],
        bias=o["bias"],
        residual=o["residual"],
    )
    if o["version"] == "v2":
        kw["share_weights"] = o["share_weights"]
    torch.manual_seed(0)
    layer = cls(in_ch, C, **kw).double()
    with torch.no_grad():  # non-zero biases, so they are checked too
        for name, prm in layer.named_parameters():
            if name.endswith("bias"):
                prm.normal_()
    ours = EdgeFeaturedAttention(
        dim=F_SRC,
        dst_dim=F_DST if bip else None,
        edge_dim=edge_dim or 0,
        heads=o["heads"],
        out_dim=o["heads"] * C if o["concat"] else C,
        version=o["version"],
        negative_slope=o["slope"],
        self_loops=o["self_loops"],
        fill_value=o["fill_value"],
        concat=o["concat"],
        bias=o["bias"],
        residual=o["residual"],
        share_weights=o["share_weights"],
    )
    return o, layer, ours


def inputs(o: dict, rng: np.random.Generator):
    ns = 7
    nd = {False: 7, True: 4, "wide": 9, "shared": 4}[o["bipartite"]]
    e = 16
    ei = np.stack([rng.integers(0, ns, e), rng.integers(0, nd, e)])
    if not o["bipartite"]:
        ei[:, 0] = [2, 2]  # an existing self loop (dropped and replaced when self loops are added)
    ei[:, 1] = ei[:, 2] = [0, 3]  # a duplicate edge
    ei[1, ei[1] == nd - 1] = 0  # the last target has no incoming edge
    xs = torch.tensor(rng.standard_normal((ns, F_SRC)), requires_grad=True)
    xd = torch.tensor(rng.standard_normal((nd, F_DST if o["bipartite"] not in (False, "shared") else F_SRC)), requires_grad=True)
    if o["edge_dim"] is None:
        ea = None
    elif o["edge_dim"] == "1d":
        ea = torch.tensor(rng.uniform(0.1, 2.0, e), requires_grad=True)
    else:
        ea = torch.tensor(rng.standard_normal((e, o["edge_dim"])), requires_grad=True)
    return xs, xd, torch.as_tensor(ei), ea


def run_both(o, layer, ours, rng):
    xs, xd, ei, ea = inputs(o, rng)
    x = (xs, xd) if o["bipartite"] else xs
    ref, (ref_ei, ref_alpha) = layer(x, ei, ea, return_attention_weights=True)
    x2 = tuple(t.detach().clone().requires_grad_(True) for t in (xs, xd))
    ea2 = None if ea is None else ea.detach().clone().requires_grad_(True)
    out = ours.forward_graph(x2 if o["bipartite"] else x2[0], ei, ea2)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    edges, alpha = ours.graph_attention_weights(x2 if o["bipartite"] else x2[0], ei, ea2)
    np.testing.assert_array_equal(edges, ref_ei.numpy())
    torch.testing.assert_close(alpha, ref_alpha, rtol=1e-10, atol=1e-12)
    # gradients of the same loss through both
    w = torch.as_tensor(rng.standard_normal(tuple(ref.shape)))
    (ref * w).sum().backward()
    (out * w).sum().backward()
    torch.testing.assert_close(x2[0].grad, xs.grad, rtol=1e-9, atol=1e-11)
    if o["bipartite"]:
        torch.testing.assert_close(x2[1].grad, xd.grad, rtol=1e-9, atol=1e-11)
    if ea is not None:
        torch.testing.assert_close(ea2.grad, ea.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_pyg_with_pyg_weights(name):
    o, layer, ours = build(CASES[name])
    ours.load_weights(layer.state_dict())  # PyG's state dict as it is
    run_both(o, layer, ours, np.random.default_rng(abs(hash(name)) % 2**32))


@pytest.mark.parametrize("name", ["v1", "v2", "v1-bipartite", "v2-residual-mean-heads", "v2-share-weights", "v2-no-bias"])
def test_attnkit_weights_load_into_pyg(name):
    o, layer, ours = build(CASES[name])
    rng = np.random.default_rng(11)
    ours.load_weights({k: rng.standard_normal(v.shape) for k, v in ours.parameters().items()})
    sd = ours.pyg_state_dict()
    assert sd.keys() == layer.state_dict().keys()
    layer.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()})
    run_both(o, layer, ours, rng)
    # and the free functions, both ways
    back = from_pyg_gat({k: torch.as_tensor(v) for k, v in to_pyg_gat(ours.parameters()).items()})
    for k, v in ours.parameters().items():
        np.testing.assert_array_equal(back[k], v)


def test_state_dict_errors():
    _, layer, ours = build(CASES["v2-share-weights"])
    sd = {k: v.clone() for k, v in layer.state_dict().items()}
    sd["lin_r.weight"] += 1.0
    with pytest.raises(ConfigError, match="lin_r.weight differs"):
        ours.load_weights(sd)
    with pytest.raises(ConfigError, match="not a GATConv"):
        from_pyg_gat({"lin.weight": np.zeros((2, 2))})
    with pytest.raises(ConfigError, match="unexpected tensor 'foo'"):
        from_pyg_gat({"att_src": np.zeros((1, 2, 2)), "foo": np.zeros(2)})
    _, layer, ours = build(CASES["v1"])
    sd = dict(layer.state_dict())
    sd["att_src"] = torch.zeros(2, 2, C, dtype=torch.float64)
    with pytest.raises(Exception, match="att_src"):
        ours.load_weights(sd)


def test_dim_pair_is_dim_and_dst_dim():
    a = EdgeFeaturedAttention(dim=(5, 6), edge_dim=2, heads=2, out_dim=4, self_loops=False)
    b = EdgeFeaturedAttention(dim=5, dst_dim=6, edge_dim=2, heads=2, out_dim=4, self_loops=False)
    assert a.param_shapes() == b.param_shapes() and "lin_src.weight" in a.param_shapes()
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 5)), rng.standard_normal((3, 6)))
    ei, ea = np.array([[0, 1, 3], [2, 0, 2]]), rng.standard_normal((3, 2))
    np.testing.assert_array_equal(a.forward_graph(x, ei, ea), b.forward_graph(x, ei, ea))


def test_bad_options():
    with pytest.raises(ConfigError, match="fill_value"):
        EdgeFeaturedAttention(dim=4, edge_dim=3, fill_value="median")
    with pytest.raises(ConfigError, match="fill_value"):
        EdgeFeaturedAttention(dim=4, edge_dim=3, fill_value=[1.0, 2.0])
    with pytest.raises(ConfigError, match="share_weights"):
        EdgeFeaturedAttention(dim=4, edge_dim=3, version="v1", share_weights=True)
    m = EdgeFeaturedAttention(dim=4, dst_dim=5, edge_dim=0)
    with pytest.raises(Exception, match="x_src, x_dst|pair"):
        m.forward_graph(np.zeros((3, 4)), np.zeros((2, 0), dtype=np.int64))
    with pytest.raises(Exception, match="target indices"):
        m.forward_graph((np.zeros((3, 4)), np.zeros((2, 5))), np.array([[0], [2]]))


@pytest.mark.parametrize("fill", ["mean", "add", "max", "min", 0.75, "vector"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_neighbour_form_equals_graph_form_for_every_fill(fill, version):
    """The neighbour form (each target with its own k sources, a mask dropping some) computes what the
    graph form computes on the same edges, self loops and their fill_value included."""
    rng = np.random.default_rng(21)
    n, k, fdim = 5, 3, 2
    fill_value = rng.standard_normal(fdim) if fill == "vector" else fill
    mech = EdgeFeaturedAttention(dim=4, edge_dim=fdim, heads=2, out_dim=6, version=version, fill_value=fill_value, residual=True)
    mech.load_weights({key: rng.standard_normal(v.shape) for key, v in mech.parameters().items()})
    x = rng.standard_normal((n, 4))
    srcs = np.stack([rng.choice([j for j in range(n) if j != i], size=k, replace=False) for i in range(n)])
    ef = rng.standard_normal((n, k, fdim))
    mask = np.ones((n, k), dtype=bool)
    mask[0, 1] = mask[3, :] = False  # node 3 keeps only its self loop
    keep = mask.reshape(-1)
    ei = np.stack([srcs.reshape(-1), np.repeat(np.arange(n), k)])[:, keep]
    graph_out = mech.forward_graph(x, ei, ef.reshape(-1, fdim)[keep])
    neigh_out = mech.forward(x, x[srcs], edge_features=ef, mask=mask)
    np.testing.assert_allclose(neigh_out, graph_out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["v1-bipartite", "v2-residual-mean-heads"])
def test_float32_matches_pyg_float32(name):
    o, layer, ours = build(CASES[name])
    layer = layer.float()
    ours.load_weights(layer.state_dict())
    xs, xd, ei, ea = inputs(o, np.random.default_rng(5))
    xs, xd = xs.detach().float(), xd.detach().float()
    ea = None if ea is None else ea.detach().float()
    x = (xs, xd) if o["bipartite"] else xs
    out = ours.forward_graph(x, ei, ea)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, layer(x, ei, ea), rtol=1e-5, atol=1e-5)

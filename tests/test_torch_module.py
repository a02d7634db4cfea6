"""``attnkit.torch.AttentionModule``: attnkit mechanisms trained by torch.

Oracles: ``torch.nn.MultiheadAttention`` itself (step-for-step SGD parity from the same weights),
central finite differences in float64 (every parameter's gradient from ``functional_call``), and each
mechanism's own NumPy ``forward`` (the module and ``functional_call`` compute the same function).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import attnkit  # noqa: E402
from attnkit import weights as aw  # noqa: E402
from attnkit.errors import ConfigError  # noqa: E402
from attnkit.mechanisms import registry  # noqa: E402
from attnkit.torch import AttentionModule  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():  # type: ignore[no-untyped-def]
    """These tensors are tiny: torch's thread pool only adds waits on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _build(name: str, **overrides: object) -> attnkit.Mechanism:
    cls = registry.get(name)
    return cls(**{**cls.example_options, **overrides})


def _torch_inputs(xs: object, dtype: torch.dtype | None = None) -> object:
    if isinstance(xs, np.ndarray):
        t = torch.from_numpy(np.array(xs))
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t
    if isinstance(xs, tuple):
        return tuple(_torch_inputs(x, dtype) for x in xs)
    if isinstance(xs, dict):
        return {k: _torch_inputs(v, dtype) for k, v in xs.items()}
    return xs


# ---------------------------------------------------------------------------- structure
def test_import_attnkit_does_not_import_torch() -> None:
    code = (
        "import sys, attnkit; attnkit.MultiHeadAttention; assert 'torch' not in sys.modules; "
        "m = attnkit.torch; assert 'torch' in sys.modules; print(m.AttentionModule.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "AttentionModule"


@pytest.mark.parametrize("name", registry.names())
def test_state_dict_keys_equal_parameter_names(name: str) -> None:
    mech = _build(name)
    module = AttentionModule(mech)
    params = mech.parameters()
    assert sorted(module.state_dict()) == sorted(params)
    assert sorted(n for n, _ in module.named_parameters()) == sorted(params)
    for k, v in module.state_dict().items():
        assert v.dtype == torch.from_numpy(params[k]).dtype
        np.testing.assert_array_equal(v.numpy(), params[k])
    # a state dict round-trips through load_state_dict (strict: names must match exactly)
    module.load_state_dict({k: v * 0 + 1 for k, v in module.state_dict().items()})
    assert all(bool((p == 1).all()) for p in module.parameters())


def test_parameters_are_copies_and_mechanism_carries_them_back() -> None:
    mech = _build("multi_head")
    before = {k: v.copy() for k, v in mech.parameters().items()}
    module = AttentionModule(mech)
    with torch.no_grad():
        module.get_parameter("q_proj.weight").add_(1.0)
    np.testing.assert_array_equal(mech.parameters()["q_proj.weight"], before["q_proj.weight"])  # own storage untouched
    back = module.mechanism
    assert back is mech
    np.testing.assert_allclose(back.parameters()["q_proj.weight"], before["q_proj.weight"] + 1.0, rtol=0, atol=1e-6)


def test_rejects_non_mechanisms_and_disposed() -> None:
    with pytest.raises(ConfigError, match="mechanism: expected an attnkit mechanism"):
        AttentionModule(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    mech = _build("multi_head")
    mech.dispose()
    with pytest.raises(attnkit.DisposedError):
        AttentionModule(mech)


def test_to_dtype_and_device() -> None:
    mech = _build("multi_head")
    (x,) = mech.example_inputs(rng=np.random.default_rng(0))
    ref = mech.forward(x.astype(np.float64))
    module = AttentionModule(mech).to("cpu", torch.float64)
    assert all(p.dtype == torch.float64 for p in module.parameters())
    out = module(torch.from_numpy(x).double())
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-6, atol=1e-6)
    assert all(v.dtype == np.float64 for v in module.mechanism.parameters().values())
    module.to(torch.float32)
    assert all(p.dtype == torch.float32 for p in module.parameters())


def test_bfloat16_module_trains_and_comes_back_as_float32() -> None:
    mech = _build("multi_head")
    (x,) = mech.example_inputs(rng=np.random.default_rng(0))
    ref = mech.forward(x)
    module = AttentionModule(mech).to(torch.bfloat16)
    out = module(torch.from_numpy(x).bfloat16())
    assert out.dtype == torch.bfloat16
    np.testing.assert_allclose(out.detach().float().numpy(), ref, rtol=0, atol=2e-2 * max(1.0, float(np.abs(ref).max())))
    out.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in module.parameters())
    back = module.mechanism.parameters()
    assert all(v.dtype == np.float32 for v in back.values())
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(back[k], v.float().numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_trains_there() -> None:
    mech = _build("multi_head")
    module = AttentionModule(mech).to("cuda", torch.float32)
    (x,) = mech.example_inputs(rng=np.random.default_rng(0))
    xt = torch.from_numpy(x).cuda()
    out = module(xt)
    assert out.device.type == "cuda"
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in module.parameters())
    np.testing.assert_allclose(out.detach().cpu().numpy(), module.mechanism.forward(x), rtol=1e-4, atol=1e-5)


def test_train_eval_switches_the_mechanism() -> None:
    mech = _build("multi_head", dropout=0.5)
    module = AttentionModule(mech)
    assert module.training and mech.training
    module.eval()
    assert not mech.training
    (x,) = mech.example_inputs(rng=np.random.default_rng(0))
    xt = torch.from_numpy(x)
    torch.testing.assert_close(module(xt), module(xt))  # no dropout in eval mode


# ---------------------------------------------------------------------------- training parity with torch
def test_sgd_steps_match_torch_multihead_attention() -> None:
    torch.manual_seed(0)
    e, h = 8, 2
    ref = torch.nn.MultiheadAttention(e, h, batch_first=True, dtype=torch.float64)
    with torch.no_grad():  # torch zero-initialises the biases; make them matter
        for name, p in ref.named_parameters():
            if "bias" in name:
                p.normal_(0.0, 0.1)
    mech = attnkit.MultiHeadAttention(model_dim=e, heads=h)
    mech.load_weights({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    module = AttentionModule(mech).double()

    gen = torch.Generator().manual_seed(1)
    xq = torch.randn(4, 5, e, generator=gen, dtype=torch.float64)
    xkv = torch.randn(4, 7, e, generator=gen, dtype=torch.float64)
    target = torch.randn(4, 5, e, generator=gen, dtype=torch.float64)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        opt_ref.zero_grad()
        loss_ref = torch.nn.functional.mse_loss(ref(xq, xkv, xkv, need_weights=False)[0], target)
        loss_ref.backward()
        opt_ref.step()
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(module(xq, xkv, xkv), target)
        loss.backward()
        opt.step()
        assert abs(loss.item() - loss_ref.item()) <= 1e-5, (len(losses), loss.item(), loss_ref.item())
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]  # it did train
    trained = aw.to_torch_mha(module.mechanism.parameters())
    ref_state = ref.state_dict()
    assert sorted(trained) == sorted(ref_state)
    for k, v in ref_state.items():
        np.testing.assert_allclose(trained[k], v.numpy(), rtol=0, atol=1e-8, err_msg=k)


def test_adam_trains_and_mechanism_matches_module() -> None:
    mech = _build("self", model_dim=8, heads=2)
    module = AttentionModule(mech)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 8, generator=gen)
    target = torch.tanh(x.flip(1))  # a fixed function of the sequence to fit
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    first = last = None
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(module(x), target)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < 0.7 * first, (first, last)
    with torch.no_grad():
        out = module(x).numpy()
    np.testing.assert_allclose(module.mechanism.forward(x.numpy()), out, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- every registered mechanism
def _loss_fn(mech: attnkit.Mechanism, inputs: tuple, extras: dict, w: torch.Tensor):  # type: ignore[no-untyped-def]
    def loss(params: dict) -> torch.Tensor:
        return (attnkit.functional_call(mech, params, *inputs, **extras) * w).sum()

    return loss


@pytest.mark.parametrize("name", registry.names())
def test_functional_call_matches_numpy_and_gradients_match_finite_differences(name: str) -> None:
    mech = _build(name)
    mech.eval()
    inputs = mech.example_inputs(rng=np.random.default_rng(0))
    extras = mech.example_extras(rng=np.random.default_rng(1))
    ref = np.asarray(mech.forward(*inputs, **extras))

    # float32: the module's output equals the mechanism's NumPy forward
    module = AttentionModule(mech).eval()
    out32 = module(*_torch_inputs(inputs), **_torch_inputs(extras))
    assert isinstance(out32, torch.Tensor) and out32.dtype == torch.float32
    np.testing.assert_allclose(out32.detach().numpy(), ref, rtol=1e-5, atol=1e-5)

    # float64 gradients w.r.t. every parameter and the query: autograd == central finite differences
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in mech.parameters().items()}
    t_in = _torch_inputs(inputs, torch.float64)
    t_ex = _torch_inputs(extras, torch.float64)
    query = t_in[0].clone().requires_grad_(True)
    t_in = (query, *t_in[1:])
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    loss = _loss_fn(mech, t_in, t_ex, w)
    value = loss(params)
    value.backward()
    gen = torch.Generator().manual_seed(3)
    eps = 1e-6
    influential = 0
    for k, p in [*params.items(), ("query", query)]:
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            if k == "query":
                plus = _loss_fn(mech, (query + eps * d, *t_in[1:]), t_ex, w)(params)
                minus = _loss_fn(mech, (query - eps * d, *t_in[1:]), t_ex, w)(params)
            else:
                plus = loss({**params, k: p + eps * d})
                minus = loss({**params, k: p - eps * d})
        fd = float((plus - minus) / (2 * eps))
        grad = torch.zeros_like(p) if p.grad is None else p.grad
        assert torch.isfinite(grad).all(), k
        analytic = float((grad * d).sum())
        assert abs(analytic - fd) <= 1e-5 * max(1.0, abs(fd)), (k, analytic, fd)
        if abs(fd) > 1e-6:  # the parameter influences the output: the gradient reached it
            assert p.grad is not None and float(grad.abs().sum()) > 0, k
            influential += 1
    assert influential >= 1


def test_moe_router_gets_gradients_through_the_gates() -> None:
    mech = _build("moe", top_k=2)  # with two experts per query the renormalised gates depend on the router
    module = AttentionModule(mech)
    inputs = _torch_inputs(mech.example_inputs(rng=np.random.default_rng(0)))
    module(*inputs).square().sum().backward()
    for name in ("router.weight", "router.bias"):
        g = module.get_parameter(name).grad
        assert g is not None and torch.isfinite(g).all() and float(g.abs().sum()) > 0, name


# ---------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("name", ["flash", "multi_head", "linear"])
def test_torch_compile_fullgraph_matches_eager(name: str) -> None:
    mech = _build(name)
    module = AttentionModule(mech).eval()
    inputs = _torch_inputs(mech.example_inputs(seq_len=4, rng=np.random.default_rng(0)))
    eager = module(*inputs)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    got = compiled(*inputs)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    if any(True for _ in module.parameters()):  # gradients flow through the compiled module too
        got.square().sum().backward()
        assert all(p.grad is not None for p in module.parameters())


@pytest.mark.parametrize(
    ("name", "options", "mask"),
    [
        ("flash", {"causal": True}, [[True, False, True, True]] * 4),  # mask + causal: a fully hidden row
        ("linear", {"causal": True}, [True, True, False, True]),  # causal linear with a key mask
        ("multi_head", {}, np.tril(np.ones((4, 4), dtype=bool))),
    ],
)
def test_torch_compile_fullgraph_with_masks_and_causal(name: str, options: dict, mask: object) -> None:
    # dynamo tracing only (backend="eager"): what attnkit controls is that the graph has no data-dependent branch
    mech = _build(name, **options)
    module = AttentionModule(mech).eval()
    inputs = _torch_inputs(mech.example_inputs(seq_len=4, rng=np.random.default_rng(0)))
    m = torch.tensor(np.asarray(mask))
    eager = module(*inputs, mask=m)
    torch._dynamo.reset()
    got = torch.compile(module, fullgraph=True, backend="eager")(*inputs, mask=m)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eager.detach().numpy(), mech.forward(*(x.numpy() for x in inputs), mask=np.asarray(mask)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "shapes",
    [(), ((2, 3), (3,)), ((1, 0), (5, 1)), ((2, 1, 4), (3, 1)), ((2,), (3,)), ((0,), (1,)), ((3, 0), (3, 1)), ((4, 1), (1, 5), (1,))],
)
def test_broadcast_shapes_is_numpys(shapes: tuple) -> None:
    from attnkit._array import broadcast_shapes

    try:
        expected: object = np.broadcast_shapes(*shapes)
    except ValueError:
        with pytest.raises(ValueError):
            broadcast_shapes(*shapes)
        return
    assert broadcast_shapes(*shapes) == expected


@pytest.mark.parametrize("name", ["multi_head", "moe"])
def test_deepcopy_and_pickle_after_a_backward(name: str) -> None:
    import copy
    import io

    mech = _build(name)
    module = AttentionModule(mech).eval()
    inputs = _torch_inputs(mech.example_inputs(rng=np.random.default_rng(0)))
    module(*inputs).square().sum().backward()  # leaves graph tensors in the mechanism's caches
    twin = copy.deepcopy(module)
    assert twin.mechanism is not mech
    with torch.no_grad():
        twin.get_parameter(next(iter(twin.state_dict()))).add_(1.0)  # the copy owns its parameters
    assert not torch.equal(twin.state_dict()[next(iter(twin.state_dict()))], module.state_dict()[next(iter(module.state_dict()))])
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(loaded(*inputs), module(*inputs))

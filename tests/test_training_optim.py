"""SGD, Adam, AdamW: hand-computed steps and agreement with torch.optim on the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnkit import ConfigError, DTypeError, NonFiniteError, ShapeError
from attnkit.training import SGD, Adam, AdamW, WarmupCosineScheduler


def one(opt, p0: float, grads: list[float]) -> list[float]:
    p = np.array([p0])
    out = []
    for g in grads:
        opt.step({"w": p}, {"w": np.array([g])})
        out.append(float(p[0]))
    return out


def test_sgd_by_hand() -> None:
    assert one(SGD(lr=0.1), 1.0, [0.5, 0.5]) == pytest.approx([0.95, 0.90], abs=1e-15)
    # momentum 0.9: b1 = 0.5 -> 0.95; b2 = 0.9*0.5 + 0.5 = 0.95 -> 0.95 - 0.095 = 0.855
    assert one(SGD(lr=0.1, momentum=0.9), 1.0, [0.5, 0.5]) == pytest.approx([0.95, 0.855], abs=1e-15)
    # nesterov: g + mu*b: step 1: 0.5 + 0.45 = 0.95 -> 0.905; step 2: b = 0.95, g = 0.5 + 0.855 -> 0.905 - 0.1355
    assert one(SGD(lr=0.1, momentum=0.9, nesterov=True), 1.0, [0.5, 0.5]) == pytest.approx([0.905, 0.7695], abs=1e-15)
    # weight decay 0.1: g = 0.5 + 0.1 * 1.0 = 0.6 -> 0.94
    assert one(SGD(lr=0.1, weight_decay=0.1), 1.0, [0.5]) == pytest.approx([0.94], abs=1e-15)


def test_adam_and_adamw_by_hand() -> None:
    # first Adam step: m_hat = g, v_hat = g^2 -> p - lr * g / (|g| + eps)
    assert one(Adam(lr=0.1), 1.0, [0.5]) == pytest.approx([1.0 - 0.1 * 0.5 / (0.5 + 1e-8)], abs=1e-15)
    # second step with g2 = -0.25: m = 0.9*0.05 - 0.025 = 0.02, v = 0.999*0.00025 + 0.001*0.0625
    m, v = 0.02, 0.999 * 0.00025 + 0.001 * 0.0625
    p2 = 1.0 - 0.1 * 0.5 / (0.5 + 1e-8) - (0.1 / (1 - 0.81)) * m / (np.sqrt(v) / np.sqrt(1 - 0.999**2) + 1e-8)
    assert one(Adam(lr=0.1), 1.0, [0.5, -0.25])[1] == pytest.approx(p2, abs=1e-14)
    # AdamW decays the weight first: 1.0 * (1 - 0.1 * 0.1) = 0.99, then the Adam step
    assert one(AdamW(lr=0.1, weight_decay=0.1), 1.0, [0.5]) == pytest.approx([0.99 - 0.1 * 0.5 / (0.5 + 1e-8)], abs=1e-15)
    # Adam's weight decay is L2 in the gradient: the first step's size is still lr
    assert one(Adam(lr=0.1, weight_decay=0.1), 1.0, [0.5]) == pytest.approx([1.0 - 0.1 * 0.6 / (0.6 + 1e-8)], abs=1e-15)


CONFIGS = [
    (SGD, torch.optim.SGD, dict(lr=0.05)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=0.1)),
    (Adam, torch.optim.Adam, dict(lr=0.01)),
    (Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)),
    (Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    (AdamW, torch.optim.AdamW, dict(lr=0.01)),
    (AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.2, amsgrad=True)),
]


@pytest.mark.parametrize("ours,theirs,kw", CONFIGS)
def test_matches_torch_optim(ours, theirs, kw) -> None:
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = ours(**kw)
    topt = theirs(list(tparams.values()), **kw)
    for _ in range(6):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
        opt.step(params, grads)
    for k in params:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)


def test_list_and_array_params_in_place_and_state() -> None:
    w = np.ones(3)
    b = np.zeros(2)
    opt = Adam(lr=0.1)
    out = opt.step([w, b], [np.ones(3), np.ones(2)])
    assert out[0] is w and np.all(w < 1) and np.all(b < 0)
    single = np.ones(2, dtype=np.float32)
    SGD(lr=0.5).step(single, np.ones(2))
    np.testing.assert_array_equal(single, [0.5, 0.5])
    state = opt.state_dict()
    other = Adam(lr=0.1)
    other.load_state_dict(state)
    w2, b2 = w.copy(), b.copy()
    opt.step([w, b], [np.ones(3), np.ones(2)])
    other.step([w2, b2], [np.ones(3), np.ones(2)])
    np.testing.assert_array_equal(w, w2)
    opt.reset()
    assert opt.step_count == 0 and opt.state == {}


def test_scheduler_drives_optimizer_lr() -> None:
    opt = SGD(lr=1.0)
    sched = WarmupCosineScheduler(base_lr=0.1, warmup_steps=2, total_steps=4, optimizer=opt)
    assert opt.lr == 0.0
    p = np.array([1.0])
    seen = []
    for _ in range(4):
        sched.step()
        seen.append(opt.lr)
        opt.step({"p": p}, {"p": np.array([1.0])})
    assert seen == pytest.approx([0.05, 0.1, 0.05, 0.0], abs=1e-15)
    assert p[0] == pytest.approx(1.0 - 0.2, abs=1e-15)


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="lr"):
        SGD(lr=-1)
    with pytest.raises(ConfigError, match="nesterov"):
        SGD(nesterov=True)
    with pytest.raises(ConfigError, match="betas"):
        Adam(betas=(0.9, 1.0))
    with pytest.raises(ConfigError, match="betas"):
        Adam(betas=0.9)
    with pytest.raises(ConfigError, match="eps"):
        Adam(eps=0)
    with pytest.raises(ConfigError, match="weight_decay"):
        AdamW(weight_decay=-0.1)
    opt = SGD()
    with pytest.raises(ShapeError, match="grads"):
        opt.step({"w": np.ones(3)}, {"w": np.ones(2)})
    with pytest.raises(ShapeError, match="grads"):
        opt.step({"w": np.ones(3)}, {"v": np.ones(3)})
    with pytest.raises(NonFiniteError, match="grads"):
        opt.step({"w": np.ones(3)}, {"w": np.array([1.0, np.inf, 0.0])})
    with pytest.raises(DTypeError, match="params"):
        opt.step({"w": np.ones(3, dtype=np.int64)}, {"w": np.ones(3)})
    with pytest.raises(DTypeError, match="params"):
        opt.step("w", "g")
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ConfigError, match="read-only"):
        opt.step([ro], [np.ones(3)])

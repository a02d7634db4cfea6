"""Warmup-cosine LR, temperature annealing and curriculum: curves at known steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnkit import ConfigError, ShapeError
from attnkit.training import CurriculumScheduler, InfoNCELoss, TemperatureScheduler, WarmupCosineScheduler


def test_warmup_cosine_known_steps() -> None:
    s = WarmupCosineScheduler(base_lr=1.0, warmup_steps=10, total_steps=110)
    expect = {0: 0.0, 5: 0.5, 10: 1.0, 35: 0.5 * (1 + math.cos(math.pi / 4)), 60: 0.5, 110: 0.0, 500: 0.0}
    for step, lr in expect.items():
        assert s.get_lr(step) == pytest.approx(lr, abs=1e-15), step
    m = WarmupCosineScheduler(base_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1, warmup_start_lr=0.2)
    assert m.get_lr(0) == 0.2 and m.get_lr(5) == pytest.approx(0.6) and m.get_lr(60) == pytest.approx(0.55)
    assert m.get_lr(1000) == 0.1
    assert WarmupCosineScheduler(base_lr=0.5, warmup_steps=0, total_steps=4).get_lr(0) == 0.5


def test_warmup_cosine_matches_hugging_face_lambda_and_torch() -> None:
    base, warm, total = 3e-4, 7, 50

    def hf(step):  # transformers.get_cosine_schedule_with_warmup (num_cycles = 0.5)
        if step < warm:
            return step / max(1, warm)
        progress = (step - warm) / max(1, total - warm)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * 0.5 * progress)))

    s = WarmupCosineScheduler(base, warm, total)
    for step in range(total + 1):  # (past total_steps HF's curve rises again; attnkit holds min_lr)
        assert s.get_lr(step) == pytest.approx(base * hf(step), rel=1e-12, abs=1e-18)
    # torch: LinearLR warmup then CosineAnnealingLR, chained by SequentialLR
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=warm)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm, eta_min=base / 100)
    seq = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[warm])
    ours = WarmupCosineScheduler(base, warm, total, min_lr=base / 100, warmup_start_lr=base * 0.1)
    for step in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(ours.get_lr(step), rel=1e-9), step
        opt.step()
        seq.step()


def test_scheduler_step_counter() -> None:
    s = WarmupCosineScheduler(1.0, 2, 4)
    assert [s.step() for _ in range(5)] == pytest.approx([0.5, 1.0, 0.5, 0.0, 0.0])
    assert s.lr == 0.0 and s.last_step == 5


@pytest.mark.parametrize(
    "schedule,step,expect",
    [
        ("linear", 0, 1.0),
        ("linear", 50, 0.55),
        ("linear", 100, 0.1),
        ("linear", 150, 0.1),
        ("exponential", 50, math.sqrt(0.1)),
        ("exponential", 25, 0.1**0.25),
        ("exponential", 100, 0.1),
        ("cosine", 50, 0.55),
        ("cosine", 25, 0.1 + 0.45 * (1 + math.cos(math.pi / 4))),
        ("cosine", 100, 0.1),
        ("step", 24, 1.0),
        ("step", 25, 0.1**0.25),
        ("step", 49, 0.1**0.25),
        ("step", 75, 0.1**0.75),
        ("step", 100, 0.1),
        ("step", 130, 0.1),
    ],
)
def test_temperature_known_steps(schedule, step, expect) -> None:
    t = TemperatureScheduler(initial=1.0, final=0.1, total_steps=100, schedule=schedule)
    assert t.value(step) == pytest.approx(expect, rel=1e-12)


def test_temperature_updates_its_target_and_can_rise() -> None:
    loss = InfoNCELoss(temperature=0.5)
    t = TemperatureScheduler(initial=1.0, final=0.05, total_steps=10, schedule="exponential", target=loss)
    assert loss.temperature == 1.0
    for _ in range(10):
        t.step()
    assert loss.temperature == pytest.approx(0.05)
    up = TemperatureScheduler(initial=0.1, final=1.0, total_steps=4, schedule="step", decay_steps=2)
    assert [up.value(s) for s in range(5)] == pytest.approx([0.1, 0.1, 0.1**0.5, 0.1**0.5, 1.0])


def test_curriculum_competence_curves() -> None:
    lin = CurriculumScheduler(total_steps=100, initial_competence=0.2, pacing="linear")
    assert [lin.competence(s) for s in (0, 50, 100, 200)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    sq = CurriculumScheduler(total_steps=100, initial_competence=0.1, pacing="sqrt")
    assert sq.competence(0) == pytest.approx(0.1) and sq.competence(50) == pytest.approx(math.sqrt(0.01 + 0.99 * 0.5))
    assert sq.competence(100) == 1.0
    st = CurriculumScheduler(total_steps=100, initial_competence=0.25, pacing="step", num_stages=4)
    assert [st.competence(s) for s in (0, 24, 25, 49, 50, 75, 99, 100)] == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.75, 1, 1, 1])
    assert [st.stage(s) for s in (0, 25, 50, 99)] == [0, 1, 2, 3]
    assert lin.step() == pytest.approx(0.208) and lin.last_step == 1


def test_curriculum_select_and_sample_are_easiest_first_and_seeded() -> None:
    diff = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    c = CurriculumScheduler(total_steps=10, initial_competence=0.3, pacing="linear", seed=4)
    np.testing.assert_array_equal(c.select(diff, step=0), [9, 1, 5])
    assert set(c.select(diff, step=10)) == set(range(10))
    a = c.sample(diff, 2, step=0)
    b = CurriculumScheduler(total_steps=10, initial_competence=0.3, pacing="linear", seed=4).sample(diff, 2, step=0)
    np.testing.assert_array_equal(a, b)
    assert set(a) <= {9, 1, 5} and len(set(a)) == 2
    with pytest.raises(ConfigError, match="batch_size"):
        c.sample(diff, 5, step=0)


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="warmup_steps"):
        WarmupCosineScheduler(1.0, 20, 10)
    with pytest.raises(ConfigError, match="total_steps"):
        WarmupCosineScheduler(1.0, 0, 0)
    with pytest.raises(ConfigError, match="base_lr"):
        WarmupCosineScheduler(-1.0, 0, 10)
    with pytest.raises(ConfigError, match="optimizer"):
        WarmupCosineScheduler(1.0, 0, 10, optimizer=object())
    with pytest.raises(ConfigError, match="step"):
        WarmupCosineScheduler(1.0, 0, 10).get_lr(-1)
    with pytest.raises(ConfigError, match="schedule"):
        TemperatureScheduler(1.0, 0.1, 10, schedule="quadratic")
    with pytest.raises(ConfigError, match="final"):
        TemperatureScheduler(1.0, 0.0, 10)
    with pytest.raises(ConfigError, match="target"):
        TemperatureScheduler(1.0, 0.1, 10, target=object())
    with pytest.raises(ConfigError, match="initial_competence"):
        CurriculumScheduler(10, initial_competence=1.5)
    with pytest.raises(ConfigError, match="pacing"):
        CurriculumScheduler(10, pacing="log")
    with pytest.raises(ConfigError, match="num_stages"):
        CurriculumScheduler(10, pacing="step", num_stages=1)
    with pytest.raises(ShapeError, match="difficulties"):
        CurriculumScheduler(10).select(np.ones((2, 2)))

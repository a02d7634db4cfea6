"""Training utilities: contrastive losses with analytic gradients, optimizers, schedules, negative mining.

Everything works on NumPy arrays (float64 math), is seeded where random, and mirrors the reference
definitions (``torch.optim`` update rules, the papers' formulas) that the tests check it against:

* :class:`InfoNCELoss`, :class:`TripletLoss` (= :data:`LocalContrastiveLoss`): ``compute`` and
  ``compute_with_gradients``;
* :class:`SGD` (momentum, Nesterov, weight decay), :class:`Adam`, :class:`AdamW`: ``step(params, grads)``;
* :class:`WarmupCosineScheduler`, :class:`TemperatureScheduler` (linear, exponential, cosine, step),
  :class:`CurriculumScheduler`;
* :class:`NegativeMiner` (random, hard, semi-hard, distance-weighted, in-batch) and :func:`gather`.
"""

from .losses import InfoNCELoss, LocalContrastiveLoss, TripletLoss
from .mining import STRATEGIES, NegativeMiner, gather
from .optim import SGD, Adam, AdamW, Optimizer
from .schedulers import CurriculumScheduler, TemperatureScheduler, WarmupCosineScheduler

__all__ = [
    "InfoNCELoss",
    "TripletLoss",
    "LocalContrastiveLoss",
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "WarmupCosineScheduler",
    "TemperatureScheduler",
    "CurriculumScheduler",
    "NegativeMiner",
    "gather",
    "STRATEGIES",
]

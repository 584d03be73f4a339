"""hardbatch: mini-batches full of hard negatives for contrastive training.

The pipeline (one subpackage per stage)::

    embeddings → similarity graph → structure (ordering / clusters) → batches → BatchPlan

>>> import hardbatch
>>> plan = hardbatch.plan("gcbs", queries=X, targets=Y, batch_size=64, seed=0)
>>> hardbatch.metrics.loss_gap(X, Y, plan, temperature=0.05)
"""

from . import hardness, losses, metrics
from .api import plan
from .batching import PAD
from .hardness import HardnessSchedule, NearRandomPlanWarning
from .methods import Planner, available_methods, get_method, register_method
from .plans import BatchPlan
from .recording import EmbeddingRecorder
from .sampler import HardBatchSampler

__version__ = "0.1.0"

__all__ = [
    "PAD",
    "BatchPlan",
    "EmbeddingRecorder",
    "HardBatchSampler",
    "HardnessSchedule",
    "NearRandomPlanWarning",
    "Planner",
    "__version__",
    "available_methods",
    "get_method",
    "hardness",
    "losses",
    "metrics",
    "plan",
    "register_method",
]

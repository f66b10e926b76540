"""Baseline reward-model scorers for best-of-N evaluation.

Every scorer maps ``(question, response)`` pairs to float rewards exactly as its authors score
them::

    from lm_eval_swift.scorers import get_scorer

    with get_scorer("skywork").load(batch_size=8) as rm:     # or .load("/path/to/checkpoint")
        rewards = rm.score(questions, responses)

Registered names (see :data:`SCORERS`): ``eurus``, ``skywork``, ``skywork-v0.2``, ``starling``,
``ultrarm``, ``rlhflow-prm``, ``rlhflow-orm``, ``math-shepherd`` and the generic ``seq-cls``
(any sequence-classification RM with a chat template) and ``token-prm`` (any step-tag "+/-" PRM,
``step_tag=`` required).  No scorer uses ``trust_remote_code``.
"""

from .base import (
    AGGREGATIONS,
    SCORERS,
    Encoded,
    Scorer,
    UnknownScorerError,
    aggregate,
    get_scorer,
    load_scorer,
    register_scorer,
)
from .prm import CausalLMStepScorer, MathShepherdScorer, RLHFlowORMScorer, RLHFlowPRMScorer, TokenPRMScorer
from .scalar import (
    EurusRewardModel,
    EurusScorer,
    StarlingRewardModel,
    StarlingScorer,
    UltraRMRewardModel,
    UltraRMScorer,
    ValueHeadScorer,
)
from .seq_cls import SeqClsScorer, SkyworkScorer, SkyworkV02Scorer
from .weights import WeightLoadError

__all__ = [
    "AGGREGATIONS",
    "SCORERS",
    "CausalLMStepScorer",
    "Encoded",
    "EurusRewardModel",
    "EurusScorer",
    "MathShepherdScorer",
    "RLHFlowORMScorer",
    "RLHFlowPRMScorer",
    "Scorer",
    "SeqClsScorer",
    "SkyworkScorer",
    "SkyworkV02Scorer",
    "StarlingRewardModel",
    "StarlingScorer",
    "TokenPRMScorer",
    "UltraRMRewardModel",
    "UltraRMScorer",
    "UnknownScorerError",
    "ValueHeadScorer",
    "WeightLoadError",
    "aggregate",
    "get_scorer",
    "load_scorer",
    "register_scorer",
]

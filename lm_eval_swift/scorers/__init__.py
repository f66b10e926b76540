"""Baseline reward-model scorers for best-of-N evaluation.

Every scorer maps ``(question, response)`` pairs to float rewards exactly as its authors score
them::

    from lm_eval_swift.scorers import get_scorer

    with get_scorer("skywork").load(batch_size=8) as rm:     # or .load("/path/to/checkpoint")
        rewards = rm.score(questions, responses)

Registered names (see :data:`SCORERS`): ``eurus``, ``skywork``, ``skywork-v0.2``, ``starling``,
``ultrarm``, ``rlhflow-prm``, ``rlhflow-orm``, ``math-shepherd`` and the generic ``seq-cls``
(any sequence-classification RM with a chat template) and ``token-prm`` (any step-tag "+/-" PRM,
``step_tag=`` required).  No scorer uses ``trust_remote_code``.  Input ids come from each model's tokenizer
files as the transformers 4 tokenizer its authors ran encodes them (:mod:`.tokenization`), not from transformers 5.

Two protocols (option ``protocol``): ``"card"``, each model card's recipe (the default), and ``"paper"``, the
inputs of the SWIFT paper's baseline script (instruction prefix, its own formats and dtypes; see
:meth:`Scorer.protocol_defaults` and each scorer's ``paper_options``).
"""

from .base import (
    AGGREGATIONS,
    PAPER_INSTRUCTION,
    PROTOCOLS,
    SCORERS,
    Encoded,
    Scorer,
    UnknownScorerError,
    aggregate,
    check_protocol,
    get_scorer,
    load_scorer,
    register_scorer,
)
from .prm import (
    CausalLMStepScorer,
    MathShepherdScorer,
    RLHFlowORMScorer,
    RLHFlowPRMScorer,
    TokenPRMScorer,
)
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
    "PAPER_INSTRUCTION",
    "PROTOCOLS",
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
    "check_protocol",
    "get_scorer",
    "load_scorer",
    "register_scorer",
]

"""Sampling for ``hf-swift``, apart from lm-eval: how a token is picked (sampling), the packed KV cache (cache) and
the decode loop (decoder). The lm-eval model class that uses them is :class:`~lm_eval_swift.harness.models.HFSwiftLM`."""

from lm_eval_swift.decoding.cache import PackedCache
from lm_eval_swift.decoding.decoder import (
    Decoder,
    Finished,
    Job,
    decode,
    sample_continuations,
)
from lm_eval_swift.decoding.sampling import Sampling, StopCheck, sample_seed

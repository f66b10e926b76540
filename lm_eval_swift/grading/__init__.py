"""Answer extraction and equivalence for MATH and GSM8K, built on Math-Verify. This package only re-exports its
public API; each module does one job:

- ``extract``: the answer a response states (``extract_answer``);
- ``canonical``: canonical forms of answers and the shapes read in-process (units, mixed numbers, times, vectors);
- ``numeric``: exact values of arithmetic LaTeX, in bounded time;
- ``compare``: whether two answers are equivalent (``is_equivalent``, ``verify_strings``), cached per pair;
- ``pool`` and ``worker``: the Math-Verify worker processes and their time limits;
- ``grader``: a response against its gold (``grade``, ``grade_all``).

Grading modes (``MODES``): ``"default"`` (Math-Verify's rules) and ``"paper"`` (also numbers within 1e-4 relative
difference). Settings (environment): ``LM_EVAL_SWIFT_GRADE_TIMEOUT`` (seconds per comparison, default 2) and
``LM_EVAL_SWIFT_GRADE_WORKERS`` (worker processes, default ``min(4, cpu_count)``). Neither lm-eval nor torch is
imported here.
"""

from lm_eval_swift.grading.compare import (
    MATCH_TYPES,
    MODES,
    is_equivalent,
    verify_strings,
)
from lm_eval_swift.grading.extract import KINDS, extract_answer
from lm_eval_swift.grading.grader import grade, grade_all
from lm_eval_swift.grading.pool import DEFAULT_TIMEOUT, TIMEOUT_ENV, WORKERS_ENV


__all__ = [
    "DEFAULT_TIMEOUT",
    "KINDS",
    "MATCH_TYPES",
    "MODES",
    "TIMEOUT_ENV",
    "WORKERS_ENV",
    "extract_answer",
    "grade",
    "grade_all",
    "is_equivalent",
    "verify_strings",
]

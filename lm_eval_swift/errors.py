"""The one exception class for a user's mistake (a wrong path, a bad argument, a corrupt input file).

Raised where the mistake is found; ``lm-eval-swift`` prints its message as one line on stderr and exits with
status 2, without a traceback unless asked for (``--debug`` or ``LM_EVAL_SWIFT_DEBUG=1``).
"""

from __future__ import annotations


class UsageError(ValueError):
    """A user's mistake, with a message that says what is wrong and how to put it right."""

"""lm-eval-swift: best-of-N evaluation with SWIFT reward heads for lm-evaluation-harness."""

__version__ = "0.1.0"

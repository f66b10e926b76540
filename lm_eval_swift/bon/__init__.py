"""The best-of-N core, arithmetic on graded samples: needs neither lm-eval nor torch (tests/test_bon_core.py).

A sample as lm-eval sees it and the response-token rule (samples), the rollouts record and its files with the
grading step that makes them (rollouts), the selectors (selectors), the rows and the table (rows), and the ranking
diagnostics of a score (metrics)."""

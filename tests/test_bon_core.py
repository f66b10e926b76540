"""The best-of-N core (``lm_eval_swift.bon``) and ``lm-eval-swift report`` need neither lm-eval nor torch: in a
process where importing them fails, the core imports and ``report`` prints the table of a committed rollouts file.
"""

from __future__ import annotations

from conftest import REPO
from helpers import run_blocked


ROLLOUTS = sorted(
    (REPO / "experiments/smollm2_gsm8k/rollouts/test").glob("*.jsonl.gz")
)[0]


def test_bon_imports_without_lm_eval_or_torch():
    proc = run_blocked(
        """
        import importlib, pkgutil, sys
        import lm_eval_swift.bon as bon
        for m in pkgutil.iter_modules(bon.__path__):
            importlib.import_module(f"lm_eval_swift.bon.{m.name}")
        import lm_eval_swift.grading
        assert "lm_eval_swift.harness" not in sys.modules, sorted(sys.modules)
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_report_runs_without_lm_eval_or_torch():
    proc = run_blocked(
        f"""
        import sys
        from lm_eval_swift.cli import main
        main(["report", {str(ROLLOUTS)!r}, "--k", "1", "4"])
        assert "lm_eval_swift.harness" not in sys.modules
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "| maj |" in proc.stdout and "| oracle |" in proc.stdout

"""lm-eval's side, the only package that imports lm-eval: the hf-swift model (models) and its sample cache
(sample_cache), the best-of-N task (tasks), the selectors as lm-eval filters (filters), the plain-hf generating
model as a task sees it (generator), data-parallel details (distributed), ``lm-eval-swift eval`` (eval_command)
and the private lm-eval surfaces it needs, fenced in one module (lm_eval_private)."""

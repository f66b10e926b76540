"""lm-eval's side: the hf-swift model (models) and its sample cache (sample_cache), the best-of-N task (tasks), the
selectors as lm-eval filters (selectors), the plain-hf generating model as a task sees it (generator), and
data-parallel details (distributed)."""

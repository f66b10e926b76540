"""Reading results: the best-of-N table from rollouts (report), the leaderboard across models (leaderboard) and its
curves (plot). The rows, the table and the ranking diagnostics they read are in :mod:`lm_eval_swift.bon`."""

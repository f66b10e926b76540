"""Reading results: the best-of-N table from rollouts (report), the leaderboard across models (leaderboard), its
curves (plot) and ranking diagnostics (metrics)."""

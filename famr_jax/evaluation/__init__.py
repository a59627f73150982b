"""Metrics, the retrain-referenced leaderboard and reports."""

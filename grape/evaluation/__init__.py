"""Metrics, baselines, DE rankings, evaluation tables, cell-eval export, the report."""

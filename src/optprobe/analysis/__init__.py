"""Readers of finished runs (local store, W&B), verdicts, cross-run statistics, figures and
the HTML report."""

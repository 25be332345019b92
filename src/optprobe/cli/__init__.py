"""Thin command-line entry points: the analysis, the DDP worker."""

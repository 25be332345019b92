"""Callbacks that are not probes: checkpoints, preemption, the non-finite guard, the budget."""

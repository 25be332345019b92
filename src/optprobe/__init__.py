"""optprobe: measure, during real training, the quantities convergence proofs assume."""

__version__ = "0.1.0"

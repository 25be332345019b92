"""Old import path, kept so that job folders written before optprobe 0.2 (whose config.yaml
names it in ``_target_``) still resume and analyse. It stays until optprobe 0.4, and at least
until 2027-06-30; new code imports from the module named below."""

from optprobe.callbacks.non_finite import NonFiniteLossGuard
from optprobe.run.hydra_callbacks import OutputDirCheck

__all__ = ["NonFiniteLossGuard", "OutputDirCheck"]

"""The job lifecycle: prepare / fit / finalize (``job``), the job folder (``folder``), the
objects of a job (``build``), checks, the reference run, DDP ranks, Hydra callbacks, loggers."""

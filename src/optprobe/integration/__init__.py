"""The probes in a researcher's own training code: any LightningModule (:mod:`.lightning`) or a
plain PyTorch loop (:mod:`.plain_loop`), both writing the job folder the analysis reads."""

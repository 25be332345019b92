"""Optimizers: what the probes need to know about each one (``registry``), the Muon/AdamW
split (``muon``), heavyball's SOAP without compilation (``soap``) and Schedule-Free's
train/eval modes (``modes``). Any ``torch.optim`` optimizer trains by ``_target_`` alone."""

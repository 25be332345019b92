"""Networks (nn.Module) and the LightningModule that trains them."""

"""GOAE training (issue #7): the training loop, data, losses and the canonical latent discriminator.

Not part of the `goae` inference package: run with `python train/run.py --config train/configs/...`."""

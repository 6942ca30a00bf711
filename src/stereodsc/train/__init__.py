"""Training: stereo pair datasets, losses, the training loop and checkpoints (needs torch)."""

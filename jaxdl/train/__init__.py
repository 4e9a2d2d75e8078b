"""Training without files: Optax optimizers, pure train/eval steps, the device mesh."""

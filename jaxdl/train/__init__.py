"""Training without files: Optax optimizers, tasks, pure train/eval steps, the device layouts (jit
over a mesh, pmap) and dispatching train calls."""

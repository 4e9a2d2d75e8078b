"""Pure Flax Linen models. This package imports jax and flax only: no optimizers, files or data."""

from jaxdl.nn.cnn import MnistCNN
from jaxdl.nn.registry import MODELS, build_model, model_kwargs

__all__ = ["MODELS", "MnistCNN", "build_model", "model_kwargs"]

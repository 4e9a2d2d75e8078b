"""Random weights for a torch reference model, shared by the tests and tools/."""

import torch


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Random weights, biases and BatchNorm statistics (torchvision starts biases and BatchNorm
  at 0 and 1, which would hide a bias or a statistic read from the wrong place); eval mode."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if not t.is_floating_point():
        continue
      if name.endswith("running_var"):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      elif t.ndim > 1:
        t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
      else:
        t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith("weight") else 0))
  return model.eval()

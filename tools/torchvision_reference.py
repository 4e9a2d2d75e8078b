"""Checks tests/reference/torchvision_models.py against torchvision itself, and records its keys.

    pip download --no-deps torchvision==0.28.0 -d /tmp/tv
    python tools/torchvision_reference.py /tmp/tv/torchvision-0.28.0-*.whl          # check
    python tools/torchvision_reference.py /tmp/tv/torchvision-0.28.0-*.whl --write  # and record

torchvision's wheels need a torch built for the same CUDA, so jaxdl's tests cannot import it. Its
model files need nothing compiled, though: this script unpacks the wheel and imports
torchvision/models/{resnet,vgg,densenet}.py under a stand-in parent package that skips
torchvision's __init__ (the compiled operators) and its transforms. It then checks that each
reference model has torchvision's state-dict keys and shapes, in order, and computes the same
logits from the same weights (eval mode, random BatchNorm statistics), printing the largest
difference. --write records the keys and shapes of the models the tests check in
tests/data/torchvision_keys.json.
"""

import argparse
import importlib
import json
from pathlib import Path
import sys
import tempfile
import types
import zipfile

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.reference import torchvision_models as reference  # noqa: E402
from tests.reference.randomize import randomized  # noqa: E402

KEYS = REPO / "tests" / "data" / "torchvision_keys.json"
RECORDED = ("resnet18", "resnet50", "vgg11", "vgg11_bn", "densenet121")
MODELS = {
  "resnet": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
  "vgg": tuple(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
  "densenet": ("densenet121", "densenet161", "densenet169", "densenet201"),
}


def import_torchvision_models(wheel: Path, into: Path) -> dict[str, types.ModuleType]:
  """torchvision.models.{resnet,vgg,densenet} from the wheel, without torchvision's __init__."""
  with zipfile.ZipFile(wheel) as z:
    z.extractall(into)
  root = into / "torchvision"

  def package(name: str, path: Path | None = None) -> types.ModuleType:
    module = types.ModuleType(name)
    if path is not None:
      module.__path__ = [str(path)]
    sys.modules[name] = module
    return module

  package("torchvision", root)
  package("torchvision.models", root / "models")
  package("torchvision.transforms", root / "transforms")
  package("torchvision.transforms._presets").ImageClassification = object  # Weights metadata only.
  return {f: importlib.import_module(f"torchvision.models.{f}") for f in MODELS}


def keys_and_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
  return {name: list(t.shape) for name, t in model.state_dict().items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("wheel", type=Path, help="a torchvision wheel (pip download --no-deps)")
  parser.add_argument("--write", action="store_true", help=f"record the keys in {KEYS}")
  parser.add_argument("--size", type=int, default=224, help="image side for the logits check")
  args = parser.parse_args()
  recorded = {}
  with tempfile.TemporaryDirectory() as tmp:
    torchvision = import_torchvision_models(args.wheel, Path(tmp))
    for family, names in MODELS.items():
      for name in names:
        real = randomized(getattr(torchvision[family], name)(), seed=0)
        ours = getattr(reference, name)().eval()
        if keys_and_shapes(ours) != keys_and_shapes(real) or list(ours.state_dict()) != list(
          real.state_dict()
        ):
          raise SystemExit(f"{name}: the reference's state-dict keys or shapes differ")
        ours.load_state_dict(real.state_dict(), strict=True)
        images = torch.randn(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
          want, got = real(images), ours(images)
        print(
          f"{name:12s} {len(real.state_dict()):4d} tensors, same keys and shapes; logits at "
          f"{args.size}x{args.size}: largest difference {(got - want).abs().max().item():.3g} "
          f"(largest logit {want.abs().max().item():.3g})"
        )
        if name in RECORDED:
          recorded[name] = keys_and_shapes(real)
  if args.write:
    lines = ["{"]
    for i, (name, keys) in enumerate(recorded.items()):
      lines.append(f"  {json.dumps(name)}: {{")
      entries = [f"    {json.dumps(k)}: {json.dumps(s)}" for k, s in keys.items()]
      lines.append(",\n".join(entries))
      lines.append("  }" + ("," if i < len(recorded) - 1 else ""))
    KEYS.write_text("\n".join(lines + ["}"]) + "\n")
    assert json.loads(KEYS.read_text()) == recorded
    print(f"wrote {KEYS.relative_to(REPO)}")


if __name__ == "__main__":
  main()

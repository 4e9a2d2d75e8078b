"""`jaxdl train | eval | generate | export | predict | data convert | plot | summary`: the CLI.

A UserError (bad override, missing file, incompatible workdir) prints one message and exits with
status 2; `--debug` shows the traceback as well.
"""

import argparse
import logging
from pathlib import Path
import sys

from jaxdl.errors import UserError

logger = logging.getLogger("jaxdl")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="jaxdl", description=__doc__.splitlines()[0])
  parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
  sub = parser.add_subparsers(dest="command", required=True)

  train = sub.add_parser("train", help="train an experiment (resumes an existing workdir)")
  train.add_argument("experiment", help="experiment file, e.g. experiments/mnist_cnn.py")
  train.add_argument(
    "overrides",
    nargs="*",
    metavar="key.path=value",
    help="config overrides, e.g. train.batch_size=128 optimizer.learning_rate=3e-4",
  )
  train.add_argument("--workdir", help="where the run's files go (default: runs/<experiment>)")
  train.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")

  evaluate = sub.add_parser("eval", help="evaluate a checkpoint on the test split")
  evaluate.add_argument("workdir")
  evaluate.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  evaluate.add_argument(
    "overrides",
    nargs="*",
    metavar="key=value",
    help="run keys only (parallel.*, runtime.*, data.dir, ...), e.g. parallel.mesh.tensor=1 to "
    "evaluate a tensor-parallel run on one device",
  )

  generate = sub.add_parser("generate", help="sample text from a trained language model")
  generate.add_argument("workdir")
  generate.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
  generate.add_argument("--max-new-tokens", type=int, default=500)
  generate.add_argument(
    "--temperature", type=float, default=1.0, help="0 always picks the most likely token"
  )
  generate.add_argument("--top-k", type=int, default=0, help="sample among the k most likely")
  generate.add_argument("--seed", type=int, default=0, help="the same seed gives the same text")
  generate.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  generate.add_argument(
    "--member",
    type=int,
    default=0,
    help="which member of a sweep's run to sample from (default: 0)",
  )

  export = sub.add_parser(
    "export",
    help="write a trained run as a Hugging Face, timm, torchvision or torch checkpoint, or as "
    "a StableHLO program for serving",
  )
  export.add_argument("workdir")
  export.add_argument(
    "--format",
    required=True,
    choices=("hf", "timm", "torchvision", "torch", "stablehlo"),
    help="hf: a transformers folder (GPT-2, BERT, ViT); torchvision: ResNet/VGG/DenseNet "
    "state dict; timm: a timm ViT folder; torch: nn.LSTM/nn.GRU state dict; stablehlo: the "
    "evaluation forward (jax.export, any batch size), its parameters and signature.json, for "
    "`jaxdl predict` or any program with jax",
  )
  export.add_argument("--out", required=True, help="the folder to write (files there are kept)")
  export.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  export.add_argument("--member", type=int, default=0, help="a sweep's member (default: 0)")
  export.add_argument(
    "--overwrite", action="store_true", help="replace files of an earlier export in --out"
  )
  export.add_argument(
    "--kernels",
    help="stablehlo: the kernel set of the exported forward (default: the one `jaxdl eval` "
    "settles on this machine; plain suits GPUs and TPUs)",
  )
  export.add_argument(
    "--platforms",
    help="stablehlo: the platforms to lower for, of cpu, cuda, rocm, tpu (default: cpu,cuda)",
  )

  predict = sub.add_parser(
    "predict",
    help="run a model exported with --format stablehlo on image files or text; one JSON line "
    "an input",
  )
  predict.add_argument("model", help="the --out folder of `jaxdl export --format stablehlo`")
  predict.add_argument(
    "inputs", nargs="*", help="image files for an image model, texts for a text model"
  )
  predict.add_argument("--text-file", help="a text model's inputs, one a line")
  predict.add_argument("--top-k", type=int, default=5, help="classes or next tokens to show")
  predict.add_argument("--logits", action="store_true", help="print the logits as well")
  predict.add_argument(
    "--max-new-tokens",
    type=int,
    default=32,
    help="language models: tokens of greedy continuation (default: 32)",
  )
  predict.add_argument("--batch-size", type=int, default=64, help="inputs run together")

  data = sub.add_parser("data", help="datasets: convert one to ArrayRecord shards")
  data_sub = data.add_subparsers(dest="data_command", required=True)
  convert = data_sub.add_parser(
    "convert",
    help="write a dataset jaxdl reads as ArrayRecord shards (train with data.name=arrayrecord "
    "data.dir=OUT)",
  )
  convert.add_argument(
    "source", help="a dataset name: mnist, cifar10, image_folder, text, reviews, hf, parquet, ..."
  )
  convert.add_argument(
    "overrides",
    nargs="*",
    metavar="key=value",
    help="the dataset's options, its data.* keys without data., e.g. dir=~/photos image_size=64",
  )
  convert.add_argument("--to", required=True, choices=("arrayrecord",), help="the format")
  convert.add_argument("--out", required=True, help="the folder to write (new or empty)")
  convert.add_argument(
    "--shards", type=int, help="files per split (default: one per ~100 MB of records)"
  )
  convert.add_argument(
    "--image-encoding",
    choices=("raw", "png", "jpeg"),
    default="raw",
    help="images as uint8 arrays (raw, lossless; default), PNG (lossless) or JPEG bytes",
  )
  convert.add_argument(
    "--overwrite", action="store_true", help="replace a dataset converted into --out before"
  )
  convert.add_argument("--no-progress", action="store_true", help="no progress bars")

  plot = sub.add_parser("plot", help="plot loss and accuracy curves of runs")
  plot.add_argument("workdirs", nargs="+")
  plot.add_argument("-o", "--output", required=True, help="image file to write, e.g. curves.png")

  summary = sub.add_parser(
    "summary",
    help="parameters, forward FLOPs and memory of a model, and the memory per device to train an "
    "experiment (weights never allocated)",
  )
  summary.add_argument(
    "experiment", nargs="?", help="experiment file, e.g. experiments/mnist_cnn.py (or use --model)"
  )
  summary.add_argument(
    "overrides", nargs="*", metavar="key.path=value", help="config overrides, as for train"
  )
  summary.add_argument(
    "--model",
    help="a model or preset instead of an experiment, e.g. resnet50, "
    "vit_base_patch16_224, gpt2_small",
  )
  summary.add_argument(
    "--input-shape", help="with --model: the input's shape, batch first, e.g. 1,224,224,3 or 1,1024"
  )
  summary.add_argument(
    "--input-dtype",
    default="float32",
    help="with --model: float32 (images, default) or int32 (token ids)",
  )
  summary.add_argument("--num-classes", type=int, help="with --model: the output classes")
  summary.add_argument(
    "--vocab-size", type=int, help="with --model: the vocabulary, for models without a default"
  )
  summary.add_argument("--dtype", help="with --model: the compute dtype, e.g. bfloat16")
  summary.add_argument(
    "--optimizer",
    default="adam",
    help="with --model: adam (default), adamw or sgd, to size its state",
  )
  summary.add_argument(
    "--full", action="store_true", help="one row per array even for models with more than 200"
  )
  summary.add_argument(
    "--no-flops", action="store_true", help="skip compiling the forward pass (FLOPs n/a)"
  )
  summary.add_argument(
    "--no-temporaries",
    action="store_true",
    help="with an experiment: skip compiling the train step (memory per device without XLA's "
    "temporaries)",
  )
  return parser


def _run_name(experiment: str) -> str:
  """runs/<name>: the experiment file's stem, plus its variant (`exp.py:cpu` -> exp_cpu)."""
  if not Path(experiment).is_file() and ":" in experiment:
    experiment, _, variant = experiment.rpartition(":")
    return f"{Path(experiment).stem}_{variant}"
  return Path(experiment).stem


def _train(args) -> int:
  from jaxdl import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxdl import trainer  # pylint: disable=g-import-not-at-top

  config = config_lib.load_experiment(args.experiment)
  config_lib.apply_overrides(config, args.overrides)
  # A string: pathlib would make gs://bucket/run into gs:/bucket/run.
  workdir = args.workdir or str(Path("runs") / _run_name(args.experiment))
  result = trainer.train(config, workdir, command=sys.argv, show_progress=not args.no_progress)
  if result.interrupted_by is not None:
    return 128 + result.interrupted_by
  if result.summary:
    print(f"step {result.step}: {result.summary}. Workdir: {workdir}")
  return 0


def _eval(args) -> int:
  from jaxdl import trainer  # pylint: disable=g-import-not-at-top

  step, _, summary = trainer.evaluate_workdir(args.workdir, args.step, args.overrides)
  print(f"step {step}: {summary}")
  return 0


def _generate(args) -> int:
  from jaxdl import sampling  # pylint: disable=g-import-not-at-top

  text = sampling.generate_from_workdir(
    args.workdir,
    args.prompt,
    max_new_tokens=args.max_new_tokens,
    temperature=args.temperature,
    top_k=args.top_k,
    seed=args.seed,
    step=args.step,
    member=args.member,
  )
  print(text)
  return 0


def _export(args) -> int:
  from jaxdl import export  # pylint: disable=g-import-not-at-top

  if args.format == "stablehlo":
    written = export.export_stablehlo(
      args.workdir,
      args.out,
      step=args.step,
      member=args.member,
      overwrite=args.overwrite,
      kernels=args.kernels,
      platforms=args.platforms or "cpu,cuda",
    )
  else:
    if args.kernels is not None or args.platforms is not None:
      raise UserError(
        "--kernels and --platforms apply to --format stablehlo; a checkpoint holds weights only."
      )
    written = export.export_workdir(
      args.workdir,
      args.out,
      args.format,
      step=args.step,
      member=args.member,
      overwrite=args.overwrite,
    )
  for path in written:
    print(f"wrote {path}")
  return 0


def _predict(args) -> int:
  import json  # pylint: disable=g-import-not-at-top

  from jaxdl import predict  # pylint: disable=g-import-not-at-top

  inputs = list(args.inputs)
  if args.text_file:
    try:
      with open(args.text_file, encoding="utf-8") as f:
        inputs += [line.rstrip("\n") for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(
        f"--text-file {args.text_file} cannot be read ({e}); give a UTF-8 text file, one input "
        "a line."
      ) from None
  results = predict.predict(
    args.model,
    inputs,
    top_k=args.top_k,
    logits=args.logits,
    max_new_tokens=args.max_new_tokens,
    batch_size=args.batch_size,
  )
  for result in results:
    print(json.dumps(result, ensure_ascii=False))
  return 0


def _data(args) -> int:
  from jaxdl.data import convert  # pylint: disable=g-import-not-at-top

  description = convert.convert(
    args.source,
    args.overrides,
    args.out,
    to=args.to,
    shards=args.shards,
    overwrite=args.overwrite,
    image_encoding=args.image_encoding,
    show_progress=not args.no_progress,
  )
  splits = ", ".join(
    f"{name} {split['num_records']} records in {len(split['files'])} shards"
    for name, split in description["splits"].items()
  )
  print(f"wrote {Path(args.out) / 'dataset.json'}: {splits}")
  return 0


def _plot(args) -> int:
  from jaxdl import plot  # pylint: disable=g-import-not-at-top

  print(f"wrote {plot.plot_runs(args.workdirs, args.output)}")
  return 0


def _summary(args) -> int:
  from jaxdl import summary  # pylint: disable=g-import-not-at-top

  model_flags = {
    "--input-shape": args.input_shape,
    "--num-classes": args.num_classes,
    "--vocab-size": args.vocab_size,
    "--dtype": args.dtype,
  }
  if args.model and args.no_temporaries:
    raise UserError("--no-temporaries applies to an experiment; --model measures no train step.")
  if args.model:
    if args.experiment or args.overrides:
      raise UserError(
        "Give an experiment file or --model NAME, not both (key=value overrides "
        "apply to experiments only)."
      )
    heading, result = summary.for_model(
      args.model,
      args.input_shape,
      input_dtype=args.input_dtype,
      num_classes=args.num_classes,
      vocab_size=args.vocab_size,
      dtype=args.dtype,
      optimizer=args.optimizer,
      flops=not args.no_flops,
    )
  elif args.experiment:
    given = [flag for flag, value in model_flags.items() if value is not None]
    if given:
      raise UserError(
        f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} with "
        "--model only; an experiment takes its model and input shape from its "
        "config and data."
      )
    heading, result = summary.for_experiment(
      args.experiment,
      args.overrides,
      flops=not args.no_flops,
      temporaries=not args.no_temporaries,
    )
  else:
    raise UserError(
      "Give an experiment file (jaxdl summary experiments/mnist_cnn.py) or a model "
      "and input shape (jaxdl summary --model resnet50 --input-shape 1,224,224,3)."
    )
  print(heading)
  print(summary.format_summary(result, full=args.full))
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  # Overrides may come before or after options: `train EXP a=1 --workdir W b=2`.
  args, extra = parser.parse_known_args(argv)
  strays = [
    a
    for a in extra
    if args.command not in ("train", "summary", "data") or a.startswith("-") or "=" not in a
  ]
  if strays:
    parser.error(f"unrecognized arguments: {' '.join(strays)}")
  if extra:
    args.overrides += extra
  logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(message)s",
    datefmt="%H:%M:%S",
    stream=sys.stderr,
  )
  # Orbax and absl log every save at INFO; only their warnings matter to a user.
  for name in ("absl", "jax", "orbax"):
    logging.getLogger(name).setLevel(logging.WARNING)
  handlers = {
    "train": _train,
    "eval": _eval,
    "generate": _generate,
    "export": _export,
    "predict": _predict,
    "data": _data,
    "plot": _plot,
    "summary": _summary,
  }
  try:
    return handlers[args.command](args)
  except UserError as e:
    if args.debug:
      raise
    print(f"jaxdl {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())

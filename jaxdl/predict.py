"""`jaxdl predict DIR INPUTS...`: an exported model (jaxdl.serving) run on image files or text,
without the experiment file; and the preprocessing `jaxdl export` records for it.

Inputs are prepared exactly as the run's evaluation pipeline prepared its examples, with the data
layer's own functions:
- images: decoded with Pillow, the shorter side resized and the centre cropped to the model's size
  as the run's image folder did (jaxdl.data.image_folder.decode_image; a streaming folder's
  evaluation crop, jaxdl.data.image_stream.decode_centre_crop), converted to grayscale for a
  one-channel model, scaled by 1/255 in float32 and normalised with the run's per-channel mean and
  std when it normalised (jaxdl.data.augment.normalize). Images already at the model's size (an
  MNIST digit saved as PNG) pass through the resize and crop unchanged.
- text for a classifier: tokenized with the run's tokenizer, [CLS] first when the run's examples
  start with it, cut to the model's length and padded with [PAD] (jaxdl.data.reviews).
- text for a language model: the prompt's last tokens (up to the model's context), padded on the
  right; a causal model's logits at the prompt's last position do not see the padding.

Each input gives one JSON-ready dict: a classifier's top-k classes with their probabilities; a
language model's top-k next tokens and its greedy continuation (`max_new_tokens`, the context
sliding one token at a time once full). Inputs run in batches of `batch_size`, through the
artifact's symbolic batch dimension.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdl import serving
from jaxdl.errors import UserError

# ---------------------------------------------------------------- What export records


def preprocessing(data: Any, task: Any, example_input: np.ndarray) -> dict[str, Any]:
  """signature.json's "preprocessing": how `predict` turns a file or a string into one row of the
  model's input, for a run on `data` (a jaxdl.data Dataset) whose model reads `example_input`."""
  from jaxdl.data import image_stream  # pylint: disable=g-import-not-at-top

  shape = example_input.shape[1:]
  if task.name == "lm":
    return _text_steps(data.tokenizer, length=shape[0], first=None)
  if np.issubdtype(example_input.dtype, np.integer):  # Token ids: a text classifier.
    rows = next(iter(data.eval_batches(batch_size=8)))[task.input_key]
    cls_id = getattr(data.tokenizer, "cls_id", None)
    starts_with_cls = cls_id is not None and bool(np.all(rows[:, 0] == cls_id))
    return _text_steps(data.tokenizer, length=shape[0], first="cls" if starts_with_cls else None)
  if len(shape) != 3 or shape[0] != shape[1] or shape[2] not in (1, 3):
    return {"kind": "none"}  # Neither token ids nor square images: the caller prepares them.
  size, channels = shape[0], shape[2]
  if isinstance(data, image_stream.StreamingImageFolder):
    resize = round(size / image_stream.EVAL_CROP_FRACTION)
    mean, std = (data.mean, data.std) if data.normalize else (None, None)
  else:
    resize = size
    augment = getattr(data, "augment", None)
    normalizes = augment is not None and getattr(augment, "normalizes", False)
    mean, std = (augment.mean, augment.std) if normalizes else (None, None)
  return {
    "kind": "image",
    "size": size,
    "channels": channels,
    "color": "L" if channels == 1 else "RGB",
    # The shorter side resized to `resize_shorter_side` (bilinear), then the centre size x size.
    "resize_shorter_side": resize,
    "scale": "1/255",
    "mean": None if mean is None else [float(m) for m in mean],
    "std": None if std is None else [float(s) for s in std],
  }


def _text_steps(tokenizer: Any, *, length: int, first: str | None) -> dict[str, Any]:
  pad_id = getattr(tokenizer, "pad_id", None)
  return {
    "kind": "text",
    "tokenizer": serving.TOKENIZER_FILE,
    "length": int(length),
    "first": first,  # "cls": [CLS] starts every row.
    "pad_id": int(pad_id) if pad_id is not None else 0,
  }


def class_names(data: Any, config: Any) -> list[str] | None:
  """The names of a classifier's classes where the data has them, else None."""
  names = (data.source or {}).get("classes")
  if names is None and config.data.name == "reviews":
    from jaxdl.data import reviews  # pylint: disable=g-import-not-at-top

    names = sorted(reviews.LABELS, key=reviews.LABELS.get)
  return [str(n) for n in names] if names is not None else None


# ---------------------------------------------------------------- Preparing inputs


def load_images(paths: Sequence[str], steps: dict[str, Any]) -> np.ndarray:
  """float32 [N, S, S, C]: the image files as the run's evaluation batches held them."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from jaxdl.data import (  # pylint: disable=g-import-not-at-top
    augment,
    image_folder,
    image_stream,
    pipeline,
  )

  size, resize = steps["size"], steps["resize_shorter_side"]
  rows = []
  for path in paths:
    if resize == size:
      rgb = image_folder.decode_image(path, size)
    else:
      rgb = image_stream.decode_centre_crop(path, size, resize)
    if steps["channels"] == 1:  # Pillow's luma; exact for a gray image, whose channels are equal.
      rgb = np.asarray(Image.fromarray(rgb).convert("L"))[..., None]
    rows.append(rgb)
  # As jaxdl.data.pipeline's batches: scaled to [0, 1], then the run's normalisation.
  images = pipeline.scale_pixels(np.stack(rows))
  if steps["mean"] is not None:
    images = augment.normalize(images, steps["mean"], steps["std"])
  return images


def encode_texts(texts: Sequence[str], tokenizer: Any, steps: dict[str, Any]) -> np.ndarray:
  """int32 [N, length]: a classifier's rows, as jaxdl.data.reviews.encode_reviews makes them."""
  from jaxdl.data import reviews  # pylint: disable=g-import-not-at-top

  first_id = tokenizer.cls_id if steps["first"] == "cls" else None
  ids = [tokenizer.encode(text) for text in texts]
  return reviews.pad_rows(ids, steps["length"], steps["pad_id"], first_id)


# ---------------------------------------------------------------- Predicting


def _softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
  exp = np.exp(shifted)
  return exp / exp.sum(axis=-1, keepdims=True)


def _top(probs: np.ndarray, k: int) -> np.ndarray:
  return np.argsort(-probs, kind="stable")[:k]


def _in_batches(artifact: serving.Artifact, inputs: np.ndarray, batch_size: int) -> np.ndarray:
  return np.concatenate(
    [artifact(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
  )


def classify(
  artifact: serving.Artifact,
  inputs: Sequence[str],
  *,
  top_k: int = 5,
  logits: bool = False,
  batch_size: int = 64,
) -> list[dict[str, Any]]:
  """The top `top_k` classes of each image file or text, with probabilities (and the logits)."""
  signature = artifact.signature
  steps = signature["preprocessing"]
  if steps["kind"] == "image":
    rows = load_images(inputs, steps)
  elif steps["kind"] == "text":
    rows = encode_texts(inputs, artifact.tokenizer, steps)
  else:
    raise UserError(
      f"The model reads {signature['inputs'][0]['shape']} arrays, neither square images nor "
      "text, which jaxdl predict cannot prepare; call the exported forward on them directly "
      "(jaxdl.serving shows how)."
    )
  logits_NK = _in_batches(artifact, rows, batch_size)
  names = signature.get("classes") or [str(i) for i in range(logits_NK.shape[-1])]
  results = []
  for given, row_K in zip(inputs, logits_NK):
    probs = _softmax(row_K)
    result = {
      "input": given,
      "top_k": [
        {"class": names[i], "index": int(i), "probability": float(probs[i])}
        for i in _top(probs, top_k)
      ],
    }
    if logits:
      result["logits"] = row_K.astype(float).tolist()
    results.append(result)
  return results


def continue_text(
  artifact: serving.Artifact,
  prompts: Sequence[str],
  *,
  top_k: int = 5,
  logits: bool = False,
  max_new_tokens: int = 32,
  batch_size: int = 64,
) -> list[dict[str, Any]]:
  """Each prompt's top `top_k` next tokens with probabilities, and its greedy continuation of
  `max_new_tokens` tokens."""
  tokenizer, length = artifact.tokenizer, artifact.signature["preprocessing"]["length"]
  contexts = []
  for prompt in prompts:
    ids = [int(i) for i in tokenizer.encode(prompt)]
    if not ids:
      raise UserError(f"The prompt {prompt!r} gives no tokens; give at least one character.")
    contexts.append(ids)
  pad_id = artifact.signature["preprocessing"]["pad_id"]

  def next_logits(contexts):
    """float32 [N, V]: the logits after each context's last token (its last `length`)."""
    windows = [c[-length:] for c in contexts]
    rows = np.full((len(windows), length), pad_id, np.int32)
    for row, window in zip(rows, windows):
      row[: len(window)] = window
    logits_NTV = _in_batches(artifact, rows, batch_size)
    return logits_NTV[np.arange(len(windows)), [len(w) - 1 for w in windows]]

  first_NV = next_logits(contexts)
  logits_NV, new_ids = first_NV, [[] for _ in contexts]
  for i in range(max_new_tokens):
    chosen = np.argmax(logits_NV, axis=-1)
    for ids, generated, token in zip(contexts, new_ids, chosen):
      ids.append(int(token))
      generated.append(int(token))
    if i < max_new_tokens - 1:
      logits_NV = next_logits(contexts)
  results = []
  for prompt, row_V, generated in zip(prompts, first_NV, new_ids):
    probs = _softmax(row_V)
    result = {
      "input": prompt,
      "next_tokens": [
        {"token": tokenizer.decode([i]), "id": int(i), "probability": float(probs[i])}
        for i in _top(probs, top_k)
      ],
      "continuation": tokenizer.decode(generated),
    }
    if logits:
      result["logits"] = row_V.astype(float).tolist()
    results.append(result)
  return results


def predict(
  directory: str,
  inputs: Sequence[str],
  *,
  top_k: int = 5,
  logits: bool = False,
  max_new_tokens: int = 32,
  batch_size: int = 64,
) -> list[dict[str, Any]]:
  """The predictions of the model exported into `directory` for `inputs`: image files for an
  image model, strings for a text model; one dict per input."""
  if top_k < 1 or batch_size < 1 or max_new_tokens < 0:
    raise UserError("--top-k and --batch-size must be at least 1, --max-new-tokens at least 0.")
  artifact = serving.load(directory)
  if not inputs:
    kind = artifact.signature["preprocessing"]["kind"]
    raise UserError(
      f"No inputs: give {'image files' if kind == 'image' else 'texts, or --text-file FILE'} "
      f"for the model in {directory}."
    )
  task = artifact.signature["task"]
  if task == "lm":
    return continue_text(
      artifact,
      inputs,
      top_k=top_k,
      logits=logits,
      max_new_tokens=max_new_tokens,
      batch_size=batch_size,
    )
  return classify(artifact, inputs, top_k=top_k, logits=logits, batch_size=batch_size)

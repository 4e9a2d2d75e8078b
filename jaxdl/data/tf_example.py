"""Reading a serialised tf.train.Example without TensorFlow: the records TFDS and tf.data pipelines
write into ArrayRecord files (data.name=arrayrecord data.decoder=tf_example).

An Example is a map from feature names to lists of bytes, float32 or int64 values. Each feature
becomes a field: a list of one value becomes that value (bytes, float or int), a longer or empty
list a numpy array (float32 or int64; a list of bytes for bytes). Encoded images and UTF-8 text
are bytes, which jaxdl.data.record_images and record_text decode.

The protocol buffer wire format is read directly (tensorflow/core/example/example.proto and
feature.proto: Example.features = 1; Features.feature = 1, a map of key = 1 to Feature = 2;
Feature.bytes_list = 1, float_list = 2, int64_list = 3, each with `repeated value = 1`, packed or
not). Fields other than these are skipped, as protobuf parsers do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxdl.errors import DataError

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def parse_example(data: bytes) -> dict[str, Any]:
  """The features of a serialised tf.train.Example as {name: value} (see the module docstring).

  Raises:
    DataError: `data` is not a well-formed Example.
  """
  try:
    fields = {}
    for number, _, features in _fields(memoryview(bytes(data))):
      if number != 1:
        continue
      for entry_number, _, entry in _fields(features):
        if entry_number == 1:
          name, value = _map_entry(entry)
          fields[name] = value
    return fields
  except (IndexError, ValueError, UnicodeDecodeError) as e:
    raise DataError(
      f"A record is not a serialised tf.train.Example ({e}); set data.decoder to how the "
      f"records are encoded (msgpack for files jaxdl wrote)."
    ) from e


def _map_entry(entry: memoryview) -> tuple[str, Any]:
  name, value = "", None
  for number, _, payload in _fields(entry):
    if number == 1:
      name = bytes(payload).decode("utf-8")
    elif number == 2:
      value = _feature(payload)
  return name, value


def _feature(feature: memoryview) -> Any:
  for number, _, values in _fields(feature):
    if number == 1:
      items = [bytes(v) for n, _, v in _fields(values) if n == 1]
      return items[0] if len(items) == 1 else items
    if number in (2, 3):
      array = _float_list(values) if number == 2 else _int64_list(values)
      return array[0].item() if len(array) == 1 else array
  return np.zeros(0, np.float32)  # A feature with no list: TF reads it as empty.


def _float_list(values: memoryview) -> np.ndarray:
  parts = []
  for number, wire, payload in _fields(values):
    if number != 1:
      continue
    if wire == _BYTES:  # Packed.
      parts.append(np.frombuffer(payload, "<f4"))
    else:
      parts.append(np.frombuffer(payload, "<f4", count=1))
  return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _int64_list(values: memoryview) -> np.ndarray:
  parts = []
  for number, wire, payload in _fields(values):
    if number != 1:
      continue
    if wire == _BYTES:  # Packed: the varints back to back.
      parts.append(_varints(np.frombuffer(payload, np.uint8)))
    else:
      parts.append(np.array([payload], np.uint64).view(np.int64))
  return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _varints(data_B: np.ndarray) -> np.ndarray:
  """int64 [N]: the varints packed in `data_B` (two's complement for negative int64)."""
  if not data_B.size:
    return np.zeros(0, np.int64)
  if data_B[-1] >= 128:
    raise ValueError("a packed varint list ends inside a varint")
  last = data_B < 128  # A varint's last byte has the high bit clear.
  starts = np.concatenate([[0], np.flatnonzero(last)[:-1] + 1])
  position = np.arange(data_B.size) - np.repeat(starts, np.diff(np.append(starts, data_B.size)))
  if position.max() > 9:
    raise ValueError("a varint longer than 10 bytes")
  parts = (data_B & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
  return np.add.reduceat(parts, starts).view(np.int64)


def _fields(message: memoryview):
  """(field number, wire type, payload) of each field of a message, in order; payload is a
  memoryview for length-delimited and fixed-width fields, an int for varints."""
  position, end = 0, len(message)
  while position < end:
    key, position = _varint(message, position)
    number, wire = key >> 3, key & 7
    if wire == _VARINT:
      payload, position = _varint(message, position)
    elif wire == _BYTES:
      length, position = _varint(message, position)
      payload, position = message[position : position + length], position + length
    elif wire in (_FIXED64, _FIXED32):
      size = 8 if wire == _FIXED64 else 4
      payload, position = message[position : position + size], position + size
    else:
      raise ValueError(f"wire type {wire} of field {number} is not one protobuf writes")
    if position > end:
      raise ValueError(f"field {number} runs past the end of its message")
    yield number, wire, payload


def _varint(message: memoryview, position: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    byte = message[position]  # IndexError at the end: a truncated message.
    value |= (byte & 0x7F) << shift
    position += 1
    if byte < 128:
      return value, position
    shift += 7
    if shift > 63:
      raise ValueError("a varint longer than 10 bytes")

"""tf.train.Example message classes built by protobuf from the message definitions of TensorFlow's
example.proto and feature.proto, without TensorFlow: the reference serialiser that
jaxdl.data.tf_example's parser is checked against."""

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


@functools.cache
def example_class(packed: bool = True):
  """The Example class; `packed=False` writes repeated numbers one field each (proto2's way)."""
  field = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(
    name=f"example_{packed}.proto", package=f"ref{int(packed)}", syntax="proto3"
  )
  package = f".{proto.package}"

  def message(name, *fields, parent=None):
    added = (proto.message_type if parent is None else parent.nested_type).add(name=name)
    for number, (field_name, kind, label, type_name) in enumerate(fields, start=1):
      added_field = added.field.add(name=field_name, number=number, type=kind, label=label)
      if type_name:
        added_field.type_name = f"{package}.{type_name}"
      if kind in (field.TYPE_INT64, field.TYPE_FLOAT):
        added_field.options.packed = packed
    return added

  repeated, optional = field.LABEL_REPEATED, field.LABEL_OPTIONAL
  message("BytesList", ("value", field.TYPE_BYTES, repeated, None))
  message("FloatList", ("value", field.TYPE_FLOAT, repeated, None))
  message("Int64List", ("value", field.TYPE_INT64, repeated, None))
  feature = message(
    "Feature",
    ("bytes_list", field.TYPE_MESSAGE, optional, "BytesList"),
    ("float_list", field.TYPE_MESSAGE, optional, "FloatList"),
    ("int64_list", field.TYPE_MESSAGE, optional, "Int64List"),
  )
  feature.oneof_decl.add(name="kind")
  for kind in feature.field:
    kind.oneof_index = 0
  features = message("Features", ("feature", field.TYPE_MESSAGE, repeated, "Features.FeatureEntry"))
  entry = message(
    "FeatureEntry",
    ("key", field.TYPE_STRING, optional, None),
    ("value", field.TYPE_MESSAGE, optional, "Feature"),
    parent=features,
  )
  entry.options.map_entry = True
  message("Example", ("features", field.TYPE_MESSAGE, optional, "Features"))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{proto.package}.Example"))

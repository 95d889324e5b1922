"""Length-delimited protobuf fields written and found without copying their bytes.

Large tensors dominate hessd's messages. Building a message object and then
serializing it copies a tensor's bytes twice (into the message, then out of
it), and reading ``message.data`` copies them once more. These helpers let a
sender join a message's small fields (serialized by protobuf) with the tensor
bytes in one copy, and let a receiver find the tensor bytes inside a received
message as a zero-copy view. The result is ordinary protobuf wire format.

>>> from hessd.v1.tensor_pb2 import ResultChunk
>>> raw = b"".join([ResultChunk(name="h").SerializeToString(), *field_prefix(5, 3), b"abc"])
>>> ResultChunk.FromString(raw).data
b'abc'
>>> rest, value = cut_field(raw, 5)
>>> (ResultChunk.FromString(rest).name, bytes(value))
('h', b'abc')
"""

from __future__ import annotations

from hessd.errors import TensorEncodingError

_LENGTH_DELIMITED = 2
_FIXED_SIZES = {1: 8, 5: 4}


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def field_prefix(number: int, length: int) -> tuple[bytes, bytes]:
    """Tag and length that precede ``length`` bytes of length-delimited field ``number``."""
    return varint(number << 3 | _LENGTH_DELIMITED), varint(length)


def cut_field(raw: bytes, number: int) -> tuple[bytes, memoryview]:
    """``raw`` without length-delimited field ``number``, and a view of that field's value.

    A field that occurs more than once keeps its last value, as protobuf parsers do;
    an absent field gives an empty view.

    Raises:
        TensorEncodingError: ``raw`` is not well-formed protobuf wire format.
    """
    view = memoryview(raw)
    kept: list[memoryview] = []
    value = view[0:0]
    position = 0
    while position < len(view):
        start = position
        key, position = _read_varint(view, position)
        wire_type = key & 7
        if wire_type == 0:
            _, position = _read_varint(view, position)
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _read_varint(view, position)
            if position + length > len(view):
                raise TensorEncodingError("a reply ends inside one of its fields.", field=None)
            if key >> 3 == number:
                value = view[position : position + length]
                position += length
                continue
            position += length
        elif wire_type in _FIXED_SIZES:
            position += _FIXED_SIZES[wire_type]
        else:
            raise TensorEncodingError(f"a reply has wire type {wire_type}.", field=None)
        kept.append(view[start:position])
    if position != len(view):
        raise TensorEncodingError("a reply ends inside one of its fields.", field=None)
    return b"".join(kept), value


def _read_varint(view: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(view) or shift > 63:
            raise TensorEncodingError("a reply holds a malformed varint.", field=None)
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


__all__ = ["cut_field", "field_prefix", "varint"]

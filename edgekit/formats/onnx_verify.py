"""Refuse ONNX models whose tensors keep their data in other files (external data), before ONNX Runtime opens them.

ONNX Runtime resolves external data of a model given as bytes against the current directory, so a bundle's
prediction could depend on whichever `weights.bin` lies there. The device has onnxruntime but not always the
`onnx` package, so this reads the protobuf wire format itself (standard library only, like the bundle loader):
it walks every message that can hold a TensorProto (graph initializers, sparse initializers, Constant and
control-flow attributes with their subgraphs, functions) and refuses a tensor with `data_location` EXTERNAL or
`external_data` entries. Field numbers are onnx.proto's.
"""

from __future__ import annotations

from edgekit.errors import EdgekitError

EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
# message kind -> {field number: the kind of message that field holds}; every path to a TensorProto
HOLDS = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse tensor", 23: "sparse tensor"},
    "sparse tensor": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class _Malformed(Exception):
    """The bytes are not protobuf wire format at some offset."""


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    value, shift = 0, 0
    while pos < end and shift < 70:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos
    raise _Malformed(f"truncated or overlong varint at byte {pos:,}")


def _fields(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """Every field of the message in data[start:end]: (number, wire type, value or start, end of a length field)."""
    found, pos = [], start
    while pos < end:
        tag, pos = _varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            value, pos = _varint(data, pos, end)
            found.append((number, wire, value, pos))
        elif wire == LENGTH:
            length, pos = _varint(data, pos, end)
            found.append((number, wire, pos, pos + length))
            pos += length
        elif wire in (FIXED64, FIXED32):
            pos += 8 if wire == FIXED64 else 4
        else:
            raise _Malformed(f"wire type {wire} at byte {pos:,}")
        if pos > end:
            raise _Malformed(f"field {number} runs past the end of its message (byte {pos:,} of {end:,})")
    return found


def _external_tensor(data: bytes, start: int, end: int) -> str | None:
    """The name of the TensorProto in data[start:end] when its data is external, else None."""
    fields = _fields(data, start, end)
    external = any(number == TENSOR_EXTERNAL_DATA and wire == LENGTH or
                   number == TENSOR_DATA_LOCATION and wire == VARINT and value == EXTERNAL
                   for number, wire, value, _ in fields)
    if not external:
        return None
    names = [data[value:stop].decode("utf-8", "replace") for number, wire, value, stop in fields
             if number == TENSOR_NAME and wire == LENGTH]
    return names[0] if names else "(unnamed)"


def refuse_external_data(data: bytes, where: str, error: type[EdgekitError]) -> None:
    """`error` naming `where` and the tensor when the ONNX model `data` keeps a tensor's data outside itself,
    or when it is not protobuf wire format."""
    stack = [("model", 0, len(data))]
    try:
        while stack:
            kind, start, end = stack.pop()
            if kind == "tensor":
                name = _external_tensor(data, start, end)
                if name is not None:
                    raise error(f"{where}: tensor '{name}' keeps its data outside the model file (ONNX external "
                                "data), which bundles do not allow: save the model with its data inside "
                                "(onnx.save_model(..., save_as_external_data=False))")
                continue
            holds = HOLDS[kind]
            stack.extend((holds[number], value, stop) for number, wire, value, stop in _fields(data, start, end)
                         if wire == LENGTH and number in holds)
    except _Malformed as exc:
        raise error(f"{where}: not a readable ONNX model ({exc})") from None

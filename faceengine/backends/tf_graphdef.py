"""Read the constants of a frozen TensorFlow ``GraphDef`` (.pb) without TensorFlow or protobuf.

Only what is needed to lift weights out of a frozen inference graph is decoded: each ``NodeDef``'s
name, op, inputs, and for ``Const`` nodes the ``value`` tensor (float32 / int32 / int64). The
protobuf wire format is simple and stable, so a ~100-line reader is less dependency and less
surface than pulling tensorflow or tensorboard (whose ``graph_pb2`` needs a matching protobuf)
just to read one file once; the result is cached by the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# tensorflow/core/framework/types.proto
_DT_FLOAT = 1
_DT_INT32 = 3
_DT_INT64 = 9
_NP_DTYPES = {_DT_FLOAT: np.float32, _DT_INT32: np.int32, _DT_INT64: np.int64}


@dataclass
class GraphNode:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    value: np.ndarray | None = None  # only for Const nodes with a supported dtype


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview):
    """Yield (field_number, wire_type, value) for one message; value is int or memoryview."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _parse_shape(buf: memoryview) -> list[int]:
    dims: list[int] = []
    for number, _, value in _fields(buf):
        if number == 2:  # repeated Dim dim
            size = 0
            for dnum, _, dval in _fields(value):
                if dnum == 1:
                    size = dval if dval < (1 << 63) else dval - (1 << 64)
            dims.append(size)
    return dims


def _parse_tensor(buf: memoryview) -> np.ndarray | None:
    dtype = 0
    shape: list[int] = []
    content: bytes | None = None
    float_vals: list[float] = []
    int_vals: list[int] = []
    for number, wire, value in _fields(buf):
        if number == 1:
            dtype = value
        elif number == 2:
            shape = _parse_shape(value)
        elif number == 4:
            content = bytes(value)
        elif number == 5:  # float_val, packed or not
            if wire == 2:
                float_vals.extend(np.frombuffer(bytes(value), dtype="<f4").tolist())
            else:
                float_vals.append(float(np.frombuffer(bytes(value), dtype="<f4")[0]))
        elif number in (7, 10):  # int_val / int64_val
            if wire == 2:
                sub = memoryview(bytes(value))
                p = 0
                while p < len(sub):
                    v, p = _varint(sub, p)
                    int_vals.append(v)
            else:
                int_vals.append(value)
    np_dtype = _NP_DTYPES.get(dtype)
    if np_dtype is None:
        return None
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        arr = np.frombuffer(content, dtype=np.dtype(np_dtype).newbyteorder("<")).astype(np_dtype)
    else:
        vals = float_vals if dtype == _DT_FLOAT else int_vals
        if not vals:
            vals = [0]
        arr = np.array(vals, dtype=np_dtype)
        if arr.size == 1 and count != 1:
            arr = np.full(count, arr[0], dtype=np_dtype)  # TF splat encoding
    return arr.reshape(shape)


def _parse_node(buf: memoryview) -> GraphNode:
    node = GraphNode(name="", op="")
    for number, _, value in _fields(buf):
        if number == 1:
            node.name = bytes(value).decode()
        elif number == 2:
            node.op = bytes(value).decode()
        elif number == 3:
            node.inputs.append(bytes(value).decode())
        elif number == 5:  # map<string, AttrValue> attr: entry {1: key, 2: AttrValue}
            key = ""
            attr: memoryview | None = None
            for enum, _, evalue in _fields(value):
                if enum == 1:
                    key = bytes(evalue).decode()
                elif enum == 2:
                    attr = evalue
            if key == "value" and attr is not None:
                for anum, _, aval in _fields(attr):
                    if anum == 8:  # AttrValue.tensor
                        node.value = _parse_tensor(aval)
    return node


def read_graphdef(path: str | Path) -> list[GraphNode]:
    """Parse a binary GraphDef file into its nodes (in file order)."""
    data = memoryview(Path(path).read_bytes())
    nodes = [_parse_node(value) for number, _, value in _fields(data) if number == 1]
    logger.debug("read %d nodes from %s", len(nodes), path)
    return nodes


def read_constants(path: str | Path) -> dict[str, np.ndarray]:
    """Map ``Const`` node name to its value, for all constants of a supported dtype."""
    return {n.name: n.value for n in read_graphdef(path) if n.op == "Const" and n.value is not None}

"""Tampered model files with a fixed seed, and the child process that opens and runs bundles of them.

`tflite_mutants` rewrites a real `.tflite` file where a tampered one would differ: random bytes (half of them in
the flatbuffer's tables), truncations, uoffsets pointed outside the file, vtables moved, operator / tensor /
buffer / subgraph indices rewritten (out of range, or in range but wrong), huge or negative shape values, tensor
types and builtin codes. `onnx_mutants` flips and truncates an `.onnx` file and moves its initializers to external
data. Run as a script (`python mutations.py JOBS`), it opens each bundle of the JOBS file (one `path<TAB>backend`
per line, backend '-' for the manifest's own) with `load_bundle`, `edgekit.runtime.load` and one run, printing
`START n` before and one JSON line after each job, so a parent sees which job killed it.
"""

from __future__ import annotations

import json
import random
import struct
import sys
import traceback
from collections.abc import Callable
from typing import Any

UOFFSET_SLOTS = {  # per table of the TFLite schema: the vtable slots holding a uoffset (vector, string, table)
    "model": (6, 8, 10, 12, 14, 16, 18), "code": (6,), "subgraph": (4, 6, 8, 10, 12),
    "tensor": (4, 10, 12, 18), "operator": (6, 8, 12, 14, 18, 20), "buffer": (4,), "quantization": (4, 6, 8, 10)}


def minimal_tflite(size: int = 0) -> bytes:
    """The smallest model the bundle loader's verifier accepts (one empty subgraph), zero-padded to `size` bytes:
    a stand-in model file for tests of the bundle format that never run it."""
    import flatbuffers

    from edgekit.formats.tflite_verify import schema

    model = schema().ModelT()
    model.subgraphs = [schema().SubGraphT()]
    builder = flatbuffers.Builder(64)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()).ljust(size, b"\0")


class _Layout:
    """Where the fields of a (valid) .tflite file lie: table starts, uoffsets, indices, shapes, types, codes."""

    def __init__(self, data: bytes) -> None:
        from edgekit.formats.tflite_verify import schema

        self.tables: list[int] = []
        self.uoffsets: list[int] = []
        self.kinds: dict[str, list[tuple[int, str, int]]] = {}  # kind -> (byte position, struct format, range)
        model = schema().Model.GetRootAs(data, 0)
        self._visit(model, "model")
        codes = model.OperatorCodesLength()
        for i in range(codes):
            code = self._visit(model.OperatorCodes(i), "code")  # builtin_code, deprecated_builtin_code
            self._scalar(code, 10, "i", "code", 256)
            self._scalar(code, 4, "b", "code", 128)
        buffers = model.BuffersLength()
        for i in range(buffers):
            self._visit(model.Buffers(i), "buffer")
        for s in range(model.SubgraphsLength()):
            sub = model.Subgraphs(s)
            tab = self._visit(sub, "subgraph")
            tensors = sub.TensorsLength()
            self._elements(tab, 6, "index", tensors)
            self._elements(tab, 8, "index", tensors)
            for t in range(tensors):
                tensor = sub.Tensors(t)
                tab = self._visit(tensor, "tensor")
                self._scalar(tab, 8, "I", "index", buffers)
                self._scalar(tab, 6, "b", "type", 32)
                self._elements(tab, 4, "shape", 0)
                if tensor.Quantization() is not None:
                    self._visit(tensor.Quantization(), "quantization")
            for o in range(sub.OperatorsLength()):
                tab = self._visit(sub.Operators(o), "operator")
                self._scalar(tab, 4, "I", "index", codes)
                self._elements(tab, 6, "index", tensors)
                self._elements(tab, 8, "index", tensors)

    def _visit(self, table: Any, name: str) -> Any:
        """Record the table's start and its uoffsets; its flatbuffers Table, to find its other fields."""
        tab = table._tab
        self.tables.append(tab.Pos)
        for slot in UOFFSET_SLOTS[name]:
            if tab.Offset(slot):
                self.uoffsets.append(tab.Pos + tab.Offset(slot))
        if name in ("model", "subgraph"):  # the elements of its vectors of tables are uoffsets too
            for slot in (6, 8, 12) if name == "model" else (4, 10):
                if tab.Offset(slot):
                    start = tab.Vector(tab.Offset(slot))
                    self.uoffsets += [start + 4 * i for i in range(tab.VectorLen(tab.Offset(slot)))]
        return tab

    def _scalar(self, table: Any, slot: int, fmt: str, kind: str, count: int) -> None:
        if table.Offset(slot):
            self.kinds.setdefault(kind, []).append((table.Pos + table.Offset(slot), fmt, count))

    def _elements(self, table: Any, slot: int, kind: str, count: int) -> None:
        if table.Offset(slot):
            start = table.Vector(table.Offset(slot))
            self.kinds.setdefault(kind, []).extend((start + 4 * i, "i", count)
                                                   for i in range(table.VectorLen(table.Offset(slot))))


def _put(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    limits = {"b": (-128, 127), "B": (0, 255), "i": (-2**31, 2**31 - 1), "I": (0, 2**32 - 1)}[fmt]
    struct.pack_into("<" + fmt, out, pos, max(limits[0], min(limits[1], value)))
    return bytes(out)


def tflite_mutants(data: bytes, rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """`count` tampered copies of the .tflite `data`, each labelled with what was changed."""
    layout = _Layout(data)
    size = len(data)

    def flip() -> tuple[str, bytes]:
        out = bytearray(data)
        structural = rng.random() < 0.5
        for _ in range(rng.randint(1, 3)):
            pos = rng.choice(layout.uoffsets + layout.tables) + rng.randint(0, 3) if structural else rng.randrange(size)
            out[pos] = rng.randrange(256)
        return "flip" + (" (tables)" if structural else ""), bytes(out)

    def truncate() -> tuple[str, bytes]:
        return "truncate", data[:rng.randrange(size)]

    def uoffset() -> tuple[str, bytes]:
        pos = rng.choice(layout.uoffsets)
        value = rng.choice([size - pos + rng.randint(-4, 64), 2**31 - 1, 2**32 - 16, rng.randrange(2**32)])
        return "uoffset out of bounds", _put(data, pos, "I", value)

    def vtable() -> tuple[str, bytes]:
        pos = rng.choice(layout.tables)
        return "vtable moved", _put(data, pos, "i", rng.choice([rng.randint(-size, size), -2**31, 2**31 - 1]))

    def field(kind: str, label: str, values: Callable[[int], list[int]]) -> Callable[[], tuple[str, bytes]]:
        def mutate() -> tuple[str, bytes]:
            pos, fmt, count = rng.choice(layout.kinds[kind])
            return label, _put(data, pos, fmt, rng.choice(values(count)))
        return mutate

    kinds = [flip, flip, truncate, uoffset, uoffset, vtable,
             field("index", "index out of range", lambda n: [-2, -1, n, n + rng.randint(1, 1000), 2**31 - 1]),
             field("index", "index in range, wrong", lambda n: [rng.randrange(max(1, n))]),
             field("shape", "huge or negative shape", lambda n: [0, -1, -7, 65536, 2**31 - 1, rng.randint(2, 999)]),
             field("type", "tensor type", lambda n: [rng.randrange(40)]),
             field("code", "builtin code", lambda n: [rng.randrange(n), -1, 127])]
    return [rng.choice(kinds)() for _ in range(count)]


def onnx_mutants(data: bytes, rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """`count` tampered copies of the .onnx `data`: byte flips, truncations, and initializers moved to external
    data (a `weights.bin` beside the model, as ONNX Runtime would look for it)."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load_model_from_string(data)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    external = model.SerializeToString()

    def flip() -> tuple[str, bytes]:
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return "flip", bytes(out)

    def truncate() -> tuple[str, bytes]:
        return "truncate", data[:rng.randrange(len(data))]

    def outside() -> tuple[str, bytes]:
        return "external data", external

    return [rng.choice([flip, flip, truncate, outside])() for _ in range(count)]


def _job(path: str, backend: str | None) -> dict[str, Any]:
    """Open, load and run one bundle: 'verifier' (load_bundle refused it), 'refused' (the session or the
    interpreter did), 'ran', or 'traceback' for an exception that is not an edgekit error."""
    import numpy as np

    from edgekit.errors import EdgekitError
    from edgekit.formats.bundle import load_bundle
    from edgekit.runtime import load

    step = "verifier"
    try:
        bundle = load_bundle(path)
        step = "refused"
        session = load(bundle, backend)
        session.run(np.zeros(session.input.shape, np.float32))
    except EdgekitError as exc:
        return {"outcome": step, "error": type(exc).__name__, "message": str(exc)[:300]}
    except Exception:  # noqa: BLE001 - what the test counts as a failure
        return {"outcome": "traceback", "traceback": traceback.format_exc()[-2000:]}
    return {"outcome": "ran"}


def main(jobs_file: str) -> None:
    for n, line in enumerate(open(jobs_file, encoding="utf-8").read().splitlines()):
        path, backend = line.split("\t")
        print(f"START {n}", flush=True)
        print(json.dumps(_job(path, None if backend == "-" else backend)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

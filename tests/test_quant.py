"""edgekit's quantize/dequantize give what LiteRT gives running a QUANTIZE (float -> int) or DEQUANTIZE op, bit for
bit, on exact ties, negative ties, near-ties and out-of-range values; and TFLite's reference kernel (which
edgekit does not follow, see edgekit.formats.quant) rounds ties away from zero."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import InputError
from edgekit.formats.quant import dequantize, quantize
from edgekit.formats.tflite import pack_model, schema
from edgekit.runtime.backends import LiteRTAdapter

TYPES = {"float32": 0, "uint8": 3, "int8": 9}  # the schema's TensorType codes


def one_op_model(op: str, size: int, source: str, target: str, scale: float, zero_point: int) -> bytes:
    """A flatbuffer of one `op` from a `source` vector to a `target` vector; the integer side is quantized."""
    s = schema()

    def tensor(name: str, dtype: str) -> object:
        t = s.TensorT()
        t.name, t.type, t.shape, t.buffer = name, TYPES[dtype], np.array([size], np.int32), 0
        if dtype != "float32":
            t.quantization = s.QuantizationParametersT()
            t.quantization.scale = np.array([scale], np.float32)
            t.quantization.zeroPoint = np.array([zero_point], np.int64)
        return t

    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = getattr(s.BuiltinOperator, op)
    code.version = 1
    operator = s.OperatorT()
    operator.opcodeIndex, operator.inputs, operator.outputs = 0, np.array([0], np.int32), np.array([1], np.int32)
    graph = s.SubGraphT()
    graph.tensors, graph.operators = [tensor("x", source), tensor("y", target)], [operator]
    graph.inputs, graph.outputs = np.array([0], np.int32), np.array([1], np.int32)
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], [s.BufferT()]
    return pack_model(model)


def frames(scale: float, zero_point: int) -> np.ndarray:
    """Exact ties of x * (1 / scale) (both signs), their float32 neighbours, values at 0.5 steps, values
    far outside the int8 range, and random ones."""
    rng = np.random.default_rng(0)
    k = np.arange(-300, 300, dtype=np.float32)
    ties = (k + np.float32(0.5)) / (np.float32(1) / np.float32(scale))  # x with x * (1 / scale) near k + 0.5
    exact = ties[(ties * (np.float32(1) / np.float32(scale))) % 1 == 0.5]
    return np.concatenate([exact, ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)),
                           (k * scale / 2).astype(np.float32), np.float32([1e6, -1e6, 3e30, -3e30]) * scale,
                           rng.normal(0, 150 * scale, 2000).astype(np.float32)]).astype(np.float32)


def run(model: bytes, x: np.ndarray, **interpreter: object) -> np.ndarray:
    if not interpreter:  # the backend edgekit's runtime runs, default delegates
        adapter = LiteRTAdapter(model, threads=1)
        adapter.input_buffer[...] = x
        return adapter.invoke()[0].copy()
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=1, **interpreter)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


CASES = [(0.5, 3, "int8"), (0.25, -128, "int8"), (2.0, 0, "int8"), (0.1, -7, "int8"), (0.0039215689, -128, "int8"),
         (1 / 3, 0, "int8"), (0.037, 5, "int8"), (0.02, 128, "uint8")]


@pytest.mark.parametrize(("scale", "zero_point", "dtype"), CASES)
def test_quantize_is_litert_quantize(scale: float, zero_point: int, dtype: str) -> None:
    x = frames(scale, zero_point)
    theirs = run(one_op_model("QUANTIZE", x.size, "float32", dtype, scale, zero_point), x)
    ours = quantize(x, scale, zero_point, dtype)
    assert ours.dtype == theirs.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.min() == np.iinfo(dtype).min and ours.max() == np.iinfo(dtype).max  # out of range: clamped


def test_ties_go_to_even_where_the_reference_kernel_goes_away_from_zero() -> None:
    from ai_edge_litert.interpreter import OpResolverType

    x = np.float32([0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 0.5, -0.5])  # x / 0.5: 0.5, 1.5, 2.5, -0.5, ...
    model = one_op_model("QUANTIZE", x.size, "float32", "int8", 0.5, 0)
    assert quantize(x, 0.5, 0).tolist() == run(model, x).tolist() == [0, 2, 2, 0, -2, -2, 1, -1]
    reference = run(model, x, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    assert reference.tolist() == [1, 2, 3, -1, -2, -3, 1, -1]  # TfLiteRound: half away from zero


@pytest.mark.parametrize(("scale", "zero_point", "dtype"), [(0.1, -7, "int8"), (0.0039215689, -128, "int8"),
                                                            (1 / 3, 0, "int8"), (0.02, 128, "uint8")])
def test_dequantize_is_litert_dequantize(scale: float, zero_point: int, dtype: str) -> None:
    info = np.iinfo(dtype)
    q = np.arange(info.min, info.max + 1).astype(dtype)
    theirs = run(one_op_model("DEQUANTIZE", q.size, dtype, "float32", scale, zero_point), q)
    ours = dequantize(q, scale, zero_point)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(quantize(ours, scale, zero_point, dtype), q)  # and back, exactly


def test_buffers_are_written_in_place_and_non_finite_values_refused() -> None:
    x = np.float32([[0.3, -0.3, 100.0]])
    out, scratch = np.zeros((1, 3), np.int8), np.zeros((1, 3), np.float32)
    assert quantize(x, 0.1, 0, out=out, scratch=scratch) is out and out.tolist() == [[3, -3, 127]]
    target = np.zeros((1, 3), np.float32)
    assert dequantize(out, 0.1, 0, out=target) is target and np.allclose(target, [[0.3, -0.3, 12.7]])
    for bad in (np.nan, np.inf):
        with pytest.raises(InputError, match="cannot quantize NaN or infinity"):
            quantize(np.float32([1.0, bad]), 0.1, 0)
    with pytest.raises(ValueError, match="float32 is not a quantized integer type"):
        quantize(x, 0.1, 0, np.float32)

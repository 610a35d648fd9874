"""Backend adapters, the one way edgekit runs a model: model bytes in, one input buffer filled in place,
`invoke()` -> every raw output.

Each adapter wraps one interpreter (LiteRT, ONNX Runtime, TF Lite Micro) behind the `Adapter` protocol:
`input_buffer` (a numpy array in the model's own input dtype, allocated once; the session writes the next
frame into it), `invoke()` (runs the model on that buffer and returns a tuple of every output, in the model's
order and its own dtypes), `model_tensors()` (the input and every output: name, shape, dtype, scale, zero
point as the model file declares them, for checking the manifest against the file), `memory()` (what the
backend says about its own memory, where it says anything) and `describe()`. The device opens a bundle's
stages with `open_backend` (shapes from the manifest); the host opens a model file it made with `open_model`
and calls it on float input through `FloatRunner` (fidelity checks, tools). Only numpy and the backend package
are imported; never torch.

No interpreter sees a model before it is checked: a `.tflite` file must pass `formats.tflite_verify` (TF Lite Micro
checks nothing and would read outside a tampered file), then prepare under LiteRT's builtin kernels with the
shapes the file declares (`check_prepares`), before LiteRT with XNNPACK or TF Lite Micro opens it; an `.onnx` file
must keep no data in other files (`formats.onnx_verify`; ONNX Runtime would read those from the current
directory). Whatever an interpreter raises while loading or running a model is a BackendError.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit.errors import BackendError, InputError, ModelLoadError
from edgekit.formats.onnx_verify import refuse_external_data
from edgekit.formats.quant import dequantize, quantization, quantize
from edgekit.formats.tflite import external_buffers, is_constant, parse_model, tensor_name
from edgekit.formats.tflite_verify import verify_tflite

BACKENDS = ("litert", "onnxruntime", "tflite-micro")
FORMATS = {"litert": "tflite", "tflite-micro": "tflite", "onnxruntime": "onnx"}  # backend -> model format it runs
ORT_PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # before CPU, when present
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(int32)": "int32"}
TFLM_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
FILE_BACKENDS = {".tflite": "litert", ".onnx": "onnxruntime"}  # model file suffix -> the backend open_model uses
ORT_EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"  # where ORT looks for such data


@dataclass(frozen=True)
class ModelTensor:
    """One input or output as the model file itself declares it (shape entries may be None when dynamic)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None


Signature = tuple[ModelTensor, tuple[ModelTensor, ...]]  # a model's input and every output, in its order


class Adapter(Protocol):
    """A model behind one preallocated input buffer, as the session drives it (see the module docstring)."""

    backend: str
    input_buffer: np.ndarray

    def invoke(self) -> tuple[np.ndarray, ...]: ...

    def model_tensors(self) -> Signature: ...

    def memory(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...


def _litert_module() -> Any:
    """ai-edge-litert's interpreter module, else tflite-runtime's; BackendError when neither is installed."""
    try:
        import ai_edge_litert.interpreter as interpreter
    except ImportError:
        try:
            # tflite-runtime exists for older Raspberry Pi OS images that ship numpy<2: its last release (2.14)
            # is built against NumPy 1.x, and ai-edge-litert is its maintained successor everywhere else.
            import tflite_runtime.interpreter as interpreter
        except ImportError:
            raise BackendError("backend 'litert' is not installed: pip install 'edgekit[runtime-litert]' (it brings "
                               "ai-edge-litert; tflite-runtime is accepted instead where numpy<2)") from None
    return interpreter


def litert_interpreter_class() -> Any:
    """The LiteRT Interpreter class every LiteRT adapter opens models with."""
    return _litert_module().Interpreter


def _tflite_quantization(scales: Any, zero_points: Any) -> tuple[float | None, int | None]:
    """Per-tensor (scale, zero point) from TFLite details, or (None, None) when the tensor is not quantized."""
    scales, zero_points = np.asarray(scales).ravel(), np.asarray(zero_points).ravel()
    if scales.size == 0 or (scales.size == 1 and float(scales[0]) == 0.0):
        return None, None
    if scales.size > 1:
        raise BackendError(f"per-channel quantized model input/output ({scales.size} scales); the runtime takes "
                           "one scale per tensor")
    return float(scales[0]), int(zero_points[0]) if zero_points.size else 0


def _tflite_tensor(details: dict, name: str) -> ModelTensor:
    """A TFLite interpreter's tensor details (LiteRT's or TF Lite Micro's) as a ModelTensor called `name`."""
    q = details.get("quantization_parameters", {})
    scale, zero = _tflite_quantization(q.get("scales", []), q.get("zero_points", []))
    return ModelTensor(name, tuple(int(s) for s in details["shape"]), np.dtype(details["dtype"]).name, scale, zero)


class LiteRTAdapter:
    """A .tflite model under LiteRT (default delegates: XNNPACK on CPU).

    `side_inputs` > 0 accepts that many inputs after the first (a patch stage model's masks), each with a
    buffer in `side_buffers` that every invoke passes along. `input_shape` None: the model's own; outputs
    always have the model's own shapes."""

    backend = "litert"

    def __init__(self, model: bytes, input_shape: tuple[int, ...] | None = None,
                 output_shapes: tuple[tuple[int, ...], ...] | None = None, threads: int | None = None,
                 side_inputs: int = 0, where: str = "the model") -> None:
        interpreter_class = litert_interpreter_class()
        check_prepares(model, verify_tflite(model, where, BackendError), where)
        self._model = model  # the interpreter reads the flatbuffer in place: keep the bytes alive
        try:
            self.interpreter = interpreter_class(model_content=model, num_threads=threads)
            self.interpreter.allocate_tensors()
            inputs, self._outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        except Exception as exc:  # noqa: BLE001 - the wrapper raises ValueError, RuntimeError and others
            raise _refused("LiteRT cannot load", where, exc) from None
        _check_inputs(len(inputs), side_inputs)
        self._in = inputs[0]
        self._in_index, self._out_indices = self._in["index"], tuple(d["index"] for d in self._outs)
        self.input_buffer = np.zeros(input_shape or tuple(self._in["shape"]), self._in["dtype"])
        self.side_buffers = [np.zeros(d["shape"], d["dtype"]) for d in inputs[1:]]
        self._sides = [(d["index"], buffer) for d, buffer in zip(inputs[1:], self.side_buffers)]
        self._set, self._invoke, self._get = (self.interpreter.set_tensor, self.interpreter.invoke,
                                              self.interpreter.get_tensor)

    def model_tensors(self) -> Signature:
        return _tflite_tensor(self._in, self._in["name"]), tuple(_tflite_tensor(d, d["name"]) for d in self._outs)

    def invoke(self) -> tuple[np.ndarray, ...]:
        try:
            for index, buffer in self._sides:
                self._set(index, buffer)
            self._set(self._in_index, self.input_buffer)
            self._invoke()
            return tuple([self._get(index) for index in self._out_indices])  # a list: tuple() allocates exactly
        except (RuntimeError, ValueError) as exc:  # a kernel failing at run time, values its input type cannot hold
            raise _refused("LiteRT cannot run", "the model", exc) from None

    def memory(self) -> dict[str, Any]:
        """Bytes of the model's non-constant tensors (summed, before LiteRT's arena reuses memory)."""
        try:
            model = parse_model(self._model, "the stage model")
            constant = {i for i in range(len(model.subgraphs[0].tensors)) if is_constant(model, i)}
        except ModelLoadError:  # no schema bindings (tflite-runtime installs): every tensor counts
            constant = set()
        total = 0
        for d in self.interpreter.get_tensor_details():
            if d["index"] in constant or not len(d["shape"]):
                continue
            total += int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize
        return {"kind": "activation tensors, summed (LiteRT reuses memory within them)", "bytes": total}

    def describe(self) -> str:
        return "LiteRT (default delegates)"


def _refused(what: str, where: str, exc: BaseException) -> BackendError:
    """The BackendError for an interpreter's own exception: what failed on which model, and its message."""
    return BackendError(f"{what} {where} ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})")


def _check_inputs(inputs: int, side_inputs: int) -> None:
    """The model takes one input (plus `side_inputs` masks, for a patch stage model); it may have any outputs."""
    if inputs != 1 + side_inputs:
        expected = "one input" if not side_inputs else f"{1 + side_inputs} inputs (the window and its masks)"
        raise BackendError(f"the model has {inputs} inputs; the runtime runs models with {expected}")


class OrtAdapter:
    """An .onnx model under ONNX Runtime, bound once to preallocated input and output buffers (IOBinding).

    A shape None is the model's own, which must then be static; `output_shapes` gives one per output."""

    backend = "onnxruntime"

    def __init__(self, model: bytes, input_shape: tuple[int, ...] | None = None,
                 output_shapes: tuple[tuple[int, ...], ...] | None = None, threads: int | None = None,
                 providers: list[str] | None = None, where: str = "the model") -> None:
        refuse_external_data(model, where, BackendError)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("backend 'onnxruntime' is not installed: pip install 'edgekit[runtime-onnx]' "
                               "(on Jetson, NVIDIA's onnxruntime-gpu wheel instead)") from None
        self.providers = providers or choose_providers(ort.get_available_providers())
        options = ort.SessionOptions()
        options.add_session_config_entry(ORT_EXTERNAL_DATA_FOLDER, os.devnull)  # no folder holds external data
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(model, options, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad models
            raise _refused("ONNX Runtime cannot load", where, exc) from None
        inputs, self._outs = self.session.get_inputs(), self.session.get_outputs()
        _check_inputs(len(inputs), 0)
        if output_shapes is not None and len(output_shapes) != len(self._outs):
            raise BackendError(f"the model has {len(self._outs)} outputs, {len(output_shapes)} output shapes given")
        self._in = inputs[0]
        self.input_buffer = np.zeros(input_shape or _static_shape(self._in), self._numpy_type(self._in.type))
        self.output_buffers = tuple(np.zeros(shape or _static_shape(out), self._numpy_type(out.type))
                                    for out, shape in zip(self._outs, output_shapes or (None,) * len(self._outs)))
        self._binding = self.session.io_binding()
        self._binding.bind_cpu_input(self._in.name, self.input_buffer)
        for out, buffer in zip(self._outs, self.output_buffers):
            self._binding.bind_output(out.name, "cpu", 0, buffer.dtype, list(buffer.shape), buffer.ctypes.data)
        self._run = self.session.run_with_iobinding

    @staticmethod
    def _numpy_type(ort_type: str) -> str:
        if ort_type not in ORT_TYPES:
            raise BackendError(f"model input/output type {ort_type} is not one the runtime handles "
                               f"({', '.join(ORT_TYPES)})")
        return ORT_TYPES[ort_type]

    def model_tensors(self) -> Signature:
        def describe(arg: Any) -> ModelTensor:
            shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
            return ModelTensor(arg.name, shape, self._numpy_type(arg.type))

        return describe(self._in), tuple(describe(out) for out in self._outs)

    def invoke(self) -> tuple[np.ndarray, ...]:
        try:
            self._run(self._binding)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types when a kernel fails
            raise _refused("ONNX Runtime cannot run", "the model", exc) from None
        return self.output_buffers

    def memory(self) -> dict[str, Any]:
        return {"kind": "ONNX Runtime does not report its arena", "bytes": None}

    def describe(self) -> str:
        return "ONNX Runtime (" + ", ".join(self.session.get_providers()) + ")"


def _static_shape(arg: Any) -> tuple[int, ...]:
    """An ONNX Runtime input's or output's shape, which must have no symbolic dimensions."""
    if not all(isinstance(d, int) for d in arg.shape):
        raise BackendError(f"'{arg.name}' has dynamic shape {arg.shape}; pass the shape to run it with")
    return tuple(arg.shape)


def choose_providers(available: list[str]) -> list[str]:
    """TensorRT, then CUDA where this onnxruntime build has them (Jetson, GPU servers), CPU always last."""
    return [p for p in ORT_PREFERRED_PROVIDERS if p in available] + ["CPUExecutionProvider"]


class TflmAdapter:
    """A .tflite model under the TF Lite Micro interpreter on the host: checks an MCU bundle before flashing.

    `side_inputs` and `input_shape` as for `LiteRTAdapter`."""

    backend = "tflite-micro"

    def __init__(self, model: bytes, input_shape: tuple[int, ...] | None = None,
                 output_shapes: tuple[tuple[int, ...], ...] | None = None, threads: int | None = None,
                 arena_bytes: int | None = None, side_inputs: int = 0, where: str = "the model") -> None:
        try:
            from tflite_micro.python.tflite_micro import runtime
        except ImportError:
            raise BackendError("backend 'tflite-micro' is not installed: pip install tflite-micro "
                               "(part of 'edgekit[convert]')") from None
        check_prepares(model, verify_tflite(model, where, BackendError), where)  # TFLM itself checks nothing
        outside = external_buffers(model)
        if outside:  # TFLM would read those weights as garbage, without an error
            raise BackendError(f"TF Lite Micro does not read the {outside} buffers this model keeps "
                               "past its flatbuffer (by offset); repack it with the data inline "
                               "(edgekit.formats.tflite.inline_buffers, as edgekit's compile does)")
        self.arena_bytes = arena_bytes or generous_arena_bytes(len(model))
        self._model = model
        sub = parse_model(model, where).subgraphs[0]  # TFLM's interpreter reports no names, no counts
        _check_inputs(len(sub.inputs), side_inputs)
        self._in_name = tensor_name(sub.tensors[sub.inputs[0]])
        self._out_names = [tensor_name(sub.tensors[i]) for i in sub.outputs]
        self._outputs = range(len(sub.outputs))
        try:  # the wrapper raises RuntimeError, ValueError, IndexError, ... for models it cannot take
            self.interpreter = runtime.Interpreter.from_bytes(model, arena_size=self.arena_bytes)
            self._in = self.interpreter.get_input_details(0)
            self._outs = [self.interpreter.get_output_details(i) for i in self._outputs]
            side_details = [self.interpreter.get_input_details(i) for i in range(1, 1 + side_inputs)]
        except Exception as exc:  # noqa: BLE001 - see above
            raise _refused(f"TF Lite Micro (a {self.arena_bytes:,}-byte arena) cannot load", where, exc) from None
        self.input_buffer = np.zeros(input_shape or tuple(self._in["shape"]), self._in["dtype"])
        self.side_buffers = [np.zeros(d["shape"], d["dtype"]) for d in side_details]
        self._arena_used: int | None = None

    def model_tensors(self) -> Signature:
        return (_tflite_tensor(self._in, self._in_name),
                tuple(_tflite_tensor(d, name) for d, name in zip(self._outs, self._out_names)))

    def invoke(self) -> tuple[np.ndarray, ...]:
        try:
            for index, buffer in enumerate(self.side_buffers, 1):
                self.interpreter.set_input(buffer, index)
            self.interpreter.set_input(self.input_buffer, 0)
            self.interpreter.invoke()
            return tuple([self.interpreter.get_output(i) for i in self._outputs])
        except Exception as exc:  # noqa: BLE001 - the wrapper raises RuntimeError, ValueError, IndexError, ...
            raise _refused("TF Lite Micro cannot run", "the model", exc) from None

    def memory(self) -> dict[str, Any]:
        """The arena TFLM really used, from its allocation report (printed by C++ to fd 2, captured here)."""
        if self._arena_used is None:
            self.invoke()
            with CapturedStderr() as captured:
                self.interpreter.print_allocations()
            found = TFLM_ARENA_TOTAL.search(captured.text)
            self._arena_used = int(found.group(1)) if found else -1
        used = self._arena_used if self._arena_used >= 0 else None
        return {"kind": f"TFLM tensor arena used (of {self.arena_bytes:,} B reserved)", "bytes": used}

    def describe(self) -> str:
        return "TF Lite Micro (reference kernels, host build)"


def check_prepares(model: bytes, shapes: tuple[tuple[int, ...], ...], where: str) -> None:
    """Refuse a TFLite model that LiteRT's builtin kernels (no delegate) cannot prepare, or whose tensor shapes as
    they infer them differ from `shapes`, the file's (`verify_tflite` gives them). Both interpreters trust what
    these checks cover: XNNPACK infers no shapes and TF Lite Micro checks little, and each crashes (abort, division
    by zero, bad read) on models the builtin kernels refuse; so both take a model only after this."""
    module = _litert_module()
    resolver = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = module.Interpreter(model_content=model, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
        inferred = {d["index"]: tuple(int(n) for n in d["shape"]) for d in interpreter.get_tensor_details()}
    except Exception as exc:  # noqa: BLE001 - the wrapper raises ValueError, RuntimeError and others
        raise _refused("LiteRT's builtin kernels cannot prepare", where, exc) from None
    for index, in_file in enumerate(shapes):
        if inferred.get(index, in_file) != in_file:
            raise BackendError(f"{where}: tensor {index} has shape {list(in_file)} in the file but its operator "
                               f"gives {list(inferred[index])}")


class CapturedStderr:
    """Redirect file descriptor 2 to a temp file, since TFLM's C++ code prints there, not to sys.stderr.

    `text` holds what was written once the block exits, also when it exits with an exception.
    """

    text = ""

    def __enter__(self) -> CapturedStderr:
        sys.stderr.flush()
        self._sink = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._sink.fileno(), 2)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._sink.seek(0)
        self.text = self._sink.read().decode(errors="replace")
        self._sink.close()


def generous_arena_bytes(model_bytes: int) -> int:
    """A TFLM arena to load with on a host: 10x the model or 4 MiB, whichever is larger (host RAM is cheap)."""
    return max(10 * model_bytes, 4 * 1024 * 1024)


ADAPTERS = {"litert": LiteRTAdapter, "onnxruntime": OrtAdapter, "tflite-micro": TflmAdapter}


def open_backend(backend: str, model: bytes, input_shape: tuple[int, ...],
                 output_shapes: tuple[tuple[int, ...], ...] | None = None, threads: int | None = None) -> Adapter:
    """The adapter for `backend` over `model` (the file's bytes), with buffers for the given shapes (outputs:
    one shape per output, or None for the model's own)."""
    if backend not in ADAPTERS:
        raise BackendError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    return ADAPTERS[backend](model, input_shape, output_shapes, threads)


def open_model(path: str | Path, threads: int | None = 1) -> Adapter:
    """A model file on the host, buffers in the model's own shapes: LiteRT for .tflite, ONNX Runtime's CPU
    provider for .onnx (the same numbers on every host), one thread unless told otherwise."""
    path = Path(path)
    backend = FILE_BACKENDS.get(path.suffix)
    if backend is None:
        raise ModelLoadError(f"{path}: no backend runs '{path.suffix}' files (expected .tflite or .onnx)")
    try:
        model = path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    if backend == "onnxruntime":
        return OrtAdapter(model, threads=threads, providers=["CPUExecutionProvider"], where=str(path))
    return LiteRTAdapter(model, threads=threads, where=str(path))


class FloatRunner:
    """An adapter called like the float model it came from: float input quantized with the model's own input
    scale and zero point (input already in the model's integer dtype passes as is), the outputs dequantized to
    float32, new arrays per call. How the host checks a model file's fidelity and tools time it.

    Calling it gives the output of a single-output model; `run_all` gives every output, in the model's order."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.input, self.outputs = adapter.model_tensors()
        self._buffer = adapter.input_buffer
        self._in, self._out = quantization(self.input), [quantization(out) for out in self.outputs]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(self.outputs) != 1:
            raise BackendError(f"the model has {len(self.outputs)} outputs ("
                               f"{', '.join(out.name for out in self.outputs)}); call run_all() for all of them")
        return self.run_all(x)[0]

    def run_all(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every output of the model for `x`, dequantized, in the model's order."""
        if x.shape != self._buffer.shape:
            raise InputError(f"input '{self.input.name}' takes shape {self._buffer.shape}, got {x.shape}")
        if self._in is not None and x.dtype.kind == "f":
            quantize(x, *self._in, out=self._buffer)
        else:
            np.copyto(self._buffer, x, casting="same_kind")
        return tuple(dequantize(raw, *params) if params is not None else raw.astype(np.float32)
                     for raw, params in zip(self.adapter.invoke(), self._out))

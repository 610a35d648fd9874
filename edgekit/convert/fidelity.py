"""How much INT8 cost: FP32 reference against the quantized model on the same held-out inputs, output by output."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import ConversionError
from edgekit.progress import progress

Outputs = np.ndarray | tuple[np.ndarray, ...] | list[np.ndarray] | Mapping[str, np.ndarray]
Runner = Callable[[np.ndarray], Outputs]


@dataclass(frozen=True)
class OutputError:
    """How far one output of the quantized model is from the float model's: SQNR and absolute error."""

    name: str
    sqnr_db: float | None  # None when the outputs are identical (no noise to measure)
    max_abs_error: float
    mean_abs_error: float
    quantized_constant: bool = False  # the quantized model gave every input the same output, the float one did not


@dataclass(frozen=True)
class Fidelity:
    """Every output's error of INT8 against FP32; top-1 agreement (and accuracies when labels exist) of the
    classifier-shaped output, when there is one."""

    samples: int
    top1_agreement: float | None  # None: no output is N x classes
    fp32_accuracy: float | None
    int8_accuracy: float | None
    max_abs_error: float  # over all outputs
    mean_abs_error: float  # over all elements of all outputs
    outputs: tuple[OutputError, ...] = ()
    classifier: str | None = None  # the output top-1 is measured on

    @property
    def accuracy_drop_points(self) -> float | None:
        """FP32 minus INT8 top-1 accuracy in percentage points."""
        if self.fp32_accuracy is None or self.int8_accuracy is None:
            return None
        return 100.0 * (self.fp32_accuracy - self.int8_accuracy)


def output_arrays(outputs: Outputs) -> list[tuple[str, np.ndarray]]:
    """A model's outputs as (name, array) in the model's order: a dict's keys, else output / output_<i>."""
    if isinstance(outputs, np.ndarray):
        return [("output", outputs)]
    if isinstance(outputs, Mapping):
        return [(str(k), np.asarray(v)) for k, v in outputs.items()]
    return [(f"output_{i}", np.asarray(v)) for i, v in enumerate(outputs)]


def measure_fidelity(reference: Runner, quantized: Runner, inputs: np.ndarray,
                     labels: np.ndarray | None = None) -> Fidelity:
    """Run both models one sample at a time (batch 1, as deployed) and compare their outputs, by position,
    named as the reference names them.

    Top-1 is measured on the first classifier-shaped output (2-D, more than one class); labels need one. An output
    the quantized model gives every input alike while the float model's varies is marked `quantized_constant`.
    """
    ref_runs = [output_arrays(reference(x[None])) for x in inputs]
    q8_runs = [output_arrays(quantized(x[None])) for x in inputs]
    if len(ref_runs[0]) != len(q8_runs[0]):
        raise ConversionError(f"the float model has {len(ref_runs[0])} outputs, the quantized one "
                              f"{len(q8_runs[0])}; expected the same outputs")
    errors, abs_sum, elements = [], 0.0, 0
    top1 = fp32_acc = int8_acc = classifier = None
    for i, (name, _) in enumerate(ref_runs[0]):
        ref = np.concatenate([run[i][1] for run in ref_runs]).astype(np.float64)
        q8 = np.concatenate([run[i][1] for run in q8_runs]).astype(np.float64)
        if ref.shape != q8.shape:
            raise ConversionError(f"output '{name}': the float model gives shape {ref.shape}, the quantized one "
                                  f"{q8.shape}; expected the same")
        error = np.abs(ref - q8)
        noise = float(np.sum(error ** 2))
        sqnr = 10 * np.log10(max(float(np.sum(ref ** 2)), 1e-30) / noise) if noise else None
        constant = len(inputs) > 1 and bool(np.all(q8 == q8[:1])) and not bool(np.all(ref == ref[:1]))
        errors.append(OutputError(name, None if sqnr is None else float(sqnr), float(error.max()),
                                  float(error.mean()), constant))
        abs_sum, elements = abs_sum + float(error.sum()), elements + error.size
        if classifier is None and ref.ndim == 2 and ref.shape[1] > 1:
            classifier, ref_top, q8_top = name, ref.argmax(axis=1), q8.argmax(axis=1)
            top1 = float(np.mean(ref_top == q8_top))
            if labels is not None:
                fp32_acc, int8_acc = float(np.mean(ref_top == labels)), float(np.mean(q8_top == labels))
    return Fidelity(len(inputs), top1, fp32_acc, int8_acc, max(e.max_abs_error for e in errors),
                    abs_sum / max(elements, 1), tuple(errors), classifier)


def onnx_layer_sqnr(float_model: str | Path, qdq_model: str | Path, inputs: np.ndarray) -> dict[str, float]:
    """SQNR in dB of every activation of a QDQ model against the float model, worst first.

    Uses onnxruntime.quantization.qdq_loss_debug: both models are augmented to output their
    intermediate tensors, run on `inputs` and matched by tensor name.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import qdq_loss_debug as debug

    name = onnx.load(str(float_model)).graph.input[0].name
    collected = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, model in enumerate((float_model, qdq_model)):
            augmented = Path(tmp) / f"augmented_{index}.onnx"
            debug.modify_model_output_intermediate_tensors(str(model), str(augmented))
            reader = ArrayReader(name, inputs)
            collected.append(debug.collect_activations(str(augmented), reader))
    matching = debug.create_activation_matching(collected[1], collected[0])
    errors = debug.compute_activation_error(matching)
    sqnr = {tensor: float(err["xmodel_err"]) for tensor, err in errors.items() if "xmodel_err" in err}
    return dict(sorted(sqnr.items(), key=lambda item: item[1]))


class ArrayReader:
    """onnxruntime CalibrationDataReader over an array, one sample per batch, optionally with progress."""

    def __init__(self, name: str, data: np.ndarray, progress_label: str | None = None) -> None:
        feeds = ({name: x[None]} for x in data)
        self.samples = progress(feeds, progress_label, len(data)) if progress_label else feeds

    def get_next(self) -> dict | None:
        return next(self.samples, None)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.get_next, None)

"""Float islands found before calibration: the PT2E annotation of the exported model, read against the op table.

Preparing a model for PT2E quantization takes seconds; calibration and conversion take minutes. An op the
quantizer leaves unannotated has no int8 observer around it, so TFLite keeps it float (or, like GELU, in a
kernel TF Lite Micro does not have): an MCU compile is refused here, naming the torch module and its type.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from edgekit.convert.config import Int8Config
from edgekit.convert.quantize import converter_errors, int8_quantizer
from edgekit.convert.torch_model import TorchModel, model_label
from edgekit.errors import ConversionError
from edgekit.graph.ops import ATEN_OPS, Kind, op_info
from edgekit.targets import Device


@dataclass(frozen=True)
class FloatOp:
    """One op of a torch model the INT8 quantizer leaves float: where it sits and what it is."""

    module: str  # the torch module path ("features.3.act"); "" for the model's own forward
    module_type: str  # "torch.nn.GELU"
    aten: str  # "aten.gelu.default"

    def describe(self) -> str:
        """'features.3.act (torch.nn.GELU): aten.gelu has no int8 TF Lite Micro kernel; replace ... or target rpi4'."""
        op = ATEN_OPS.get(self.aten, "unknown")
        info, aten = op_info(op), self.aten.rsplit(".", 1)[0]
        short = self.module_type.rsplit(".", 1)[-1]
        why = (f"{aten} has no int8 TF Lite Micro kernel" if info.tflm_kernel is None
               else f"edgekit's INT8 quantizer has no int8 rule for {aten}, so it would stay float")
        fix = (f"replace {short} with Hardswish or ReLU" if info.kind is Kind.POINTWISE
               else "rewrite it with ops that have int8 kernels")
        where = f"{self.module} ({self.module_type})" if self.module else f"the model's forward ({self.module_type})"
        return f"{where}: {why}; {fix}, or target a device with a float runtime (e.g. rpi4)"


def float_ops(model: TorchModel, config: Int8Config) -> list[FloatOp]:
    """The ops of `model` that PT2E preparation with edgekit's quantizer leaves unannotated: each reads an
    activation and produces a float tensor, so no int8 observer surrounds it."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    with converter_errors(f"{model_label(model)}: INT8 pre-flight (torch.export and PT2E annotation)"):
        exported = torch.export.export(model.eval(), (torch.zeros(model.input_shape),)).module()
        prepared = prepare_pt2e(exported, int8_quantizer(config))
    activations: set[Any] = set()
    found = []
    for node in prepared.graph.nodes:
        if node.op == "placeholder" or (node.op in ("call_function", "call_module")
                                        and any(a in activations for a in node.all_input_nodes)):
            activations.add(node)
        value = node.meta.get("val")
        if node not in activations or node.op != "call_function" or node.target is operator.getitem \
                or "quantization_annotation" in node.meta \
                or not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue
        stack = list(node.meta.get("nn_module_stack", {}).values())
        path, module_type = stack[-1] if stack else ("", type(model.module))
        found.append(FloatOp(_module_path(path), _type_name(module_type), str(node.target)))
    return found


def check_int8_preflight(model: Any, name: str, device: Device, config: Int8Config) -> None:
    """MCU target, torch model, TFLite: a ConversionError naming each op that would stay float, before any
    calibration (an MCU runtime has no float kernels). Other targets keep their islands, reported after conversion."""
    if device.device_class != "mcu" or config.format != "tflite" or not isinstance(model, TorchModel):
        return
    ops = float_ops(model, config)
    if ops:
        more = f" (and {len(ops) - 1} more float ops)" if len(ops) > 1 else ""
        raise ConversionError(f"{name}: cannot be full integer for {device.name}: {ops[0].describe()}{more}")


def module_types(model: Any) -> dict[str, str] | None:
    """Each torch module's path and type ("features.3.act" -> "torch.nn.GELU"); None for a model file."""
    if not isinstance(model, TorchModel):
        return None
    return {path: _type_name(type(module)) for path, module in model.module.named_modules()}


def _module_path(path: str) -> str:
    """torch.export's module path ("L['self'].features[3].act" or "features.3.act") as "features.3.act"."""
    for prefix in ("L['self'].", "L__self__."):
        path = path.removeprefix(prefix)
    return path.replace("[", ".").replace("]", "").replace("'", "")


def _type_name(module_type: Any) -> str:
    """'torch.nn.modules.activation.GELU' (or the class) as 'torch.nn.GELU' when torch.nn exports it."""
    import torch

    qualified = module_type if isinstance(module_type, str) else f"{module_type.__module__}.{module_type.__qualname__}"
    short = qualified.rsplit(".", 1)[-1]
    if qualified.startswith("torch.nn.modules.") and getattr(torch.nn, short, None) is not None:
        return f"torch.nn.{short}"
    return qualified

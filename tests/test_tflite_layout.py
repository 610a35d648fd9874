"""Layout round trips (TRANSPOSE, PAD or per-element ops, TRANSPOSE back) folded out of converted .tflite files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from helpers import export_tflite
from torch import nn

from edgekit.convert.tflite_layout import Folded, fold_layout_round_trips
from edgekit.runtime.backends import litert_interpreter_class


class SamePadNet(nn.Module):
    """Hugging Face's TF-style "same" padding: an explicit NCHW `F.pad` before a stride-2 conv, channels-last I/O."""

    input_shape = (1, 8, 8, 3)

    def __init__(self, expose_padded: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.expose_padded = expose_padded

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = x.permute(0, 3, 1, 2)
        padded = F.pad(torch.relu(x), (0, 1, 0, 1))
        y = self.conv(padded).permute(0, 2, 3, 1)
        return (y, padded) if self.expose_padded else y  # a padded NCHW output: its round trip must stay


def _ops(path: Path) -> Counter:
    interpreter = litert_interpreter_class()(model_path=str(path))
    return Counter(op["op_name"] for op in interpreter._get_ops_details())


def _output(path: Path, x: np.ndarray) -> np.ndarray:
    interpreter = litert_interpreter_class()(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_pad_between_transposes_becomes_one_pad_in_the_outer_layout(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = export_tflite(SamePadNet().eval(), tmp_path / "same_pad.tflite")
    before = _ops(path)
    original = path.read_bytes()
    assert before["TRANSPOSE"] >= 2 and before["PAD"] == 1  # what litert-torch writes for this net
    folded = fold_layout_round_trips(path)
    after = _ops(path)
    assert folded.rewritten and folded.transposes_removed == before["TRANSPOSE"] - after["TRANSPOSE"] >= 2
    assert after["PAD"] == 1 and after["CONV_2D"] == before["CONV_2D"]
    (tmp_path / "original.tflite").write_bytes(original)
    for seed in range(3):
        x = np.random.default_rng(seed).normal(size=SamePadNet.input_shape).astype(np.float32)
        assert np.array_equal(_output(path, x), _output(tmp_path / "original.tflite", x))


def test_a_round_trip_through_a_graph_output_is_left_alone(tmp_path: Path) -> None:
    path = export_tflite(SamePadNet(expose_padded=True).eval(), tmp_path / "exposed.tflite")
    before, original = _ops(path), path.read_bytes()
    assert before["TRANSPOSE"] >= 2 and before["PAD"] == 1
    assert fold_layout_round_trips(path) == Folded(0, False)
    assert path.read_bytes() == original

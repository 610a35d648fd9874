"""MCU pack: arena measured under the real TF Lite Micro, the pack's arena runs the model, fit verdicts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgekit.convert.config import Int8Config
from edgekit.convert.mcu import (
    TFLM_ADD_METHODS,
    TFLM_BUILTIN_OPS,
    check_mcu_fit,
    generous_arena_bytes,
    measure_arena,
    model_ops,
    unsupported_tflm_ops,
    write_mcu_pack,
)
from edgekit.convert.quantize import quantize
from edgekit.errors import ConversionError, ModelLoadError
from edgekit.formats import quant
from edgekit.models import create_model
from edgekit.models.digits import load_digits_split
from edgekit.runtime.backends import open_model
from edgekit.targets import load_target


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x_train, *_ = load_digits_split()
    path = tmp_path_factory.mktemp("mcu") / "digits_int8.tflite"
    return quantize(create_model("digits_cnn", pretrained=True), x_train[:100], path, Int8Config())


@pytest.fixture(scope="module")
def pack(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    arena = measure_arena(digits)
    out = tmp_path_factory.mktemp("pack")
    write_mcu_pack(digits, out, arena)
    return arena, out


def _digit_int8(path: Path) -> np.ndarray:
    """A held-out digit quantized with the model's own input scale and zero point."""
    *_, x_test, _ = load_digits_split()
    model_in, _ = open_model(path).model_tensors()
    assert model_in.scale is not None and model_in.zero_point is not None
    return quant.quantize(x_test[:1], model_in.scale, model_in.zero_point)


def _tflm_output(path: Path, arena_size: int, x: np.ndarray) -> np.ndarray | None:
    """Run the model under TF Lite Micro with exactly `arena_size` bytes; None when TFLM refuses."""
    from tflite_micro.python.tflite_micro import runtime

    try:
        interpreter = runtime.Interpreter.from_file(str(path), arena_size=arena_size)
        interpreter.set_input(x, 0)
        interpreter.invoke()
    except RuntimeError:
        return None
    return interpreter.get_output(0)


def _litert_output(path: Path, x: np.ndarray) -> np.ndarray:
    """The int8 output of LiteRT for the same int8 input."""
    adapter = open_model(path)
    adapter.input_buffer[...] = x
    (output,) = adapter.invoke()
    return output


def test_builtin_op_list_matches_the_installed_tflm_kernels() -> None:
    from ai_edge_litert import schema_py_generated as schema
    from tflite_micro.python.tflite_micro import _runtime

    binary = Path(_runtime.__file__).read_bytes()  # the compiled TFLM the Python interpreter runs
    builtins = {name for name in vars(schema.BuiltinOperator) if not name.startswith("_")}
    kernels = {m.decode() for m in re.findall(rb"Register_([A-Z0-9_]+?)Ev", binary)} & builtins
    assert kernels == TFLM_BUILTIN_OPS
    assert all(method.startswith("Add") for method in TFLM_ADD_METHODS.values())


@pytest.mark.slow
def test_arena_is_measured_below_the_generous_probe(digits: Path, pack: tuple[int, Path]) -> None:
    arena, _ = pack
    assert 0 < arena < generous_arena_bytes(digits.stat().st_size)
    stderr_before = os.fstat(2)
    with pytest.raises(ConversionError, match=f"{digits.name}.*arena"):
        measure_arena(digits, arena_size=arena // 2)
    after = os.fstat(2)  # fd 2 is given back after TFLM's report is captured, also on failure
    assert (after.st_dev, after.st_ino) == (stderr_before.st_dev, stderr_before.st_ino)


@pytest.mark.slow
def test_model_runs_under_tflm_with_the_arena_h_size(digits: Path, pack: tuple[int, Path]) -> None:
    arena, out = pack
    written = int(re.search(r"constexpr size_t kTensorArenaSize = (\d+);", (out / "arena.h").read_text()).group(1))
    assert arena < written
    x = _digit_int8(digits)
    tflm = _tflm_output(digits, written, x)
    assert tflm is not None and tflm.dtype == np.int8
    assert np.abs(tflm.astype(int) - _litert_output(digits, x).astype(int)).max() <= 1
    assert _tflm_output(digits, arena // 2, x) is None


@pytest.mark.slow
def test_op_resolver_lists_exactly_the_model_ops(digits: Path, pack: tuple[int, Path]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    text = (pack[1] / "op_resolver.h").read_text()
    by_method = {method: op for op, method in TFLM_ADD_METHODS.items()}
    registered = [by_method[m] for m in re.findall(r"resolver\.(Add\w+)\(\)", text)]
    litert = Interpreter(model_path=str(digits))
    litert.allocate_tensors()
    used = {op["op_name"] for op in litert._get_ops_details()} - {"DELEGATE"}
    assert sorted(registered) == sorted(used) == sorted(model_ops(digits))
    assert f"MicroMutableOpResolver<{len(used)}>" in text
    assert unsupported_tflm_ops(digits) == []


@pytest.mark.slow
def test_model_array_round_trips(digits: Path, pack: tuple[int, Path]) -> None:
    data, out = digits.read_bytes(), pack[1]
    header, source = (out / "model_data.h").read_text(), (out / "model_data.cc").read_text()
    assert f"g_model_data_len = {len(data)};" in header
    assert "alignas(16) const unsigned char g_model_data" in source
    body = source[source.index("{"):source.rindex("}")]
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body)) == data
    if shutil.which("g++"):
        (out / "main.cc").write_text('#include "model_data.h"\n#include "arena.h"\n'
                                     "alignas(16) static unsigned char arena[kTensorArenaSize];\n"
                                     "int main() { return g_model_data[4] == 'T' && arena[0] == 0 ? 0 : 1; }\n")
        subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-o", str(out / "main"), str(out / "main.cc"),
                        str(out / "model_data.cc")], check=True)
        assert subprocess.run([str(out / "main")]).returncode == 0


@pytest.mark.slow
def test_fit_verdicts(digits: Path, tmp_path: Path) -> None:
    fit = check_mcu_fit(digits, "stm32f746")
    assert fit.fits and fit.verdict == "fits"
    assert fit.sram.needed_bytes > fit.arena_bytes
    assert fit.flash.needed_bytes > digits.stat().st_size
    text = Path(load_target("stm32f746").path).read_text()
    tiny = tmp_path / "tiny-mcu.toml"
    tiny.write_text(text.replace('"320 KiB"', '"4 KiB"').replace('"1 MiB"', '"16 KiB"'))
    small = check_mcu_fit(digits, tiny)
    assert not small.fits
    assert f"short by {small.sram.needed_bytes - 4096:,} bytes of SRAM" in small.verdict
    assert f"short by {small.flash.needed_bytes - 16384:,} bytes of flash" in small.verdict


@pytest.mark.slow
def test_unsupported_op_is_named(digits: Path, tmp_path: Path) -> None:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(digits.read_bytes(), 0)
    model.operatorCodes[0].builtinCode = schema.BuiltinOperator.GELU
    model.operatorCodes[0].deprecatedBuiltinCode = schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "gelu.tflite"
    path.write_bytes(builder.Output())
    assert unsupported_tflm_ops(path) == ["GELU"]
    with pytest.raises(ConversionError, match="gelu.tflite.*GELU"):
        check_mcu_fit(path, "stm32f746")


@pytest.mark.parametrize("content", [b"not a model at all", b"\x1c\x00\x00\x00TFL3" + b"\x00" * 8])
def test_corrupt_tflite_is_a_clear_error(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "broken.tflite"
    path.write_bytes(content)
    with pytest.raises((ConversionError, ModelLoadError), match="broken.tflite"):
        measure_arena(path)

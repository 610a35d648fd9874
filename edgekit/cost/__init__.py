"""Latency and energy on a target: the roofline cost model (`model`), its fit (`fit`), per-layer measurement
under ONNX Runtime and LiteRT (`measure_ort`, `measure_litert`), and the calibrated profile (`calibrate`)."""

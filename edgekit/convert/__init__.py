"""INT8 post-training quantization: full-integer TFLite (litert-torch) and ONNX QDQ (onnxruntime)."""

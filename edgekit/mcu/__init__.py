"""Microcontroller C: INT8 .tflite models as generated C99 on portable kernels, built for the host or a Cortex-M."""

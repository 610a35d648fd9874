#!/usr/bin/env bash
# Quick start: set up; analyze MobileNetV2 for an STM32F746 (table + memory plot); compile the
# digits CNN to a full-integer INT8 bundle for that board (accuracy checked, TFLM arena measured);
# then run the bundle on a digit image the way the device does (no torch), and benchmark it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
mkdir -p out
.venv/bin/edgekit analyze mobilenet_v2 --target stm32f746 --plot out/mobilenet_v2_memory.png
.venv/bin/python tools/digits_data.py out
.venv/bin/edgekit compile digits_cnn --pretrained --target stm32f746 --int8 \
    --calib out/digits_calib.npz --eval out/digits_eval.npz -o out/digits_stm32f746
.venv/bin/edgekit run out/digits_stm32f746 --input out/digit_7.png --top 3
.venv/bin/edgekit bench out/digits_stm32f746 --runs 200

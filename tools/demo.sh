#!/usr/bin/env bash
# Quick start: set up; analyze MobileNetV2 for an STM32F746 (table + memory plot); compile the
# digits CNN to full-integer INT8 TFLite for that board and check its accuracy under LiteRT.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
mkdir -p out
.venv/bin/edgekit analyze mobilenet_v2 --target stm32f746 --plot out/mobilenet_v2_memory.png
.venv/bin/python tools/digits_data.py out
.venv/bin/edgekit compile digits_cnn --pretrained --target stm32f746 --int8 \
    --calib out/digits_calib.npz --eval out/digits_eval.npz -o out/digits_stm32f746

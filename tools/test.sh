#!/usr/bin/env bash
# Set up (tools/setup.sh: .venv, edgekit[dev], and when missing Debian's mosquitto, the ARM toolchain and QEMU, the
# .venv-ros ROS 2 venv and OpenCV's vtest.avi), check the code (ruff, mypy on
# edgekit/, both configured in pyproject.toml), then run the whole test suite, slow real-toolchain tests included
# (pytest-timeout bounds every test; the import-layer test is tests/test_layers.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/ruff check edgekit tests tools examples models
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# Set up (tools/setup.sh: .venv, edgekit[dev], Debian's mosquitto when missing) and run the whole test
# suite, slow real-toolchain tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# Set up and run the whole test suite, slow real-toolchain tests included.
# The offload tests start their own Mosquitto brokers: install Debian's mosquitto when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null && ! [ -x /usr/sbin/mosquitto ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
bash tools/setup.sh
.venv/bin/python -m pytest -q "$@"

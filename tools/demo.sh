#!/usr/bin/env bash
# Quick start: set up; analyze MobileNetV2 for an STM32F746 (table + memory plot); compile the
# digits CNN to a full-integer INT8 bundle for that board (accuracy checked, TFLM arena measured);
# run the bundle on a digit image the way the device does (no torch), and benchmark it. Then split
# computing: compile the digits CNN into an INT8 head for a Raspberry Pi and a tail for an edge
# server, serve the tail (an embedded Mosquitto broker is started), and run the split bundle with
# the tail answered over MQTT.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
mkdir -p out
ek=.venv/bin/edgekit
$ek analyze mobilenet_v2 --target stm32f746 --plot out/mobilenet_v2_memory.png
.venv/bin/python tools/digits_data.py out
$ek compile digits_cnn --pretrained --target stm32f746 --int8 \
    --calib out/digits_calib.npz --eval out/digits_eval.npz -o out/digits_stm32f746
$ek run out/digits_stm32f746 --input out/digit_7.png --top 3
$ek bench out/digits_stm32f746 --runs 200

$ek compile digits_cnn --pretrained --target rpi4 --int8 --split features.1.0 --server x86-server --link wifi \
    --calib out/digits_calib.npz --eval out/digits_eval.npz -o out/digits_split
$ek serve out/digits_split > out/serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q '^ready' out/serve.log && break; sleep 0.1; done
grep -q '^ready' out/serve.log || { cat out/serve.log; exit 1; }
broker=$(sed -n 's/^embedded broker: \(mqtt:[^ ]*\).*/\1/p' out/serve.log)
$ek run out/digits_split --input out/digit_7.png --top 3 --broker "$broker"
kill -TERM $server && wait $server || true
cat out/serve.log

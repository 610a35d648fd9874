#!/usr/bin/env bash
# Quick start: set up; analyze MobileNetV2 for an STM32F746 (table + memory plot); compile the
# digits CNN to a full-integer INT8 bundle for that board (accuracy checked, TFLM arena measured);
# run the bundle on a digit image the way the device does (no torch), and benchmark it. Then split
# computing where it pays: on a slow uplink the planner's cut of MCUNet-VWW beats both running it all
# on the STM32F746 and sending the frame to the server; compile it into an INT8 head for the board and a
# tail for an edge server, serve the tail (an embedded Mosquitto broker is started), and run the split
# bundle with the tail answered over MQTT.
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

# The digits CNN has no cut worth making (its 64 B input is smaller than any tensor but the pooled one, after
# which only the classifier is left), so the split is MCUNet-VWW's: 80x80 RGB frames from an STM32F746 over
# a 3 Mbit/s uplink. Its planner's cut sends 6,400 B per frame and beats both ends (36 ms against 56 ms all
# on the board, 55 ms all on the server). edgekit ships no MCUNet weights: this net is untrained (random
# weights, fixed by a seed so that every run builds the same net, given as your own model would be:
# module:factory) and its scores mean nothing; it gives one class for every frame, so the fidelity check's
# top-1 agreement is trivially met and its SQNR (INT8 head + tail against the float model) is the figure to
# read. (Other seeds give frames whose two logits nearly tie, which INT8 may flip.)
cat > out/untrained.py <<'EOF'
"""MCUNet-VWW with seeded random weights: the same untrained net on every run."""
import torch
from edgekit.models import create_model


def mcunet_vww():
    torch.manual_seed(0)
    return create_model("mcunet_vww")
EOF
.venv/bin/python - <<'EOF'
import numpy as np
from edgekit.models.digits import load_digits_split
x_train, _, x_test, _ = load_digits_split(resolution=80)  # the digits as 80x80 frames, grey in all 3 channels
np.savez("out/frames_calib.npz", x=np.repeat(x_train[:100], 3, axis=1))
np.savez("out/frames_eval.npz", x=np.repeat(x_test, 3, axis=1))
EOF
$ek compile out.untrained:mcunet_vww --target stm32f746 --int8 --split auto --server x86-server --link wifi \
    --bandwidth "3 Mbit/s" --calib out/frames_calib.npz --eval out/frames_eval.npz -o out/vww_split
$ek serve out/vww_split > out/serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q '^ready' out/serve.log && break; sleep 0.1; done
grep -q '^ready' out/serve.log || { cat out/serve.log; exit 1; }
broker=$(sed -n 's/^embedded broker: \(mqtt:[^ ]*\).*/\1/p' out/serve.log)
$ek run out/vww_split --input out/digit_7.png --broker "$broker"
kill -TERM $server && wait $server || true
cat out/serve.log

"""Scale-out on two bridged Mosquitto brokers (edgekit.offload.bridge), each in its own network namespace: the
hub and the spoke each run a tail worker and half the devices (tools/fleet_sim.py's simulated fleet). Every
frame is answered exactly once and correctly, and workers on both brokers work. Needs root and iproute2."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fleet_sim import Site, fleet_run
from helpers import NetLab, activation, mosquitto_missing, netlab_unavailable, tiny_tail_bundle

from edgekit.errors import OffloadError
from edgekit.offload.bridge import bridge_config
from edgekit.runtime.session import load


def _lab_unavailable() -> str | None:
    return mosquitto_missing() or netlab_unavailable()


@pytest.mark.parametrize("options", [{"model_id": "a/b"}, {"model_id": "m", "group": "+"},
                                     {"model_id": "m", "shares": 0}, {"model_id": "m", "name": "two words"},
                                     {"model_id": "m", "username": "hub-login"}, {"model_id": "m", "hub_port": 0}])
def test_bridge_config_refuses_what_would_break_the_broker(options: dict) -> None:
    with pytest.raises(OffloadError):
        bridge_config("10.0.0.1", **{"hub_port": 1883, **options})


def test_bridge_joins_the_hub_group_once_per_share_and_carries_answers_once() -> None:
    lines = bridge_config("10.0.0.1", 1883, "tiny_tail", shares=3)
    assert lines.count("topic $share/tail/edgekit/req/tiny_tail/+ in 1") == 3
    assert lines.count("topic edgekit/res/# out 1") == 1  # three would deliver every spoke answer three times
    assert lines.count("topic edgekit/chunk/tiny_tail/+ in 1") == 1  # later chunks of big requests, once
    assert sum(line.startswith("connection ") for line in lines) == 3
    assert not any(" out " in line and "/req/" in line for line in lines)  # spoke requests stay on the spoke


@pytest.mark.slow
@pytest.mark.skipif(_lab_unavailable() is not None, reason=str(_lab_unavailable()))
def test_bridged_pair_answers_every_frame_once_with_workers_on_both_brokers(tmp_path: Path) -> None:
    bundle = tiny_tail_bundle(tmp_path)
    with NetLab("ekscale") as lab:
        sites = [Site("hub", lab.server_ip, functools.partial(lab.popen, "srv")),
                 Site("spoke", lab.device_ip, functools.partial(lab.popen, "dev"))]
        row = fleet_run(sites, bundle, devices=50, rate_hz=4, duration_s=4, deadline_s=1.0, workers=1, records=True)
    sent = row["sent"]
    assert row["connected"] and row["devices_per_site"] == {"hub": 25, "spoke": 25}
    assert sent >= 0.9 * 50 * 4 * 4
    assert row["ok"] == sent and row["lost"] == 0 and row["disconnects"] == 0
    assert row["duplicates"] == 0 and row["unknown"] == 0  # no answer twice, none for another device
    assert row["tail_requests"] == sent  # no request ran on two workers
    hub, spoke = row["per_worker_requests"]["hub"], row["per_worker_requests"]["spoke"]
    assert sum(hub) > 0 and sum(spoke) > row["sent_per_site"]["spoke"]  # the spoke also served hub devices
    assert sum(hub) < row["sent_per_site"]["hub"]
    records = row["records"]
    assert len(records) == sent and len(Counter((r["device"], r["seq"]) for r in records)) == sent
    session = load(bundle)
    expected = {v: np.asarray(session.run(activation(v, session.input.shape).array)).ravel()
                for v in {r["variant"] for r in records}}
    assert all(np.allclose(r["output"], expected[r["variant"]], rtol=1e-5, atol=1e-5) for r in records)

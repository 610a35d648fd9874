"""MQTT detections against a real Mosquitto: a subscriber on `{prefix}/det/{device_id}` gets one JSON message per
frame equal to the detections, over TLS with a login too; a broker that is not there never blocks the caller
and the queue stays bounded; bad topic levels are refused."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import needs_mosquitto, run, wait_for
from synthetic_clip import astronaut_clip  # tools/

from edgekit.errors import OffloadError
from edgekit.integrations.mqtt_detections import MqttDetections
from edgekit.offload.broker import Broker, free_port
from edgekit.offload.connection import BrokerConfig
from edgekit.offload.security import make_dev_pki, write_password_file
from edgekit.runtime.detections import Detections

pytestmark = needs_mosquitto()


def _frame(i: int) -> Detections:
    """Frame i: i % 3 boxes sliding right (none every third frame), two classes."""
    k = i % 3
    boxes = np.array([[0.1 * j + 0.01 * i, 0.2, 0.1 * j + 0.01 * i + 0.15, 0.5] for j in range(k)], np.float32)
    return Detections(boxes.reshape(-1, 4), np.linspace(0.9, 0.6, k, dtype=np.float32), np.arange(k) % 2,
                      tuple(("face", "pad")[j % 2] for j in range(k)))


@pytest.fixture
def subscriber(request: pytest.FixtureRequest) -> Iterator[Any]:
    """`subscribe(config, topic)` -> the list its messages (decoded JSON) arrive in, once subscribed."""
    clients: list[Any] = []

    def subscribe(config: BrokerConfig, topic: str) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        subscribed = threading.Event()
        client = config.client(f"sub-{uuid.uuid4().hex[:6]}")
        client.on_connect = lambda c, userdata, flags, reason, properties: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda c, userdata, mid, reasons, properties: subscribed.set()
        client.on_message = lambda c, userdata, message: got.append(json.loads(message.payload))
        config.connect_async(client)
        clients.append(client)
        assert subscribed.wait(10), "the subscriber never subscribed"
        return got

    yield subscribe
    for client in clients:
        client.disconnect()
        client.loop_stop()


def test_a_subscriber_gets_one_message_per_frame_equal_to_the_detections(broker: Broker, subscriber: Any) -> None:
    got = subscriber(broker.client_config(), "edgekit/det/+")
    frames = [_frame(i) for i in range(30)]
    with MqttDetections(broker.url, "cam-7") as reporter:
        wait_for(lambda: reporter.health()["connected"], 10, "the reporter's connection")
        sent = [reporter.report(found) for found in frames]
        assert reporter.flush(5)
        wait_for(lambda: len(got) >= len(frames), 5, "a message per frame")
        health = reporter.health()
    assert len(got) == len(frames) and reporter.topic == "edgekit/det/cam-7"
    assert [m["frame"] for m in got] == list(range(len(frames)))
    for message, found, local in zip(got, frames, sent):
        assert message["device_id"] == "cam-7" and message == local
        assert message["detections"] == found.to_list()
        np.testing.assert_array_equal(np.float32([d["box"] for d in message["detections"]]).reshape(-1, 4),
                                      found.boxes)
    assert health["sent"] == {"queued": 30, "published": 30, "dropped": 0} and health["last_error"] is None


def test_tls_and_a_login_through_the_offload_broker_config(tmp_path: Path, subscriber: Any) -> None:
    tls, _ = make_dev_pki(tmp_path / "pki")
    users = {"cam-1": "one-secret", "ops": "ops-secret"}
    with Broker(tls=tls, password_file=write_password_file(tmp_path / "passwd", users),
                workdir=tmp_path / "broker") as secured:
        got = subscriber(secured.client_config(username="ops", password="ops-secret"), "fleet/det/#")
        config = secured.client_config(username="cam-1", password="one-secret")
        with MqttDetections(config, prefix="fleet") as reporter:  # the device id defaults to the login
            wait_for(lambda: reporter.health()["connected"], 10, "the TLS connection")
            reporter.report(_frame(1))
            wait_for(lambda: got, 5, "the message over TLS")
        refused = MqttDetections(secured.client_config(username="cam-1", password="wrong"))
        wait_for(lambda: refused.health()["last_error"], 10, "the refusal")
        refused.close()
    assert reporter.topic == "fleet/det/cam-1" and got[0]["detections"] == _frame(1).to_list()
    assert "refused the connection" in str(refused.health()["last_error"]) and not refused.health()["connected"]


def test_a_dead_broker_never_blocks_and_the_queue_stays_bounded() -> None:
    reporter = MqttDetections(f"mqtt://127.0.0.1:{free_port()}", "cam-1", queue_size=4)
    start = time.monotonic()
    for i in range(200):
        reporter.report(_frame(i))
    elapsed = time.monotonic() - start
    wait_for(lambda: reporter.health()["last_error"], 5, "the connection failure")
    health = reporter.health()
    close_start = time.monotonic()
    reporter.close()
    assert elapsed < 0.5 and time.monotonic() - close_start < 3
    assert not health["connected"] and health["sent"] == {"queued": 200, "published": 0, "dropped": 196}
    assert health["last_error"].startswith("cannot reach mqtt://127.0.0.1:")


@pytest.mark.parametrize("device_id, prefix", [("cam/1", "edgekit"), ("cam+", "edgekit"), ("cam-1", "a/#")])
def test_a_topic_level_with_a_wildcard_or_slash_is_refused(device_id: str, prefix: str) -> None:
    with pytest.raises(OffloadError, match="topic level without"):
        MqttDetections("mqtt://127.0.0.1:1", device_id, prefix=prefix)


def test_edgekit_stream_publishes_every_frame(capsys: pytest.CaptureFixture, tmp_path: Path, broker: Broker,
                                              subscriber: Any) -> None:
    import blazeface_bundle  # tools/, on the path through conftest

    clip = astronaut_clip(tmp_path / "clip.avi", 6, blank_every=3)
    got = subscriber(broker.client_config(), "edgekit/det/drone-2")
    code, out, err = run(capsys, "stream", str(blazeface_bundle.bundle(tmp_path / "bf")), "--source", str(clip),
                         "--pace", "fast", "--mqtt", broker.url, "--device-id", "drone-2", "--json")
    assert code == 0, err
    summary = json.loads(out)
    wait_for(lambda: len(got) >= 6, 5, "a message per frame")
    assert summary["frames_processed"] == 6 and summary["mqtt"]["sent"]["published"] == 6
    assert [len(m["detections"]) for m in got] == [0, 1, 1, 0, 1, 1]
    assert all(m["detections"][0]["label"] == "face" and m["detections"][0]["score"] > 0.5 for m in got
               if m["detections"])

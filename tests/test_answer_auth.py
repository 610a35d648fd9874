"""Answers authenticated with the fleet key: key files, signed frames, a server that signs and drops unsigned
requests, a device that takes no forged answer even from a client that reads its requests; and TLS options
with a plain mqtt:// URL refused instead of silently dropped."""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import activation, needs_mosquitto, run, tiny_tail_bundle, wait_for

from edgekit.errors import OffloadError, SignatureError
from edgekit.formats.frame import Frame, Tensor, decode, encode, read_header
from edgekit.offload.auth import bundle_key, load_key, new_key
from edgekit.offload.broker import Broker
from edgekit.offload.client import OffloadClient
from edgekit.offload.connection import BrokerConfig
from edgekit.offload.handler import TailHandler
from edgekit.offload.server import OffloadServer, serve
from edgekit.runtime import load
from edgekit.runtime.session import Session

pytestmark = needs_mosquitto()

KEY, OTHER_KEY = bytes(range(32)), bytes(range(1, 33))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tail_bundle(tmp_path_factory.mktemp("auth"))


@pytest.fixture(scope="module")
def session(bundle: Path) -> Session:
    return load(bundle)


def answer_frame(request_id: bytes, value: float) -> Frame:
    return Frame(request_id, 0, "tiny_tail", "", (Tensor("y", np.full((1, 10), value, np.float32)),), kind="response")


# key files


def test_a_new_key_is_32_random_bytes_in_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    key = new_key(tmp_path / "fleet.key")
    assert len(key) == 32 and key != new_key(tmp_path / "other.key")
    assert stat.S_IMODE(os.stat(tmp_path / "fleet.key").st_mode) == 0o600
    assert (tmp_path / "fleet.key").read_text() == key.hex() + "\n"
    assert load_key(tmp_path / "fleet.key") == key
    with pytest.raises(OffloadError, match="a key file already exists"):
        new_key(tmp_path / "fleet.key")


def test_a_key_file_others_can_read_or_a_malformed_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleet.key"
    new_key(path)
    path.chmod(0o640)
    with pytest.raises(OffloadError) as caught:
        load_key(path)
    assert str(caught.value) == (f"{path}: the key file is mode 0640, open to group or others; anyone who reads it "
                                 f"can forge answers: chmod 600 {path}")
    path.write_text("not hex\n")
    path.chmod(0o600)
    with pytest.raises(OffloadError, match="expected 64 hex digits \\(a 32-byte key\\), found 7 characters"):
        load_key(path)
    with pytest.raises(OffloadError, match="cannot read the key file"):
        load_key(tmp_path / "missing.key")


# signed frames


def test_a_signed_frame_verifies_only_under_its_key() -> None:
    frame = answer_frame(bytes(range(16)), 1.5)
    signed = encode(frame, key=KEY)
    assert len(signed) == len(encode(frame)) + 32
    assert read_header(signed, KEY).signed and not read_header(encode(frame)).signed
    for back in (decode(signed, key=KEY), decode(signed)):  # without a key the tag is not checked
        assert back.request_id == frame.request_id and np.array_equal(back.tensors[0].array, frame.tensors[0].array)
    with pytest.raises(SignatureError, match="does not match the fleet key"):
        decode(signed, key=OTHER_KEY)
    with pytest.raises(SignatureError, match="frame is not signed"):
        decode(encode(frame), key=KEY)
    forged = encode(replace(frame, request_id=bytes(16)), key=OTHER_KEY)  # well sealed, CRC right, wrong key
    with pytest.raises(SignatureError):
        decode(forged, key=KEY)
    tampered = bytearray(signed)
    tampered[-40] ^= 1  # a payload bit: the tag no longer matches, whatever the CRC says
    with pytest.raises(SignatureError):
        decode(bytes(tampered), key=KEY)


def test_a_server_with_the_key_signs_answers_and_refuses_unsigned_requests_unsigned(session: Session) -> None:
    handler = TailHandler(session, key=KEY)
    request = Frame(os.urandom(16), 2**62, "tiny_tail", "", (activation(0),))
    status, answer = handler.handle(encode(request, key=KEY))
    assert status == "ok" and np.array_equal(decode(answer, key=KEY).tensors[0].array, session.run(activation(0).array))
    for sent, reason in ((encode(request), "frame is not signed"), (encode(request, key=OTHER_KEY), "does not match")):
        status, answer = handler.handle(sent)
        refusal = decode(answer)  # unsigned: the sender gets no signed frame, and says why
        assert status == "forged" and refusal.kind == "error" and refusal.request_id == request.request_id
        assert refusal.error.startswith("this server serves only requests signed with its fleet key") and reason in \
            refusal.error
        with pytest.raises(SignatureError):
            decode(answer, key=KEY)  # a device holding the key drops it
    assert handler.forged == 2
    status, answer = handler.handle(encode(replace(request, model_id="resnet"), key=KEY))
    assert status == "error" and "runs model 'tiny_tail'" in decode(answer, key=KEY).error  # errors are signed too


# a forged-answer flood over a real broker


def forger(config: BrokerConfig) -> tuple[object, list[int]]:
    """A client that reads every request (an open broker) and answers each at once, twice: unsigned and signed
    with another key, each claiming the value -9."""
    client = config.client("forger")
    sent: list[int] = []
    subscribed = threading.Event()

    def answer(client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        request_id = decode(message.payload).request_id
        for key in (None, OTHER_KEY):
            client.publish("edgekit/res/cam-1", encode(answer_frame(request_id, -9.0), key=key), qos=1)
            sent.append(1)

    client.on_message = answer
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(config.host, config.port)
    client.subscribe("edgekit/req/tiny_tail/+", qos=1)
    client.loop_start()
    assert subscribed.wait(30)
    return client, sent


def test_no_forged_answer_is_taken_with_the_key(broker: Broker, bundle: Path, session: Session) -> None:
    rogue, sent = forger(broker.client_config())
    try:
        with OffloadServer(bundle, broker.url, answer_key=KEY), \
                OffloadClient(broker.url, "tiny_tail", "cam-1", answer_key=KEY) as client:
            replies = [(client.request(activation(i), 10.0), i) for i in range(50)]
            assert all(r.source == "remote" and np.array_equal(r.output, session.run(activation(i).array))
                       for r, i in replies)
            wait_for(lambda: len(sent) == 100, 30, "the forger's 100 answers")
            # each forged answer raced the server's; those that arrived first were verified and dropped, the rest
            # came after the true one and were dropped as duplicates, undecoded
            wait_for(lambda: client.counts["forged"] + client.counts["duplicate"] == 100, 30, "every forgery counted")
            assert client.counts["forged"] > 0 and client.counts["remote"] == 50
            assert client.stats()["forged"] == client.counts["forged"]
    finally:
        rogue.disconnect()  # type: ignore[attr-defined]
        rogue.loop_stop()  # type: ignore[attr-defined]


def test_no_forged_answer_is_taken_on_the_default_set_up(tmp_path: Path, session: Session) -> None:
    """`serve(BUNDLE)` as the quick start runs it (embedded broker, no options) and a client with the key
    `edgekit run` finds beside the same bundle: it signs both ways, so the forger gets nowhere."""
    bundle = tiny_tail_bundle(tmp_path)
    stop, lines = threading.Event(), []
    runner = threading.Thread(target=lambda: lines.append(serve(bundle, stop=stop, announce=lines.append)))
    runner.start()
    try:
        wait_for(lambda: "ready" in lines or not runner.is_alive(), 120, "serve starting")
        url = next(line.split()[2] for line in lines if line.startswith("embedded broker: "))
        rogue, sent = forger(BrokerConfig.parse(url))
        try:
            with OffloadClient(url, "tiny_tail", "cam-1", answer_key=bundle_key(bundle)) as client:  # as `run`
                replies = [(client.request(activation(i), 10.0), i) for i in range(30)]
                assert all(r.source == "remote" and np.array_equal(r.output, session.run(activation(i).array))
                           for r, i in replies)
                wait_for(lambda: client.counts["forged"] + client.counts["duplicate"] == len(sent) == 60, 30,
                         "every forgery counted")
                assert client.counts["forged"] > 0
        finally:
            rogue.disconnect()  # type: ignore[attr-defined]
            rogue.loop_stop()  # type: ignore[attr-defined]
    finally:
        stop.set()
        runner.join(30)


def test_without_a_key_the_same_forger_is_believed(broker: Broker, bundle: Path) -> None:
    """The attack is real: without the key a forged answer that arrives first is taken as the tail's."""
    rogue, _ = forger(broker.client_config())
    try:
        with OffloadServer(bundle, broker.url), OffloadClient(broker.url, "tiny_tail", "cam-1") as client:
            replies = [client.request(activation(i), 10.0) for i in range(20)]
            assert sum(float(r.output[0, 0]) == -9.0 for r in replies) > 0
    finally:
        rogue.disconnect()  # type: ignore[attr-defined]
        rogue.loop_stop()  # type: ignore[attr-defined]


def test_an_unsigned_device_is_told_it_needs_the_fleet_key(broker: Broker, bundle: Path) -> None:
    with OffloadServer(bundle, broker.url, answer_key=KEY) as server, \
            OffloadClient(broker.url, "tiny_tail", "cam-1") as client:
        reply = client.request(activation(0), 5.0)
        assert reply.output is None and "signed with its fleet key (edgekit run --fleet-key FILE)" in reply.detail
        assert wait_for(lambda: server.metrics.snapshot()["forged"], 10, "the server counting the request") == 1


# TLS options with a plain URL


def test_tls_options_with_a_plain_url_are_an_error_naming_mqtts() -> None:
    with pytest.raises(OffloadError) as caught:
        BrokerConfig.parse("mqtt://tail@broker.lan:1883", ca_certs="ca.pem", password="s3cret")
    assert str(caught.value) == ("TLS options (ca_certs: --ca/--cert/--key) were given for the plain TCP broker "
                                 "mqtt://broker.lan:1883, which would ignore them and send the password in clear; use "
                                 "mqtts://broker.lan:8883 (or the broker's TLS port)")
    assert BrokerConfig.parse("mqtts://tail@broker.lan", ca_certs="ca.pem").tls


def test_the_cli_refuses_them_too_and_a_readable_key_file(capsys: pytest.CaptureFixture, bundle: Path,
                                                          tmp_path: Path) -> None:
    code, _, err = run(capsys, "serve", str(bundle), "--broker", "mqtt://127.0.0.1:1883", "--ca", "ca.pem")
    assert code == 2 and "use mqtts://127.0.0.1:8883" in err
    new_key(tmp_path / "fleet.key")
    (tmp_path / "fleet.key").chmod(0o644)
    code, _, err = run(capsys, "run", str(bundle), "--input", str(tmp_path / "x.npy"), "--broker",
                       "mqtt://127.0.0.1:1", "--fleet-key", str(tmp_path / "fleet.key"))
    assert code == 2 and "open to group or others" in err and f"chmod 600 {tmp_path / 'fleet.key'}" in err

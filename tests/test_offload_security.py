"""A locked-down broker: TLS with our own CA, passwords, and the per-device ACL. Authorised devices get their
answers; strangers are refused; a device can neither read another's answers nor make requests in its name."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import activation, needs_mosquitto, tiny_tail_bundle

from edgekit.errors import OffloadError
from edgekit.formats.frame import decode
from edgekit.offload.broker import Broker
from edgekit.offload.client import OffloadClient
from edgekit.offload.protocol import Topics
from edgekit.offload.security import acl_text, make_dev_pki, write_acl, write_password_file
from edgekit.offload.server import OffloadServer
from edgekit.runtime import load
from edgekit.runtime.session import Session

pytestmark = needs_mosquitto()

Secured = tuple[Broker, Session, OffloadServer]  # broker (TLS, passwords, ACL), the tail locally, its server
PASSWORDS = {"tail": "tail-secret", "cam-1": "one-secret", "cam-2": "two-secret"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secured")
    tls, _ = make_dev_pki(root / "pki")
    broker = Broker(tls=tls, password_file=write_password_file(root / "passwd", PASSWORDS),
                    acl_file=write_acl(root / "acl", Topics()), workdir=root / "broker").start()
    bundle = tiny_tail_bundle(root)
    server = OffloadServer(bundle, broker.client_config(username="tail", password=PASSWORDS["tail"])).start()
    yield broker, load(bundle), server
    server.stop()
    broker.close()


def device(broker: Broker, name: str, password: str | None = None, **options: object) -> OffloadClient:
    return OffloadClient(broker.client_config(username=name, password=password or PASSWORDS[name]), "tiny_tail",
                         connect_timeout_s=3, **options)


def test_acl_follows_the_topic_layout() -> None:
    assert acl_text(Topics("fleet")).splitlines()[1:] == [
        "pattern write fleet/req/+/%u", "pattern write fleet/chunk/+/%u", "pattern read fleet/res/%u", "",
        "user tail", "topic read fleet/req/#", "topic read fleet/chunk/#", "topic write fleet/res/+"]


def test_an_authorised_device_gets_exact_answers_over_tls(secured: Secured) -> None:
    broker, session, _ = secured
    assert broker.url.startswith("mqtts://")
    with device(broker, "cam-1") as client:
        assert client.device_id == "cam-1"  # the username, as the ACL's %u expects
        reply = client.request(activation(1), 10.0)
        assert reply.source == "remote" and np.array_equal(reply.output, session.run(activation(1).array))


@pytest.mark.parametrize("name, password", [("cam-1", "wrong"), ("stranger", "whatever")])
def test_wrong_credentials_are_refused(secured: Secured, name: str, password: str) -> None:
    with pytest.raises(OffloadError, match=f"refused device '{name}': Not authorized"):
        device(secured[0], name, password)


def test_a_client_without_credentials_is_refused(secured: Secured) -> None:
    broker = secured[0]
    with pytest.raises(OffloadError, match="refused device 'anon': Not authorized"):
        OffloadClient(broker.client_config(), "tiny_tail", "anon", connect_timeout_s=3)


def test_plain_tcp_to_the_tls_port_never_connects(secured: Secured) -> None:
    broker = secured[0]
    with OffloadClient(f"mqtt://cam-1@127.0.0.1:{broker.port}", "tiny_tail", connect_timeout_s=1) as client:
        assert not client.connected
        assert client.request(activation(0), 1.0).source == "error"


def test_a_device_cannot_read_another_devices_answers(secured: Secured) -> None:
    broker = secured[0]
    stolen: list[bytes] = []
    config = broker.client_config(username="cam-2", password=PASSWORDS["cam-2"])
    spy = config.client("spy")  # cam-2's credentials, subscribed to every device's answers
    subscribed = threading.Event()
    own_answer = threading.Event()

    def on_message(client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        if message.topic == "edgekit/res/cam-2":
            own_answer.set()
        else:
            stolen.append(message.payload)

    spy.on_message = on_message
    spy.on_subscribe = lambda client, userdata, mid, reasons, properties: subscribed.set()
    spy.on_connect = lambda client, userdata, flags, reason, properties: client.subscribe("edgekit/res/#", qos=1)
    config.connect_async(spy)
    try:
        assert subscribed.wait(30)
        with device(broker, "cam-1") as victim:
            assert victim.request(activation(2), 10.0).source == "remote"
        with device(broker, "cam-2") as own:  # answered after the victim, so delivered to the spy after it
            assert own.request(activation(3), 10.0).source == "remote"
        assert own_answer.wait(30)  # the spy does get what cam-2 may read...
        assert stolen == []  # ...and got nothing of cam-1's, which the server answered before
    finally:
        spy.disconnect()
        spy.loop_stop()


def test_a_device_cannot_request_in_another_devices_name(secured: Secured, monkeypatch: pytest.MonkeyPatch) -> None:
    broker, _, server = secured
    handled: list[bytes] = []
    handle = server.handler.handle

    def recording(payload: bytes, *rest: object) -> tuple[str, bytes]:
        handled.append(payload)
        return handle(payload, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(server.handler, "handle", recording)
    with device(broker, "cam-2", device_id="cam-1") as impostor:  # publishes to .../cam-1, not its own name
        assert impostor.request(activation(3), 0.4).source == "timeout"
    with device(broker, "cam-2") as honest:  # reaches the server after the impostor's request would have
        reply = honest.request(activation(4), 10.0)
        assert reply.source == "remote"
    # the server answers after handling: by the honest answer, it had handled all it was sent, the honest one
    assert len(handled) == 1 and decode(handled[0]).tensors[0].array.tobytes() == activation(4).array.tobytes()

"""`edgekit serve` is locked down by default: its embedded broker listens on loopback only; on any other
address it requires the logins it generates (mode 0600, in a 0700 folder, no password on any command line)
and enforces the per-device ACL: a device reads only its own answers and cannot take over another's session."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import activation, needs_mosquitto, run, tiny_tail_bundle
from test_serve_supervision import Served

from edgekit.errors import BrokerError, OffloadError
from edgekit.offload import security
from edgekit.offload.broker import advertised_host
from edgekit.offload.client import OffloadClient
from edgekit.offload.connection import BrokerConfig
from edgekit.offload.security import Credentials, read_credentials, write_credentials, write_password_file
from edgekit.runtime import load

pytestmark = needs_mosquitto()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tail_bundle(tmp_path_factory.mktemp("secure"))


@pytest.fixture(scope="module")
def open_serve(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    """serve on 0.0.0.0 with two devices' logins in a secrets folder of the test's own."""
    secrets = tmp_path_factory.mktemp("fleet") / "secrets"
    served = Served(bundle, "--listen", "0.0.0.0", "--secrets", str(secrets), "--devices", "cam-1,cam-2")
    served.wait_line("ready")
    yield served, secrets
    served.close()


def login(served: Served, secrets: Path, name: str, **options: object) -> OffloadClient:
    creds = read_credentials(secrets / f"{name}.credentials")
    config = BrokerConfig.parse(served.url, username=creds.username, password=creds.password)
    return OffloadClient(config, "tiny_tail", connect_timeout_s=5, answer_key=served.key, **options)


def test_by_default_the_broker_is_anonymous_on_loopback_only(bundle: Path) -> None:
    served = Served(bundle)
    try:
        line = served.wait_line("embedded broker: ")
        assert line.startswith("embedded broker: mqtt://127.0.0.1:")
        assert "(anonymous, plain TCP, on loopback: only this machine can reach it;" in line
        port = int(served.url.rsplit(":", 1)[1])
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        outside = advertised_host("0.0.0.0")
        if outside == "127.0.0.1":
            pytest.skip("no interface but loopback to try the broker from")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((outside, port), timeout=2)
    finally:
        served.close()


def test_off_loopback_the_logins_are_generated_private_and_announced_by_path(open_serve: tuple[Served, Path]) -> None:
    served, secrets = open_serve
    url = served.url
    assert url == f"mqtt://{advertised_host('0.0.0.0')}:{url.rsplit(':', 1)[1]}"
    assert "(login required, per-device ACL; plain TCP: logins and frames cross the network unencrypted" in \
        served.wait_line("embedded broker: ")
    creds = read_credentials(secrets / "cam-1.credentials")
    assert served.wait_line("device 'cam-1' logs in with ") == (
        f"device 'cam-1' logs in with {secrets / 'cam-1.credentials'} (copy it to the device only: edgekit run "
        f"BUNDLE --broker {url} --credentials FILE)")
    assert not any(creds.password in line for line in served.lines)  # the path is printed, never the password
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in secrets.iterdir()}
    assert files == {"passwd": 0o600, "acl": 0o600, "cam-1.credentials": 0o600, "cam-2.credentials": 0o600,
                     "fleet.key": 0o600}
    users = dict(line.split(":", 1) for line in (secrets / "passwd").read_text().splitlines())
    assert sorted(users) == ["cam-1", "cam-2", "edgekit-server-0"]
    assert all(h.startswith("$7$") for h in users.values()) and creds.password not in users["cam-1"]  # hashed
    for pid in [served.proc.pid, *(p for p in served.children().values())]:  # no password on a command line
        assert creds.password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_anonymous_and_wrong_logins_are_refused_by_the_real_broker(open_serve: tuple[Served, Path]) -> None:
    served, _ = open_serve
    with pytest.raises(OffloadError, match="refused device 'anon': Not authorized"):
        OffloadClient(served.url, "tiny_tail", "anon", connect_timeout_s=5)
    config = BrokerConfig.parse(served.url, username="cam-1", password="guessed")
    with pytest.raises(OffloadError, match="refused device 'cam-1': Not authorized"):
        OffloadClient(config, "tiny_tail", connect_timeout_s=5)


def test_a_device_with_its_credentials_gets_exact_answers(open_serve: tuple[Served, Path], bundle: Path) -> None:
    served, secrets = open_serve
    with login(served, secrets, "cam-1") as client:
        reply = client.request(activation(3), 10.0)
    assert reply.source == "remote" and np.array_equal(reply.output, load(bundle).run(activation(3).array))


def test_a_device_cannot_read_another_devices_answers_nor_take_over_its_session(
        open_serve: tuple[Served, Path]) -> None:
    served, secrets = open_serve
    creds = read_credentials(secrets / "cam-1.credentials")
    config = BrokerConfig.parse(served.url, username=creds.username, password=creds.password)
    stolen, granted, subscribed = [], [], threading.Event()
    with login(served, secrets, "cam-2") as victim:
        assert victim.request(activation(0), 10.0).source == "remote"
        spy = config.client(victim._mqtt._client_id.decode())  # cam-1's login, the victim's client id...
        spy.on_message = lambda client, userdata, message: stolen.append(message.payload)
        spy.on_subscribe = lambda client, userdata, mid, reasons, props: (granted.extend(reasons), subscribed.set())
        spy.on_connect = lambda client, userdata, flags, reason, props: client.subscribe("edgekit/res/cam-2", qos=1)
        config.connect_async(spy)  # ...subscribed to the victim's answers
        try:
            assert subscribed.wait(10)
            for i in range(5):
                assert victim.request(activation(i), 10.0).source == "remote"
            assert victim.counts["reconnects"] == 0  # the spy's client id did not kick the victim off
        finally:
            spy.disconnect()
            spy.loop_stop()
    assert stolen == []
    assert [str(r) for r in granted] == ["Granted QoS 1"]  # Mosquitto 2.0 applies the read ACL per message


def test_device_credentials_are_kept_across_restarts(bundle: Path, tmp_path: Path) -> None:
    secrets = tmp_path / "kept"
    write_credentials(secrets.parent / "seed.credentials", Credentials("cam-9", "an-old-secret"))
    secrets.mkdir(mode=0o755)
    (secrets.parent / "seed.credentials").rename(secrets / "cam-9.credentials")
    (secrets / "cam-9.credentials").chmod(0o644)
    served = Served(bundle, "--listen", "0.0.0.0", "--secrets", str(secrets), "--devices", "cam-9")
    try:
        served.wait_line("ready")
        assert read_credentials(secrets / "cam-9.credentials") == Credentials("cam-9", "an-old-secret")
        assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
        assert stat.S_IMODE((secrets / "cam-9.credentials").stat().st_mode) == 0o600
        config = BrokerConfig.parse(served.url, username="cam-9", password="an-old-secret")
        with OffloadClient(config, "tiny_tail", connect_timeout_s=5, answer_key=served.key) as client:
            assert client.request(activation(1), 10.0).source == "remote"
    finally:
        served.close()


def test_credentials_files_as_lines_or_json(tmp_path: Path) -> None:
    (tmp_path / "lines").write_text("# a comment\nusername=cam-1\npassword=pa=ss\n")
    (tmp_path / "json").write_text(json.dumps({"username": "cam-1", "password": "pa=ss"}))
    for name in ("lines", "json"):
        assert read_credentials(tmp_path / name) == Credentials("cam-1", "pa=ss")
    assert "pa=ss" not in repr(read_credentials(tmp_path / "json"))
    for text in ("username=cam-1\n", "just a password\n", '{"username": "cam-1", "password": 7}'):
        (tmp_path / "bad").write_text(text)
        with pytest.raises(OffloadError, match=r"credentials file .*bad: expected 'username=NAME' and "
                                               r"'password=SECRET' lines or a JSON object"):
            read_credentials(tmp_path / "bad")


def test_run_reads_the_credentials_file(capsys: pytest.CaptureFixture, bundle: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", activation(0).array)
    code, _, err = run(capsys, "run", str(bundle), "--input", str(tmp_path / "x.npy"), "--broker",
                       "mqtt://127.0.0.1:1", "--credentials", str(tmp_path / "missing"))
    assert code == 2 and err.startswith(f"edgekit: error: credentials file {tmp_path / 'missing'}: cannot read it")


def test_the_password_file_is_hashed_without_a_password_on_a_command_line(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    argvs: list[list[str]] = []
    real = subprocess.run
    monkeypatch.setattr(security.subprocess, "run", lambda argv, **kw: (argvs.append(argv), real(argv, **kw))[1])
    path = write_password_file(tmp_path / "passwd", {"cam-1": "s3cret-one", "tail": "s3cret-two"})
    assert argvs == [["mosquitto_passwd", "-U", str(path)]]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "s3cret" not in text and [line.split(":")[0] for line in text.splitlines()] == ["cam-1", "tail"]
    with pytest.raises(BrokerError, match="usernames must be non-empty without ':'"):
        write_password_file(tmp_path / "bad", {"a:b": "x"})

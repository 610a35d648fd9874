"""Locking a broker down for offloading: password file, per-device ACL, credentials files, and a throwaway CA.

The ACL follows the topic layout (protocol.py): with Mosquitto's `%u` a device may publish only requests
whose last level is its own username and read only its own answer topic; tail servers (named users) read all
requests and write all answers. Every secret is written with mode 0600 and no password ever goes on a command
line. `fleet_secrets` is what `edgekit serve --listen ADDRESS` uses. Production certificates come from your
own PKI; `make_dev_pki` is for a lab.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import BrokerError, OffloadError
from edgekit.offload.broker import TlsFiles
from edgekit.offload.protocol import Topics


def _run(argv: list[str], what: str) -> None:
    if shutil.which(argv[0]) is None:
        package = "mosquitto" if argv[0].startswith("mosquitto") else argv[0]
        raise BrokerError(f"{what} needs '{argv[0]}' on PATH (apt-get install {package})")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"{what}: {' '.join(argv[:2])} failed: {(done.stderr or done.stdout).strip()[:300]}")


@dataclass(frozen=True)
class Credentials:
    """A broker login: the username (a device's id under the ACL) and its password."""

    username: str
    password: str = field(repr=False)


def write_private(path: str | Path, text: str) -> Path:
    """Write `text` to a file only its owner may read (0600 from the first byte, also when it existed)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)
        file.write(text)
    return path


def write_password_file(path: str | Path, users: Mapping[str, str]) -> Path:
    """A Mosquitto password file (mode 0600) holding `users` (name -> password), hashed by `mosquitto_passwd -U`.

    The plain text is written 0600 and hashed in place, so no password appears on a command line."""
    bad = [name for name in users if not name or any(c in name for c in ":\n\r")]
    if bad or any("\n" in p or "\r" in p for p in users.values()):
        raise BrokerError(f"usernames must be non-empty without ':' or line breaks, passwords without line breaks; "
                          f"found {bad or 'a password with a line break'}")
    path = write_private(path, "".join(f"{name}:{password}\n" for name, password in users.items()))
    try:
        _run(["mosquitto_passwd", "-U", str(path)], "hashing the password file")
    except BrokerError:
        path.unlink()  # never leave the plain text behind
        raise
    return path


def write_credentials(path: str | Path, credentials: Credentials) -> Path:
    """A device's credentials file (0600): `username=` and `password=` lines, read by `read_credentials`."""
    return write_private(path, "# edgekit broker login; keep it secret: edgekit run ... --credentials FILE\n"
                               f"username={credentials.username}\npassword={credentials.password}\n")


def read_credentials(path: str | Path) -> Credentials:
    """A credentials file: `username=NAME` / `password=SECRET` lines (# comments allowed) or a JSON object."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise OffloadError(f"credentials file {path}: cannot read it ({exc})") from None
    try:
        fields = json.loads(text) if text.lstrip().startswith("{") else dict(
            line.split("=", 1) for line in map(str.strip, text.splitlines()) if line and not line.startswith("#"))
    except ValueError:
        fields = None
    if not isinstance(fields, dict) or not all(isinstance(fields.get(k), str) and fields[k]
                                               for k in ("username", "password")):
        raise OffloadError(f"credentials file {path}: expected 'username=NAME' and 'password=SECRET' lines or a "
                           'JSON object {"username": ..., "password": ...}')
    return Credentials(fields["username"].strip(), fields["password"].strip())


def acl_text(topics: Topics, servers: Iterable[str] = ("tail",)) -> str:
    """Mosquitto ACL lines: devices touch only their own topics, `servers` all requests and answers."""
    lines = ["# edgekit offload: a device publishes only its own requests and reads only its own answers",
             f"pattern write {topics.prefix}/req/+/%u", f"pattern write {topics.prefix}/chunk/+/%u",
             f"pattern read {topics.prefix}/res/%u"]
    for server in servers:
        lines += ["", f"user {server}", f"topic read {topics.prefix}/req/#", f"topic read {topics.prefix}/chunk/#",
                  f"topic write {topics.prefix}/res/+"]
    return "\n".join(lines) + "\n"


def write_acl(path: str | Path, topics: Topics, servers: Iterable[str] = ("tail",)) -> Path:
    """`acl_text` written to `path` (mode 0600)."""
    return write_private(path, acl_text(topics, servers))


@dataclass(frozen=True)
class FleetSecrets:
    """What a locked-down embedded broker needs: its password file and ACL, the servers' logins (kept in
    memory, new on every start) and each device's credentials file (kept, so devices keep working)."""

    password_file: Path
    acl_file: Path
    servers: tuple[Credentials, ...]
    devices: dict[str, Path]


def secrets_folder(bundle: str | Path) -> Path:
    """Where serve keeps a bundle's secrets unless told otherwise: the folder BUNDLE.secrets beside it."""
    bundle = Path(bundle).resolve()
    return bundle.parent / f"{bundle.stem}.secrets"


def private_folder(folder: str | Path) -> Path:
    """`folder`, made if missing, readable by its owner only (0700); OffloadError naming it when that fails."""
    folder = Path(folder)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
    except OSError as exc:
        raise OffloadError(f"cannot make the secrets folder {folder} ({exc}); name another with --secrets") from None
    return folder


def fleet_secrets(folder: str | Path, topics: Topics, devices: Sequence[str], servers: Sequence[str]) -> FleetSecrets:
    """Logins for `servers` and `devices`, the password file and ACL, in `folder` (0700, files 0600).

    A device's credentials file already in `folder` is reused; a missing one gets a random password."""
    folder = Path(folder)
    for name in devices:
        topics.response(name)  # a device id must be one topic level
    clash = sorted(set(devices) & set(servers))
    if clash or not devices:
        raise OffloadError(f"device names must be given and differ from the servers' ({', '.join(servers)}); "
                           f"found {', '.join(clash) or 'none'}")
    private_folder(folder)
    files = {name: folder / f"{name}.credentials" for name in devices}
    logins = [_device_login(name, path) for name, path in files.items()]
    server_logins = tuple(Credentials(name, secrets.token_urlsafe(24)) for name in servers)
    users = {c.username: c.password for c in (*server_logins, *logins)}
    return FleetSecrets(write_password_file(folder / "passwd", users), write_acl(folder / "acl", topics, servers),
                        server_logins, files)


def _device_login(name: str, path: Path) -> Credentials:
    """The device's credentials from `path` (made 0600), or new ones written there."""
    if not path.exists():
        login = Credentials(name, secrets.token_urlsafe(24))
        write_credentials(path, login)
        return login
    path.chmod(0o600)
    login = read_credentials(path)
    if login.username != name:
        raise OffloadError(f"credentials file {path} is for '{login.username}', not '{name}'")
    return login


def make_dev_pki(folder: str | Path, hosts: Iterable[str] = ("127.0.0.1", "localhost"),
                 clients: Iterable[str] = ()) -> tuple[TlsFiles, dict[str, tuple[Path, Path]]]:
    """A throwaway CA (P-256, 2 days) with a broker certificate for `hosts` and one per client name.

    Gives the broker's TlsFiles and, per client, its (certificate, key) paths. Uses the openssl command.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    key_options = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(["openssl", "req", "-x509", *key_options, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
          "-subj", "/CN=edgekit dev CA", "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"], "making the dev CA")

    def issue(name: str, extensions: str) -> tuple[Path, Path]:
        cert, key, csr, ext = (folder / f"{name}{suffix}" for suffix in (".crt", ".key", ".csr", ".ext"))
        _run(["openssl", "req", *key_options, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"],
             f"making the key of '{name}'")
        ext.write_text(extensions)
        _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
              "-out", str(cert), "-days", "2", "-extfile", str(ext)], f"signing the certificate of '{name}'")
        return cert, key

    names = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    common = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nsubjectKeyIdentifier=hash\n" \
             "authorityKeyIdentifier=keyid\n"
    cert, key = issue("broker", f"{common}extendedKeyUsage=serverAuth\nsubjectAltName={names}\n")
    issued = {name: issue(name, f"{common}extendedKeyUsage=clientAuth\n") for name in clients}
    return TlsFiles(ca, cert, key), issued

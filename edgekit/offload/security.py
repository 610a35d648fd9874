"""Locking a broker down for offloading: password file, per-device ACL, and a throwaway CA for labs and tests.

The ACL follows the topic layout (protocol.py): with Mosquitto's `%u` a device may publish only requests
whose last level is its own username and read only its own answer topic; tail servers (named users) read all
requests and write all answers. Production certificates come from your own PKI; `make_dev_pki` is for a lab.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from edgekit.errors import BrokerError
from edgekit.offload.broker import TlsFiles
from edgekit.offload.protocol import Topics


def _run(argv: list[str], what: str) -> None:
    if shutil.which(argv[0]) is None:
        package = "mosquitto" if argv[0].startswith("mosquitto") else argv[0]
        raise BrokerError(f"{what} needs '{argv[0]}' on PATH (apt-get install {package})")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"{what}: {' '.join(argv[:2])} failed: {(done.stderr or done.stdout).strip()[:300]}")


def write_password_file(path: str | Path, users: Mapping[str, str]) -> Path:
    """A Mosquitto password file (hashed by mosquitto_passwd) holding `users` (name -> password)."""
    path = Path(path)
    path.write_text("")
    for name, password in users.items():
        _run(["mosquitto_passwd", "-b", str(path), name, password], "writing the password file")
    return path


def acl_text(topics: Topics, servers: Iterable[str] = ("tail",)) -> str:
    """Mosquitto ACL lines: devices touch only their own topics, `servers` all requests and answers."""
    lines = ["# edgekit offload: a device publishes only its own requests and reads only its own answers",
             f"pattern write {topics.prefix}/req/+/%u", f"pattern read {topics.prefix}/res/%u"]
    for server in servers:
        lines += ["", f"user {server}", f"topic read {topics.prefix}/req/#", f"topic write {topics.prefix}/res/+"]
    return "\n".join(lines) + "\n"


def write_acl(path: str | Path, topics: Topics, servers: Iterable[str] = ("tail",)) -> Path:
    """`acl_text` written to `path`."""
    path = Path(path)
    path.write_text(acl_text(topics, servers))
    return path


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

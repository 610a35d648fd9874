"""Mosquitto bridge lines that join a spoke broker to a hub broker for edgekit's topics (MQTT v5).

The lines go into the spoke's config (`Broker(extra_config=...)`, or your own mosquitto.conf); the spoke dials
the hub. What crosses, and why a request is answered exactly once (docs/scale_out.md):

    in   $share/{group}/{prefix}/req/{model}/+   hub -> spoke   the bridge joins the hub's worker group
    in   {prefix}/chunk/{model}/+                hub -> spoke   a big request's later chunks (docs/protocol.md)
    out  {prefix}/res/#                          spoke -> hub   answers the spoke's workers give

A shared subscription is per broker: the hub hands each request published on it to exactly one member of its
group, a hub worker or one of the spoke's bridge connections (each is one member, so `shares` sets how big a
part of the hub's requests the spoke takes; only the first carries answers). The spoke republishes what it
gets once, locally, where its own group hands it to one spoke worker. Requests published on the spoke have
no `out` line: they stay there and only spoke workers serve them. Answers on the hub have no `in` line, so
nothing loops back. The price: every spoke answer also crosses to the hub (small frames; no device there
reads them), and every later chunk of the hub's chunked requests crosses to the spoke, whose workers drop
those whose first chunk they do not hold. With `shares` > 1 a first chunk may come over another connection
than its later chunks, which may then arrive first and be refused: keep `shares` at 1 where frames are chunked.
`cleansession true`: when a bridge drops, the hub forgets its share at once and serves
everything with its own workers.
"""

from __future__ import annotations

from edgekit.errors import OffloadError
from edgekit.offload.protocol import Topics


def bridge_config(hub_host: str, hub_port: int, model_id: str, *, name: str = "spoke", prefix: str = "edgekit",
                  group: str = "tail", shares: int = 1, keepalive_s: int = 10, username: str | None = None,
                  password: str | None = None, cafile: str | None = None) -> list[str]:
    """The config lines that bridge this (spoke) broker to the hub at `hub_host:hub_port` for `model_id`.

    `shares` bridge connections each take one member's part of the hub's requests; `username`/`password` log
    in to the hub; `cafile` makes the bridge speak TLS to it. Validated here so a typo is an OffloadError, not
    a broker that will not start."""
    topics = Topics(prefix)
    requests = topics.shared_requests(model_id, group)  # checks model id and group as topic levels
    if shares < 1 or keepalive_s < 1 or not 0 < hub_port < 65536:
        raise OffloadError(f"shares and keepalive_s must be >= 1 and hub_port 1..65535; found {shares}, "
                           f"{keepalive_s}, {hub_port}")
    if not name or not all(c.isalnum() or c in "-_" for c in name) or not hub_host or \
            any(c.isspace() for c in hub_host):
        raise OffloadError(f"bridge name must be letters, digits, '-' or '_' and the hub host one word; "
                           f"found {name!r}, {hub_host!r}")
    if (username is None) != (password is None):
        raise OffloadError("give both username and password for the hub login, or neither")
    lines: list[str] = []
    for index in range(shares):
        lines += [f"connection edgekit-{name}-{index}", f"address {hub_host}:{hub_port}",
                  f"remote_clientid edgekit-bridge-{name}-{index}", "bridge_protocol_version mqttv50",
                  "cleansession true", "try_private false", "notifications false", "start_type automatic",
                  "restart_timeout 1 10", f"keepalive_interval {keepalive_s}",
                  f"topic {requests} in 1"]
        if index == 0:  # one connection carries answers and later chunks: more would deliver each once per connection
            lines += [f"topic {topics.all_chunks(model_id)} in 1", f"topic {topics.prefix}/res/# out 1"]
        if username is not None:
            lines += [f"remote_username {username}", f"remote_password {password}"]
        if cafile is not None:
            lines.append(f"bridge_cafile {cafile}")
    return lines

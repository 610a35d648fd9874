"""Offloading a split model's tail to an edge server over MQTT (docs/protocol.md).

`frame` the bytes, `protocol` topic names and limits, `client.OffloadClient` the device's Transport,
`handler.TailHandler` and `server` the edge server, `broker` and `security` a Mosquitto of one's own.
"""

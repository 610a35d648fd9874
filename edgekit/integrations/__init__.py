"""Where detections go besides the caller: a drone's autopilot over MAVLink (mavlink.py). Device side, each
integration's library an optional extra imported only when used."""

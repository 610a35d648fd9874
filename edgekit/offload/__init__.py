"""Offloading boundary tensors to an edge server: the binary frame (the MQTT client and server come later)."""

"""The contract host and device share: bundle manifest, typed plans, the wire frame, int8 arithmetic, TFLite
flatbuffer reading. Imports nothing of edgekit but `errors` and `units`, so both sides can depend on it."""

"""What a person reads: text tables (`table`, `analysis`, `plans`, `runtime`, `calibration`, `fidelity`) and
PNG plots (`plot`). Host and CLI only: the device side (runtime, offload) returns data and never imports these."""

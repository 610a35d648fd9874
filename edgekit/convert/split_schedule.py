"""The manifest's `plan` of a split bundle, from the split plan it was cut by: which stages run where, the boundary
tensor, the cut and both baselines, the decision map, and the model id and version the server checks requests
against (a digest of both halves). Shared by `compile_split` (torch models) and `split_tflite` (.tflite files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgekit.formats.plans import SplitBoundary, SplitCut, SplitFigures, SplitSchedule
from edgekit.plan.split import SplitCandidate, SplitPlan


def split_schedule(plan: SplitPlan, server_dtype: str, requested: str, boundary: SplitBoundary, model: str,
                   head: Path, tail: Path) -> SplitSchedule:
    """The schedule of a bundle whose head file `head` runs on the device and `tail` on the server, cut at
    `plan.chosen` (`requested`: "auto" or the layer the user named)."""
    def cut(c: SplitCandidate) -> SplitCut:
        return SplitCut(c.device_layers, c.last_device_layer, c.payload_bytes, c.device_seconds, c.transfer_seconds,
                        c.server_seconds, c.total_seconds, c.device_joules)

    digest = hashlib.sha256(head.read_bytes() + tail.read_bytes()).hexdigest()
    figures = SplitFigures(plan.device, plan.server, plan.link, plan.uplink_bps, plan.objective, server_dtype,
                           requested, cut(plan.chosen), cut(plan.all_device), cut(plan.all_server), plan.decision_map)
    return SplitSchedule(("head",), ("tail",), model, f"sha256:{digest[:16]}", boundary, figures)

"""The held-out INT8 check as one line."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgekit.convert.fidelity import Fidelity


def render_fidelity(f: Fidelity | None, what: str, name: str) -> str:
    """The held-out check as one line: `what` it checked, top-1 agreement, accuracy fp32 vs `name`, output error."""
    if f is None:
        return f"{what}: not measured (pass --eval with held-out data)"
    accuracy = "" if f.fp32_accuracy is None or f.int8_accuracy is None else \
        f"; top-1 accuracy fp32 {100 * f.fp32_accuracy:.2f}% {name} {100 * f.int8_accuracy:.2f}%"
    return (f"{what} on {f.samples} held-out samples: top-1 agreement {100 * f.top1_agreement:.2f}%{accuracy}; "
            f"output error max {f.max_abs_error:.4f} mean {f.mean_abs_error:.4f}")

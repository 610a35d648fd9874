"""The INT8 check (on held-out or synthetic inputs) as one line, plus one line per output for a model with several;
and the report's warnings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgekit.convert.fidelity import Fidelity, OutputError


def render_fidelity(f: Fidelity | None, what: str, name: str, inputs: str) -> str:
    """The check: `what` it checked on which `inputs` ("held-out samples"), top-1 agreement, accuracy fp32 vs
    `name`, output error, and for several outputs each one's SQNR and error."""
    if f is None:
        return f"{what}: not measured (pass --eval with held-out data)"
    accuracy = "" if f.fp32_accuracy is None or f.int8_accuracy is None else \
        f"; top-1 accuracy fp32 {100 * f.fp32_accuracy:.2f}% {name} {100 * f.int8_accuracy:.2f}%"
    top1 = "no classifier output (top-1 not measured)" if f.top1_agreement is None else \
        f"top-1 agreement {100 * f.top1_agreement:.2f}%"
    line = (f"{what} on {f.samples} {inputs}: {top1}{accuracy}; "
            f"output error max {f.max_abs_error:.4f} mean {f.mean_abs_error:.4f}")
    if len(f.outputs) == 1:
        return f"{line}; {_sqnr(f.outputs[0])}"
    return "\n".join([line, *(f"  output '{o.name}': {_sqnr(o)}, error max {o.max_abs_error:.4f} "
                              f"mean {o.mean_abs_error:.4f}" for o in f.outputs)])


def render_warnings(warnings: tuple[str, ...]) -> list[str]:
    """One 'warning: ...' line per warning, in order."""
    return [f"warning: {warning}" for warning in warnings]


def _sqnr(output: OutputError) -> str:
    return "identical (no noise)" if output.sqnr_db is None else f"SQNR {output.sqnr_db:.1f} dB"

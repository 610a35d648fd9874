"""The tail server's job for one request, as a pure function of bytes: frame in, answer frame out.

Read the header strictly and refuse, before inflating a byte, what is not for this model: a wrong kind, model
id or version, a deadline already past, a tensor count or a tensor shape other than the tail input's (so a
payload never inflates past the bytes that input needs). Then feed the tensor to the tail Session (as is when
it already has the model's integer dtype and quantization, else dequantized to float32 for the session to
quantize), and answer with every output, one tensor each, named and ordered as the tail model declares them:
float32, or, when an output is quantized, its integers with their scale and zero point (a quarter of the
bytes; dequantizing them gives the session's float output bit for bit). Anything wrong becomes an error
answer naming the problem; no input makes it raise. With a fleet key (edgekit.offload.auth) every answer is
signed, and a request that is not signed with the key is refused ("forged") with an unsigned error answer
saying why: a signed answer would hand its sender a signed frame, and a device with the key drops it unread.
Testable without a broker; the MQTT server wraps it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np

from edgekit.errors import EdgekitError, FrameError, OffloadError, SignatureError
from edgekit.formats.chunk import frame_bound
from edgekit.formats.frame import (
    MAX_TENSOR_BYTES,
    MAX_TENSORS,
    Frame,
    Header,
    Tensor,
    encode,
    peek_request_id,
    read_header,
)
from edgekit.formats.quant import quantization, quantize
from edgekit.offload.auth import report_forged
from edgekit.runtime.session import Session
from edgekit.runtime.transport import Outputs, dequantize

log = logging.getLogger(__name__)
STATUSES = ("ok", "error", "expired", "forged")


class TailHandler:
    """Answers request frames with a loaded tail Session; `handle()` gives (status, answer bytes)."""

    def __init__(self, session: Session, model_id: str | None = None, model_version: str = "",
                 clock: Callable[[], float] = time.time, max_tensor_bytes: int = MAX_TENSOR_BYTES,
                 key: bytes | None = None) -> None:
        """`model_id` defaults to the bundle's model name; `clock` gives unix seconds (for deadlines); `key`, the
        fleet key, signs answers and is required on requests."""
        self.session, self.clock, self.max_tensor_bytes, self.key = session, clock, max_tensor_bytes, key
        self.forged = 0
        self.model_id = model_id or session.manifest.model
        self.model_version = model_version
        if len(session.outputs) > MAX_TENSORS:
            raise OffloadError(f"{session.bundle.path}: the tail has {len(session.outputs)} outputs; a response "
                               f"frame carries at most {MAX_TENSORS} tensors")
        info = session.input
        self._raw_dtype, self._raw_quant = np.dtype(info.dtype), quantization(info)  # quant None: floats only
        self._shapes = {tuple(info.shape), tuple(info.shape[1:]) if info.shape[:1] == (1,) else tuple(info.shape)}
        self._outputs = [(out.name, np.dtype(out.dtype), quantization(out)) for out in session.outputs]
        self.max_request_bytes = frame_bound([math.prod(info.shape)])  # the largest request worth reassembling

    def handle(self, payload: bytes, correlation: bytes | None = None) -> tuple[str, bytes]:
        """The status ('ok', 'error', 'expired': drop it, or 'forged': answer unsigned) and the answer frame.

        `correlation` (MQTT v5 CorrelationData) addresses the error answer to a frame too broken to read.
        """
        request_id = correlation if correlation is not None and len(correlation) == 16 else None
        try:
            request = read_header(payload, self.key, self.max_tensor_bytes)
        except SignatureError as exc:
            self.forged += 1
            report_forged(log, self.forged, f"tail '{self.model_id}'", str(exc))
            return "forged", self.unsigned_refusal(request_id or peek_request_id(payload) or bytes(16), str(exc))
        except FrameError as exc:
            return "error", self.error_answer(request_id or peek_request_id(payload) or bytes(16), 0, str(exc))
        if request.kind != "request":
            return "error", self.error_answer(request.request_id, request.deadline_ms,
                                              f"expected a request frame, found a {request.kind} frame")
        late_ms = self.clock() * 1000 - request.deadline_ms
        if late_ms > 0:
            return "expired", self.error_answer(request.request_id, request.deadline_ms,
                                                f"deadline passed {late_ms:.0f} ms before the tail could start")
        problem = self._refusal(request)
        if problem:
            return "error", self.error_answer(request.request_id, request.deadline_ms, problem)
        try:
            output = self.session.run(self._input(request.tensors[0].tensor()))
        except EdgekitError as exc:
            return "error", self.error_answer(request.request_id, request.deadline_ms, str(exc))
        except Exception as exc:  # noqa: BLE001 - a backend failure must not stop the server
            log.exception("tail failed on request %s", request.request_id.hex())
            return "error", self.error_answer(request.request_id, request.deadline_ms,
                                              f"tail failed: {type(exc).__name__}: {exc}")
        answer = Frame(request.request_id, request.deadline_ms, self.model_id, self.model_version,
                       self._tensors(output), kind="response")
        return "ok", encode(answer, key=self.key)

    def __call__(self, payload: bytes) -> bytes:
        """`handle(payload)`'s answer frame: the `bytes -> bytes` handler an in-process transport takes."""
        return self.handle(payload)[1]

    def _refusal(self, request: Header) -> str:
        """Why the header alone rules the request out, or '' (checked before any payload is inflated)."""
        if request.model_id != self.model_id:
            return f"this server runs model '{self.model_id}', the request is for '{request.model_id}'"
        if request.model_version and self.model_version and request.model_version != self.model_version:
            return f"this server runs version '{self.model_version}', the request is for '{request.model_version}'"
        if len(request.tensors) != 1:
            return f"the tail takes 1 tensor, the request has {len(request.tensors)}"
        (tensor,) = request.tensors
        info = self.session.input
        if tensor.shape not in self._shapes:
            return (f"input '{info.name}' takes {info.dtype} {tuple(info.shape)}; the request's tensor "
                    f"'{tensor.name}' is {tensor.dtype} {tensor.shape}")
        if tensor.dtype.kind != "f" and not tensor.scale:
            return (f"tensor '{tensor.name}' is {tensor.dtype} without a scale; integer tensors need their "
                    "quantization to be dequantized")
        return ""

    def _input(self, tensor: Tensor) -> np.ndarray:
        """The tensor as the session takes it: raw when dtype and quantization match exactly, else float32."""
        array = tensor.array
        if array.dtype.kind == "f":
            return array.astype(np.float32, copy=False)
        if self._raw_quant is not None and array.dtype == self._raw_dtype:
            scale, zero_point = self._raw_quant
            if tensor.zero_point == zero_point and math.isclose(tensor.scale, scale, rel_tol=1e-6):
                return array
        return dequantize(tensor)  # an integer tensor has a scale (checked with the header)

    def _tensors(self, output: Outputs) -> tuple[Tensor, ...]:
        """The session's float outputs, each back in the tail's integers where that output is quantized (exact:
        the session made the floats from those integers)."""
        arrays = output.values() if isinstance(output, dict) else (output,)
        tensors = []
        for (name, dtype, quant), array in zip(self._outputs, arrays):
            if quant is None:
                tensors.append(Tensor(name, array))
            else:
                tensors.append(Tensor(name, quantize(array, *quant, dtype), *quant))
        return tuple(tensors)

    def unsigned_refusal(self, request_id: bytes, reason: str) -> bytes:
        """An unsigned error answer telling a device without the right key why it is not served: signing it would
        hand any sender a signed frame, and a device holding the key drops it unread."""
        text = f"this server serves only requests signed with its fleet key (edgekit run --fleet-key FILE): {reason}"
        return self.error_answer(request_id, 0, text, signed=False)

    def error_answer(self, request_id: bytes, deadline_ms: int, text: str, signed: bool = True) -> bytes:
        """An error answer (signed with the fleet key, when there is one and `signed`) telling the device why it got
        no output."""
        return encode(Frame(request_id, deadline_ms, self.model_id, self.model_version, (), kind="error",
                            error=text), key=self.key if signed else None)

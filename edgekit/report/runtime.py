"""What `edgekit run`, `bench` and `serve` print: predictions, benchmarks, server metrics."""

from __future__ import annotations

from typing import Any

from edgekit.report.table import table
from edgekit.units import format_bytes


def render_prediction(result: dict[str, Any]) -> str:
    """The prediction as text: a header, then per frame and output its top-k or its summary (a detector's outputs
    only named: its detections follow)."""

    lines = [f"{result['model']} ({result['target']}) on {', '.join(result['backends'])}: {result['input']}"]
    for frame in result["results"]:
        if len(result["results"]) > 1:
            lines.append(f"frame {frame['frame']}:")
        for o in frame["outputs"]:
            head = f"output '{o['name']}' {o['dtype']} {tuple(o['shape'])}"
            if "detections" in frame:  # a detector's raw heads: their top-k would read as class scores
                lines.append(f"{head}: decoded below")
            elif "top" in o:
                lines.append(head + ":")
                lines.append(table(("rank", "class", "score"),
                                   [(rank, t["label"] if t["label"] is not None else t["index"], f"{t['score']:.4f}")
                                    for rank, t in enumerate(o["top"], 1)]))
            else:
                lines.append(f"{head}: min {o['min']:.4g} max {o['max']:.4g} mean {o['mean']:.4g}")
        if "detections" in frame:
            lines.append(f"detections: {len(frame['detections'])}" + (":" if frame["detections"] else ""))
            if frame["detections"]:
                lines.append(table(("label", "score", "x_min", "y_min", "x_max", "y_max"),
                                   [(d["label"], f"{d['score']:.4f}", *(f"{v:.3f}" for v in d["box"]))
                                    for d in frame["detections"]]))
            if "annotated" in frame:
                lines.append(f"annotated image written to {frame['annotated']}")
        if "answered_by" in frame:
            by = frame["answered_by"]
            lines.append(f"tail answered by: {by['source']} in {by['ms']:.1f} ms" +
                         (f" ({by['detail']})" if by["detail"] else ""))
    lines.append(f"latency (median of {len(result['results'])} frame(s)): {result['latency_ms']:.3f} ms")
    return "\n".join(lines)


def render_benchmark(result: dict[str, Any]) -> str:
    """The benchmark as text: latency percentiles, throughput, peak RSS and what the backend reports."""

    rss = result["peak_rss_bytes"]
    rows = [("latency p50", f"{result['p50_ms']:.3f} ms"), ("latency p90", f"{result['p90_ms']:.3f} ms"),
            ("latency p99", f"{result['p99_ms']:.3f} ms"), ("throughput", f"{result['throughput_fps']:.1f} frames/s"),
            ("peak RSS (process)", "unknown" if rss is None else f"{rss:,} B ({format_bytes(rss)})")]
    for m in result["backend_memory"]:
        value = "not reported" if m["bytes"] is None else f"{m['bytes']:,} B ({format_bytes(m['bytes'])})"
        rows.append((f"{m['stage']}: {m['kind']}", value))
    header = (f"{result['model']} ({result['target']}) on {'; '.join(result['engines'])}: {result['runs']} runs "
              f"after {result['warmup']} warm-up, one frame at a time")
    return header + "\n" + table(("figure", "value"), rows)


def render_metrics(metrics: dict[str, Any]) -> str:
    """The merged metrics as the lines `edgekit serve` prints on shutdown."""
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} ms"

    line = (f"served {metrics['requests']} requests with {metrics['workers']} worker(s) "
            f"(per worker {metrics['per_worker_requests']}): {metrics['ok']} answered, {metrics['error']} error "
            f"answers, {metrics['expired']} expired, {metrics['forged']} forged (unsigned or wrong key), "
            f"{metrics['dropped']} dropped; handling p50 {ms(metrics['p50_ms'])}, p99 {ms(metrics['p99_ms'])}")
    chunks = metrics.get("chunks")
    if chunks and any(chunks[k] for k in chunks if k not in ("open", "held_bytes", "no_first_chunk")):
        refused = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in chunks.items()
                            if v and k not in ("completed", "timed_out", "open", "held_bytes", "no_first_chunk"))
        line += (f"\nchunked requests: {chunks['completed']} put together, {chunks['timed_out']} timed out"
                 + (f"; chunks refused: {refused}" if refused else ""))
    return line


def render_stream(summary: dict[str, Any]) -> str:
    """What `edgekit stream` prints when the source ends: frames, throughput, latency percentiles, the MAVLink
    link's state."""
    def ms(p50: float | None, p99: float | None) -> str:
        return "-" if p50 is None or p99 is None else f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"

    rate = "unknown" if summary["source_fps"] is None else f"{summary['source_fps']:.1f} frames/s"
    rows = [("frames", f"{summary['frames_processed']} processed, {summary['frames_dropped']} dropped (drop-oldest), "
                       f"{summary['frames_read']} read"),
            ("throughput", f"{summary['fps']:.1f} frames/s over {summary['wall_s']:.2f} s (source: {rate})"),
            ("latency, capture to reported", ms(summary["latency_p50_ms"], summary["latency_p99_ms"])),
            ("inference and decoding", ms(summary["inference_p50_ms"], summary["inference_p99_ms"])),
            ("reporting", ms(summary["report_p50_ms"], summary["report_p99_ms"]))]
    if summary.get("answers"):
        rows.append(("split: answered by", ", ".join(f"{k} {v}" for k, v in summary["answers"].items() if v) or "-"))
    if "mavlink" in summary:
        link = summary["mavlink"]
        sent = ", ".join(f"{k} {v}" for k, v in link["sent"].items() if v)
        rows.append(("MAVLink " + link["endpoint"], ("vehicle seen" if link["vehicle_seen"] else "no vehicle heartbeat")
                     + (f"; sent {sent}" if sent else "") + (f"; last error: {link['last_error']}"
                                                             if link["last_error"] else "")))
    if "mqtt" in summary:
        mqtt = summary["mqtt"]
        rows.append((f"MQTT {mqtt['topic']}", ("" if mqtt["connected"] else "not connected; ")
                     + ", ".join(f"{k} {v}" for k, v in mqtt["sent"].items())
                     + (f"; last error: {mqtt['last_error']}" if mqtt["last_error"] else "")))
    if "ros2" in summary:
        rows.append((f"ROS 2 {summary['ros2']['topic']}", f"{summary['ros2']['published']} Detection2DArray published"))
    if "bag" in summary:
        rows.append((f"bag {summary['bag']['bag']}", f"{summary['bag']['recorded']} Detection2DArray recorded on "
                                                     f"{summary['bag']['topic']}"))
    return f"{summary['source']}: {summary['ended']}\n" + table(("figure", "value"), rows)

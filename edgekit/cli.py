"""The `edgekit` command: a thin shell over library calls; tables by default, `--json` on request."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.capture import Captured, user_stderr, user_stdout
from edgekit.errors import EdgekitError
from edgekit.progress import set_quiet

if TYPE_CHECKING:
    from edgekit.convert.compile import CompileReport
    from edgekit.convert.compile_compressed import CompressedCompileReport
    from edgekit.convert.compile_split import SplitCompileReport
    from edgekit.offload.connection import BrokerConfig

DEADLINE_MS = 1000  # `run`/`stream --broker`: each frame answered within this, by the server or the local tail


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape must be integers like 1,3,224,224, found {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"input shape must be positive integers, found {text!r}")
    return dims


def _emit(args: argparse.Namespace, data: object, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text, file=user_stdout())


def cmd_targets_list(args: argparse.Namespace) -> None:
    from edgekit.report.analysis import render_targets
    from edgekit.targets import list_targets, load_link, load_target

    devices = [load_target(n) for n in list_targets(args.pattern, kind="device")]
    links = [load_link(n) for n in list_targets(args.pattern, kind="link")]
    data = {"devices": [dataclasses.asdict(d) for d in devices], "links": [dataclasses.asdict(k) for k in links]}
    _emit(args, data, render_targets(devices, links))


def cmd_targets_show(args: argparse.Namespace) -> None:
    from edgekit.report.analysis import render_profile
    from edgekit.targets import load_profile

    profile = load_profile(args.name)
    _emit(args, dataclasses.asdict(profile), render_profile(profile))


def cmd_analyze(args: argparse.Namespace) -> None:
    from edgekit.analysis import analyze
    from edgekit.graph import load_graph
    from edgekit.report.analysis import render_analysis
    from edgekit.targets import load_target

    target = load_target(args.target) if args.target else None
    graph = load_graph(args.model, args.input_shape)
    result = analyze(graph, target, not args.no_inplace_depthwise, args.inplace_residual, args.materialize_pads)
    data = result.to_dict()
    if args.plot:
        from edgekit.report.plot import plot_memory

        data["plot"] = str(plot_memory(result, args.plot))
    text = render_analysis(result) + (f"\nplot written to {data['plot']}" if args.plot else "")
    _emit(args, data, text)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.5,0.5,0.5, found {text!r}") from None


def cmd_compile(args: argparse.Namespace) -> None:
    report = _compile(args)
    _emit(args, report.to_dict(), report.render() + f"\nwritten to {args.output}/")


def _compile(args: argparse.Namespace) -> Any:
    """What `compile` does for one model, as its report (`compile` and `compile-batch` print it)."""
    from dataclasses import replace

    from edgekit.convert.compile import compile_int8
    from edgekit.convert.compile_file import MODEL_FILES, compile_file, quantized_tflite
    from edgekit.convert.config import Int8Config
    from edgekit.convert.torch_model import as_torch_model
    from edgekit.graph import resolve_module
    from edgekit.targets import load_target

    if not args.int8:
        raise EdgekitError("only INT8 compilation exists so far: pass --int8")
    if bool(args.calib) == args.data_free and not quantized_tflite(args.model):
        raise EdgekitError("pass exactly one of --calib PATH (a .npy/.npz array or a folder of images) or --data-free")
    target = load_target(args.target)
    file_format = MODEL_FILES.get(Path(args.model).suffix)
    flags = (("format", args.format or file_format), ("calibration", args.calibration_method),
             ("max_samples", args.max_samples))
    overrides: dict[str, Any] = {k: v for k, v in flags if v is not None}
    if args.io_layout:
        overrides["channels_last_io"] = args.io_layout == "nhwc"
    config = Int8Config.for_target(target)
    if overrides.get("format") == "onnx":
        config = replace(config, channels_last_io=False)
    config = replace(config, **overrides)
    if args.pretrained and file_format:
        raise EdgekitError(f"{args.model}: --pretrained takes a registry model, not a model file")
    if (args.labels or args.detection) and not file_format:
        raise EdgekitError(f"{args.model}: --labels and --detection describe a model file; a registry model's "
                           "labels come from its cfg")
    if args.codecs and file_format:
        raise EdgekitError(f"{args.model}: --codecs measures compressed inputs through a torch model, not a file")
    if args.split and file_format == "onnx":
        raise EdgekitError(f"{args.model}: --split takes a torch model or a .tflite file, not an .onnx file")
    if (args.server or args.link or args.bandwidth) and not args.split:
        raise EdgekitError("--server, --link and --bandwidth describe a split: pass them with --split auto|LAYER")
    if args.split and not (args.server and args.link):
        raise EdgekitError("--split needs --server SERVER (runs the tail) and --link LINK (between device and "
                           "server), e.g. --server x86-server --link wifi")
    report: CompileReport | SplitCompileReport | CompressedCompileReport
    if file_format:
        layout = args.io_layout.upper() if args.io_layout else None
        if args.split:
            return _split_file(args, target, config, layout)
        report = compile_file(args.model, target, args.output, args.calib, args.eval, config, args.max_drop,
                              args.mean, args.std, args.input_shape, layout, *_file_metadata(args))
    else:
        model = as_torch_model(resolve_module(args.model, **({"pretrained": True} if args.pretrained else {})),
                               args.input_shape, args.calib)
        name = args.model.rpartition(":")[2]
        if args.split:
            from edgekit.convert.compile_split import compile_split
            from edgekit.targets import load_link

            server = load_target(args.server)
            codecs: tuple = ()
            if args.codecs:
                from edgekit.convert.input_codecs import codec_figures
                from edgekit.cost.codec import parse_codecs

                codecs = codec_figures(model, target, server, args.calib, args.eval, parse_codecs(args.codecs),
                                       args.mean, args.std)
            report = compile_split(model, name, target, server, load_link(args.link), args.output,
                                   args.calib, args.eval, args.split, args.bandwidth, config=config,
                                   max_drop_points=args.max_drop, mean=args.mean, std=args.std, codecs=codecs)
        else:
            report = compile_int8(model, name, target, args.output, args.calib, args.eval, config, args.max_drop,
                                  mean=args.mean, std=args.std)
    return report


def _file_metadata(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, Any]:
    """`--labels` (one name per line) and `--detection` (a DetectionSpec as JSON, validated; never evaluated)."""
    from edgekit.formats.detection import DetectionSpec

    labels = detection = None
    if args.labels:
        labels = tuple(line.strip() for line in _text(args.labels).splitlines() if line.strip())
        if not labels:
            raise EdgekitError(f"{args.labels}: no labels in the file (one class name per line)")
    if args.detection:
        try:
            data = json.loads(_text(args.detection))
        except json.JSONDecodeError as exc:
            raise EdgekitError(f"{args.detection}: not JSON ({exc.msg} at line {exc.lineno})") from None
        detection = DetectionSpec.from_dict(data, args.detection)
    return labels, detection


def _text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgekitError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise EdgekitError(f"{path}: not UTF-8 text") from None


def _split_file(args: argparse.Namespace, target: Any, config: Any, layout: str | None) -> Any:
    """`compile FILE.tflite --split`: the file compiled (or packaged) for the device as usual, then cut in two."""
    import tempfile

    from edgekit.convert.compile_file import compile_file
    from edgekit.convert.split_tflite import split_tflite_bundle
    from edgekit.targets import load_link, load_target

    server, link = load_target(args.server), load_link(args.link)  # checked before the compile's minutes
    with tempfile.TemporaryDirectory() as tmp:
        compiled = compile_file(args.model, target, Path(tmp) / "bundle", args.calib, args.eval, config,
                                args.max_drop, args.mean, args.std, args.input_shape, layout, *_file_metadata(args))
        return split_tflite_bundle(Path(tmp) / "bundle", args.output, server, link, args.split, args.bandwidth,
                                   compiled=compiled, device=target)


def cmd_compile_batch(args: argparse.Namespace) -> None:
    """Several compiles in one process, so torch and the converters are imported once: each `[[model]]` table of
    the TOML file holds `compile`'s options (`model = "digits_cnn"`, `target = "rpi4"`, `pretrained = true`,
    ...), over the `[defaults]` table. A model that fails is reported and the others still run."""
    import time

    from edgekit.report.table import table

    parser, entries = build_parser(), _batch_entries(Path(args.batch))
    results: list[dict[str, Any]] = []
    for number, (label, argv) in enumerate(entries, 1):
        start, where = time.perf_counter(), f"{args.batch}: model {number} ({label})"
        try:
            entry = _batch_args(parser, argv, where)
            with Captured(show=args.verbose):  # each model's third-party logs: kept only when it fails
                report = _compile(entry)
        except EdgekitError as exc:
            error = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
            results.append({"model": label, "error": error, "seconds": time.perf_counter() - start})
            if not args.json:
                print(f"[{number}/{len(entries)}] edgekit: error: {error}", file=user_stdout())
            continue
        seconds = time.perf_counter() - start
        results.append({"model": label, "output": entry.output, "seconds": seconds, "report": report.to_dict()})
        if not args.json:
            print(f"[{number}/{len(entries)}] {label} -> {entry.output} ({seconds:.1f} s)\n{report.render()}\n",
                  file=user_stdout())
    failed = [str(r["model"]) for r in results if "error" in r]
    rows = [(r["model"], r.get("output", "-"), f"{r['seconds']:.1f}", "failed" if "error" in r else "written")
            for r in results]
    total = float(sum(r["seconds"] for r in results))
    _emit(args, {"models": results, "seconds": total, "failed": failed},
          table(("model", "output", "seconds", "result"), rows) + f"\n{len(results)} models in {total:.1f} s")
    if failed:
        raise EdgekitError(f"{len(failed)} of {len(results)} models failed: {', '.join(failed)}")


def _batch_entries(path: Path) -> list[tuple[str, list[str]]]:
    """(label, compile argv) per `[[model]]` table of a batch file, its `[defaults]` under each."""
    from edgekit.targets import tomllib  # the standard library's, or tomli before Python 3.11

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"{path}: cannot read the batch file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise EdgekitError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"defaults", "model"})
    defaults, models = data.get("defaults", {}), data.get("model", [])
    if unknown or not isinstance(defaults, dict) or not isinstance(models, list) or not models:
        raise EdgekitError(f"{path}: a batch file holds an optional [defaults] table and one [[model]] table per "
                           f"model{f'; found {unknown}' if unknown else ''}")
    entries = []
    for number, table in enumerate(models, 1):
        options = {**defaults, **table}
        if not isinstance(options.get("model"), str):
            raise EdgekitError(f"{path}: model {number} has no `model = \"NAME\"` (a registry name, "
                               "module:factory or a model file)")
        argv = [options.pop("model")]
        label = f"{argv[0]} for {options['target']}" if isinstance(options.get("target"), str) else argv[0]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not False:
                argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
        entries.append((label, argv))
    return entries


def _batch_args(parser: argparse.ArgumentParser, argv: list[str], where: str) -> argparse.Namespace:
    """`compile`'s options of one batch entry, checked as the command line would be; EdgekitError naming it."""
    import io

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(["compile", *argv])
    except SystemExit:
        message = (errors.getvalue().strip().splitlines() or ["invalid options"])[-1]
        raise EdgekitError(f"{where}: {message.split(' error: ', 1)[-1]}") from None
    if args.json:
        raise EdgekitError(f"{where}: `json` belongs to compile-batch itself (edgekit compile-batch FILE --json)")
    return args


def cmd_codegen(args: argparse.Namespace) -> None:
    from pathlib import Path

    from edgekit.mcu.deploy import codegen, patch_plan
    from edgekit.report.table import table
    from edgekit.targets import load_target

    target = load_target(args.target)
    plan = patch_plan(Path(args.model), target, args.patch == "resident") if args.patch else None
    report = codegen(Path(args.model), Path(args.output), target, args.build, args.check, patch=plan)
    _emit(args, report.to_dict(), table(("codegen", "result"), report.rows()))
    if report.firmware is not None and not report.firmware.fits and not args.force:
        raise EdgekitError(f"the firmware does not fit {report.target}: {report.firmware.verdict} (from the linker); "
                           "pass --force to accept it")
    if not all(c.exact for c in report.checks):
        raise EdgekitError("the generated C differs from tflite-micro: " + ", ".join(
            c.build for c in report.checks if not c.exact))


def cmd_plan_patch(args: argparse.Namespace) -> None:
    from edgekit.convert.patch_pack import bundle_model_file
    from edgekit.errors import PlanError
    from edgekit.graph import load_graph
    from edgekit.memory import MemoryPolicy
    from edgekit.plan.patch import fixed_plan, patched_live_bytes, plan_patches
    from edgekit.report.plans import render_patch_plan
    from edgekit.targets import load_target

    if (args.stage_end is None) != (args.grid is None):
        raise EdgekitError("--stage-end and --grid go together (a hand-picked schedule), or neither (search)")
    budget = load_target(args.target).activation_budget_bytes if args.target else None
    graph = load_graph(bundle_model_file(args.model), args.input_shape)  # a bundle folder: its .tflite
    policy = MemoryPolicy("int8", not args.no_inplace_depthwise, args.inplace_residual, args.materialize_pads)
    if args.stage_end is not None:
        plan = fixed_plan(graph, args.stage_end, args.grid, args.input_resident, policy)
    else:
        plan = plan_patches(graph, budget, args.max_extra_macs, args.input_resident, policy,
                            force_patch=args.force_patch)
    if args.emit and plan.already_fits and plan.chosen is None:
        raise PlanError(f"{plan.model}: {plan.reason}, so --emit has no patch schedule to write; add --force-patch "
                        "to patch it anyway")
    data, text = plan.to_dict(), render_patch_plan(plan)
    if args.plot:
        from edgekit.report.plot import plot_patch_plan

        data["plot"] = str(plot_patch_plan(graph, plan, patched_live_bytes(graph, plan), args.plot))
        text += f"\nplot written to {data['plot']}"
    if args.emit:
        from edgekit.convert.patch_pack import emit_patch_artifacts

        data["emitted"] = emit_patch_artifacts(args.model, plan, args.emit,
                                               load_target(args.target) if args.target else None)
        emitted = data["emitted"]
        flash, macs = emitted["flash_bytes"], emitted["macs"]
        text += (f"\npatch bundle ({len(emitted['files'])} files) written to {args.emit}/: one stage model runs "
                 f"all {emitted['patches']} patches ({emitted['masks']} border masks); model bytes "
                 f"{flash['full']:,} full, {flash['patched']:,} patched (weights once); stage MACs "
                 f"x{macs['stage_patched'] / macs['stage_full']:.2f} (border patches compute their whole window); "
                 f"LiteRT runs every patch in one call of the unrolled model (stage MACs "
                 f"x{macs['stage_unrolled'] / macs['stage_full']:.2f}: each patch on its part inside the image)")
    _emit(args, data, text)


def _bit_rate(text: str) -> float:
    from edgekit.units import parse_quantity

    try:
        return parse_quantity(text, "bit_rate")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_plan_split(args: argparse.Namespace) -> None:
    from edgekit.graph import load_graph
    from edgekit.plan.split import plan_split, request_cut
    from edgekit.report.plans import render_split_plan
    from edgekit.targets import load_link, load_target

    graph = load_graph(args.model, args.input_shape)
    device, server, link = load_target(args.device), load_target(args.server), load_link(args.link)
    codecs: tuple = ()
    if args.eval or args.calib or args.codecs:
        from edgekit.convert.input_codecs import codec_figures
        from edgekit.cost.codec import DEFAULT_CODECS, parse_codecs
        from edgekit.graph import resolve_module

        if args.model.endswith((".onnx", ".tflite")):
            raise EdgekitError(f"{args.model}: compressed inputs are measured through a torch model, not a file")
        codecs = codec_figures(resolve_module(args.model), device, server, args.calib, args.eval,
                               parse_codecs(args.codecs) if args.codecs else DEFAULT_CODECS, args.mean, args.std,
                               input_shape=args.input_shape)
    plan = plan_split(graph, device, server, link, args.bandwidth, args.objective, args.dtype,
                      jpeg_bytes=args.jpeg_bytes, codecs=codecs, max_drop_points=args.max_drop)
    if args.split:
        plan = request_cut(plan, args.split)
    data, text = plan.to_dict(), render_split_plan(plan)
    if args.plot:
        from edgekit.report.plot import plot_split

        data["plot"] = str(plot_split(graph, device, server, link, args.objective, args.plot))
        text += f"\nplot written to {data['plot']}"
    _emit(args, data, text)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return value


def cmd_run(args: argparse.Namespace) -> None:
    from edgekit.formats.bundle import load_bundle
    from edgekit.report.runtime import render_prediction
    from edgekit.runtime.tasks import predict

    deadline_s = _deadline_s(args)
    bundle = load_bundle(args.bundle)
    if args.broker is None:
        result = predict(bundle, args.input, args.backend, args.top, args.threads, args.target,
                         annotate_to=args.annotate)
    else:
        from edgekit.offload.auth import load_key
        from edgekit.offload.client import OffloadClient

        keyed = {} if args.fleet_key is None else {"answer_key": load_key(args.fleet_key)}
        with OffloadClient.for_bundle(bundle, _device_broker(args), **keyed) as client:
            result = predict(bundle, args.input, args.backend, args.top, args.threads, args.target, client,
                             deadline_s, args.annotate)
    _emit(args, result, render_prediction(result))


def cmd_stream(args: argparse.Namespace) -> None:
    from edgekit.report.runtime import render_stream
    from edgekit.runtime import load
    from edgekit.runtime.stream import stream

    deadline_s = _deadline_s(args)
    with contextlib.ExitStack() as stack:
        if args.broker is None:
            session = load(args.bundle, args.backend, args.target, threads=args.threads)
        else:  # the head here, the tail on the edge server, as `run --broker` does
            from edgekit.formats.bundle import load_bundle
            from edgekit.offload.auth import load_key
            from edgekit.offload.client import OffloadClient

            bundle = load_bundle(args.bundle)
            keyed = {} if args.fleet_key is None else {"answer_key": load_key(args.fleet_key)}
            client = stack.enter_context(OffloadClient.for_bundle(bundle, _device_broker(args), **keyed))
            session = load(bundle, args.backend, args.target, threads=args.threads, transport=client,
                           deadline_s=deadline_s, resplit=not args.always_offload)
        reporters: dict[str, Any] = {}  # summary key -> reporter: report() per frame, health() for the summary
        if args.mavlink is not None:
            from edgekit.integrations.mavlink import Camera, MavlinkReporter

            reporters["mavlink"] = stack.enter_context(MavlinkReporter(args.mavlink, Camera(args.hfov, args.vfov),
                                                                       tuple(args.landing_label)))
        if args.mqtt is not None:
            from edgekit.integrations.mqtt_detections import MqttDetections
            from edgekit.offload.connection import BrokerConfig
            from edgekit.offload.security import read_credentials

            options = {"ca_certs": args.ca}
            if args.credentials:
                login = read_credentials(args.credentials)
                options.update(username=login.username, password=login.password)
            reporters["mqtt"] = stack.enter_context(MqttDetections(BrokerConfig.parse(args.mqtt, **options),
                                                                   args.device_id))
        if args.ros2 is not None:
            from edgekit.integrations.ros2 import Ros2Publisher

            reporters["ros2"] = stack.enter_context(Ros2Publisher(args.ros2, args.frame_id))
        if args.record is not None:
            from edgekit.integrations.ros2 import BagRecorder

            reporters["bag"] = stack.enter_context(BagRecorder(args.record, args.ros2 or "/detections",
                                                               args.frame_id))
        summary = stream(session, args.source, [r.report for r in reporters.values()], args.pace == "realtime",
                         args.max_frames).to_dict()
        for reporter in reporters.values():
            reporter.flush()  # what is still queued goes out before its counts are read
        summary.update((key, reporter.health()) for key, reporter in reporters.items())
    _emit(args, summary, render_stream(summary))


def _deadline_s(args: argparse.Namespace) -> float:
    """`--deadline-ms` in seconds, refused without `--broker`, as are the other options of an offloading run."""
    given = [flag for flag, value in (("--deadline-ms", args.deadline_ms), ("--fleet-key", args.fleet_key),
                                      ("--always-offload", getattr(args, "always_offload", False))) if value]
    if args.broker is None and given:
        raise EdgekitError(f"{', '.join(given)} only mean something with --broker (a split bundle's tail on a server)")
    return (args.deadline_ms or DEADLINE_MS) / 1000


def _device_broker(args: argparse.Namespace) -> str | BrokerConfig:
    """`--broker`, logged in with the `--credentials` file when one is given (the password stays off argv)."""
    if args.credentials is None:
        return str(args.broker)
    from edgekit.offload.connection import BrokerConfig
    from edgekit.offload.security import read_credentials

    login = read_credentials(args.credentials)
    return BrokerConfig.parse(args.broker, username=login.username, password=login.password)


def cmd_bench(args: argparse.Namespace) -> None:
    from edgekit.report.runtime import render_benchmark
    from edgekit.runtime.tasks import benchmark

    result = benchmark(args.bundle, args.runs, args.warmup, args.backend, args.threads, show_progress=True)
    _emit(args, result, render_benchmark(result))


def cmd_calibrate(args: argparse.Namespace) -> None:
    from edgekit.convert.torch_model import as_torch_model
    from edgekit.cost.calibrate import calibrate, evaluate
    from edgekit.graph import resolve_module
    from edgekit.report.calibration import render_errors

    name = args.model.rpartition(":")[2]
    command = (f"edgekit calibrate {args.model} --target {args.target} --backend {args.backend} "
               f"--threads {args.threads} --repeats {args.repeats}")
    if args.artifact:
        command += f" --artifact {args.artifact}"
    if args.input_shape:
        command += f" --input-shape {','.join(map(str, args.input_shape))}"
    model = as_torch_model(resolve_module(args.model), args.input_shape)
    calibration = calibrate(model, name, args.target, args.backend, args.threads, args.repeats, args.out, command,
                            args.artifact)
    holdouts = [spec.partition("=") for spec in args.holdout]
    rows = evaluate(calibration, [(model, name, args.artifact),
                                  *((m, m.rpartition(":")[2], path or None) for m, _, path in holdouts)])
    measured = calibration.device.calibration
    assert measured is not None
    data = {"profile": calibration.profile_path, "name": calibration.device.name, "device_arch": calibration.base.arch,
            "machine": measured.machine, "machine_arch": measured.machine_arch, "warning": calibration.warning,
            "fit": dataclasses.asdict(calibration.fit), "timings": dataclasses.asdict(calibration.timings),
            "errors": [dataclasses.asdict(r) for r in rows]}
    _emit(args, data, render_errors(calibration, rows))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit", description="Take a PyTorch model to edge hardware.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (always so with --json)")
    parser.add_argument("--verbose", action="store_true", help="show the output of the libraries edgekit runs "
                                                               "(converter steps, logs; on stderr); without it, "
                                                               "shown only when the command fails")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(sub: argparse._SubParsersAction, name: str, func: object, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(func=func)
        return p

    targets = commands.add_parser("targets", help="list and show target profiles").add_subparsers(
        dest="targets_command", required=True)
    p = command(targets, "list", cmd_targets_list, "list built-in device and link profiles")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'stm32*'")
    p = command(targets, "show", cmd_targets_show, "show one profile with the source of every number")
    p.add_argument("name", help="built-in profile name or path to a .toml file")

    p = command(commands, "analyze", cmd_analyze, "per-layer MACs, parameters, activation memory and fit")
    p.add_argument("model", help="reference model name (e.g. mobilenet_v2), package.module:factory, "
                                 "or a .onnx / .tflite file")
    p.add_argument("--input-shape", type=_shape, help="N,C,H,W (default: the model's own input_shape)")
    p.add_argument("--target", help="device profile name or .toml path: adds fits / does-not-fit")
    p.add_argument("--plot", metavar="PNG", help="write a plot of activation memory per layer")
    _accounting_flags(p)

    backends = ("litert", "onnxruntime", "tflite-micro")
    p = command(commands, "run", cmd_run, "run a bundle on an image or .npy/.npz frames (device side, no torch)")
    p.add_argument("bundle", help="bundle folder or .ekb file")
    p.add_argument("--input", required=True, help="an image (preprocessed as the manifest says) or a .npy/.npz "
                                                  "array of frames ('x' in an .npz)")
    p.add_argument("--backend", choices=backends, help="override the manifest's backend for every stage")
    p.add_argument("--top", type=_positive, default=5, help="classes shown per frame (default 5)")
    p.add_argument("--threads", type=_positive, help="backend threads (default: the backend's own)")
    p.add_argument("--target", help="refuse a bundle built for another target profile")
    p.add_argument("--annotate", metavar="OUT.png", help="detector bundle, image input: write the image with its "
                                                         "boxes, labels and scores drawn")
    p.add_argument("--broker", help="split bundle: run the tail on the edge server behind this MQTT broker "
                                    "(mqtt[s]://host:port, as `edgekit serve` prints); the local tail is the fallback")
    p.add_argument("--deadline-ms", type=_positive, help="with --broker: answer each frame within this many ms "
                                                         f"(default {DEADLINE_MS})")
    p.add_argument("--credentials", metavar="FILE", help="with --broker: the login file `edgekit serve --listen` "
                                                         "wrote for this device (username=/password= lines or JSON)")
    p.add_argument("--fleet-key", metavar="FILE", help="with --broker: the fleet key file `edgekit serve` uses: sign "
                                                       "requests, accept only signed answers (default: "
                                                       "BUNDLE.secrets/fleet.key beside the bundle, if there)")
    p = command(commands, "stream", cmd_stream, "run a detector bundle on video (file, /dev/videoN, GStreamer "
                "pipeline) until it ends, optionally reporting to a drone over MAVLink; prints FPS and latency")
    p.add_argument("bundle", help="detector bundle folder or .ekb file (a manifest with 'detection')")
    p.add_argument("--source", required=True, help="video file, /dev/videoN (or a camera index), or a GStreamer "
                                                   "pipeline (needs an OpenCV built with GStreamer)")
    p.add_argument("--pace", choices=("realtime", "fast"), default="realtime",
                   help="realtime: a file plays at its frame rate and late frames are dropped (oldest first); "
                        "fast: every frame, as fast as possible (default realtime)")
    p.add_argument("--max-frames", type=_positive, help="stop after this many processed frames")
    p.add_argument("--mavlink", metavar="ENDPOINT", help="report detections as a MAVLink companion: "
                                                         "udpout:HOST:PORT, udpin:, tcp:, or /dev/ttyX[,BAUD]")
    p.add_argument("--hfov", type=float, default=62.2, help="camera horizontal field of view in degrees, for "
                                                            "LANDING_TARGET angles (default 62.2: Pi camera v2)")
    p.add_argument("--vfov", type=float, default=48.8, help="camera vertical field of view in degrees (default 48.8)")
    p.add_argument("--landing-label", action="append", default=[], metavar="LABEL",
                   help="a class that is a landing target: its best box is sent as LANDING_TARGET (repeatable)")
    p.add_argument("--mqtt", metavar="URL", help="publish each frame's detections as JSON on PREFIX/det/DEVICE_ID "
                                                 "of this broker (mqtt[s]://[user@]host:port; QoS 0)")
    p.add_argument("--device-id", help="with --mqtt: the topic's device id (default: the login name, else the "
                                       "host name)")
    p.add_argument("--credentials", metavar="FILE", help="with --mqtt or --broker: a login file (username=/password= "
                                                         "lines or JSON; the password stays off argv)")
    p.add_argument("--ca", metavar="FILE", help="with an mqtts:// --mqtt: the CA that signed the broker's certificate")
    p.add_argument("--ros2", metavar="TOPIC", help="publish vision_msgs/Detection2DArray on this ROS 2 topic "
                                                   "(rclpy and vision_msgs from the robot's ROS install)")
    p.add_argument("--record", metavar="BAG", help="record the same Detection2DArray messages to a new rosbag2 "
                                                   "folder with MCAP storage (needs edgekit[ros], no ROS install)")
    p.add_argument("--frame-id", default="camera", help="with --ros2/--record: the header frame_id (default camera)")
    p.add_argument("--broker", help="split detector bundle: run the tail on the edge server behind this MQTT broker "
                                    "(mqtt[s]://host:port, as `edgekit serve` prints); the local tail is the fallback")
    p.add_argument("--deadline-ms", type=_positive, help="with --broker: answer each frame within this many ms "
                                                         f"(default {DEADLINE_MS})")
    p.add_argument("--fleet-key", metavar="FILE", help="with --broker: the fleet key file `edgekit serve` uses "
                                                       "(default: BUNDLE.secrets/fleet.key beside the bundle, if "
                                                       "there)")
    p.add_argument("--always-offload", action="store_true", help="with --broker: send every frame to the server "
                   "(no re-split to the device when the plan says the device is faster; the local tail still "
                   "answers a frame the server misses)")
    p.add_argument("--backend", choices=backends, help="override the manifest's backend for every stage")
    p.add_argument("--threads", type=_positive, help="backend threads (default: the backend's own)")
    p.add_argument("--target", help="refuse a bundle built for another target profile")
    p = command(commands, "bench", cmd_bench, "latency p50/p90/p99, throughput and peak memory of a bundle")
    p.add_argument("bundle", help="bundle folder or .ekb file")
    p.add_argument("--runs", type=_positive, default=200, help="timed runs (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed runs first (default 20)")
    p.add_argument("--backend", choices=backends, help="override the manifest's backend for every stage")
    p.add_argument("--threads", type=_positive, help="backend threads (default: the backend's own)")

    p = command(commands, "calibrate", cmd_calibrate, "measure per-layer latency on this machine with the device's "
                "backend, fit the cost model, report its error and write a calibrated profile")
    p.add_argument("model", help="reference model name or package.module:factory")
    p.add_argument("--input-shape", type=_shape, help="N,C,H,W (default: the model's own input_shape)")
    p.add_argument("--target", required=True, help="device profile name or .toml path to calibrate")
    p.add_argument("--backend", choices=("onnxruntime", "litert"), default="onnxruntime",
                   help="runtime that measures: onnxruntime (per-kernel profiler, fp32 ONNX export) or litert "
                        "(timed prefixes of --artifact, or of an fp32 conversion)")
    p.add_argument("--artifact", metavar="MODEL.tflite",
                   help="litert: the .tflite of MODEL to measure (e.g. the INT8 one from edgekit compile); its dtype "
                        "is the one calibrated")
    p.add_argument("--threads", type=_positive, default=1, help="backend threads (default 1)")
    p.add_argument("--repeats", type=_positive, default=20, help="timed runs; medians are reported (default 20)")
    p.add_argument("--holdout", action="append", default=[], metavar="MODEL[=MODEL.tflite]",
                   help="also predict MODEL with the fitted cost model and measure it (repeatable; litert: with "
                        "its .tflite after '=')")
    p.add_argument("--out", metavar="PROFILE.toml", help="write the calibrated profile (plan split --device reads it)")

    p = command(commands, "compile-batch", cmd_compile_batch, "several compiles in one process (torch and the "
                "converters imported once), from a TOML file of [[model]] tables holding compile's options")
    p.add_argument("batch", help="TOML file: an optional [defaults] table and one [[model]] table per model, e.g. "
                                 "model = \"digits_cnn\", target = \"rpi4\", int8 = true, data_free = true, "
                                 "output = \"out/digits\"")
    p = command(commands, "compile", cmd_compile, "INT8 post-training quantization for a target, with a report")
    p.add_argument("model", help="reference model name, package.module:factory, or a float .tflite / .onnx file")
    p.add_argument("--target", required=True, help="device profile name or .toml path")
    p.add_argument("--int8", action="store_true", help="INT8 post-training quantization (the only mode so far)")
    p.add_argument("--input-shape", type=_shape, help="N,C,H,W (default: the model's own input_shape, else one "
                                                      "sample of the --calib array; .onnx: fills symbolic dims)")
    p.add_argument("--calib", help="calibration data: .npy/.npz (N,C,H,W for torch models; a model file's own "
                                   "input layout) or a folder of images")
    p.add_argument("--data-free", action="store_true",
                   help="no data: synthesise inputs whose batch-norm statistics match the model's (ZeroQ-style; "
                        "stops when the match stops improving, at 500 steps or after 120 s; without --eval, checked "
                        "on 16 fresh synthetic inputs)")
    p.add_argument("--eval", help="held-out .npz with 'x' and optional integer labels 'y' for the fidelity check")
    p.add_argument("--max-drop", type=float, default=1.0, help="fail when top-1 drops more points (default 1)")
    p.add_argument("--format", choices=("tflite", "onnx"), help="override the target's preset")
    p.add_argument("--calibration-method", choices=("histogram", "minmax", "entropy", "percentile"),
                   help="activation calibration: TFLite histogram (default) or minmax (about 2x faster per "
                        "sample); ONNX minmax (default), entropy or percentile")
    p.add_argument("--max-samples", type=int, help="cap on calibration samples (default 200 from --calib; "
                                                   "--data-free synthesises 32, each optimised, so more take longer)")
    p.add_argument("--io-layout", choices=("nchw", "nhwc"), help="TFLite input layout (default: nhwc for MCUs); "
                                                                 "a model file: its input's layout (default: "
                                                                 "nhwc for a .tflite with channels last)")
    p.add_argument("--mean", type=_floats, help="image preprocessing: per-channel mean after scaling to [0, 1] "
                                                "(default: the model's cfg, else 0)")
    p.add_argument("--std", type=_floats, help="image preprocessing: per-channel std after scaling to [0, 1] "
                                               "(default: the model's cfg, else 1)")
    p.add_argument("--labels", metavar="FILE", help="a model file: its class names, one per line (a registry "
                                                    "model's come from its cfg)")
    p.add_argument("--detection", metavar="FILE.json", help="a model file: how its outputs decode into boxes, the "
                   "manifest's 'detection' record as JSON (decoder, outputs, thresholds, anchors or grid)")
    p.add_argument("--pretrained", action="store_true", help="registry models: load bundled weights")
    p.add_argument("--split", metavar="auto|LAYER|CODEC:Q", help="split computing: INT8 head for --target up to "
                   "LAYER (or the planner's choice), fp32 ONNX tail for --server (a .tflite file: both halves cut "
                   "from the compiled file, the tail on LiteRT); CODEC:Q (one of --codecs): the input sent "
                   "compressed, the whole model on the server")
    p.add_argument("--codecs", metavar="CODEC:Q[,...]", help="with --split: also weigh sending the input compressed "
                   "(e.g. jpeg:50,jpeg:75,webp:50), measured on --eval (else --calib) within --max-drop")
    p.add_argument("--server", help="with --split: server profile that runs the tail")
    p.add_argument("--link", help="with --split: link profile between device and server")
    p.add_argument("--bandwidth", type=_bit_rate, help="with --split auto: what-if uplink, e.g. '5 Mbit/s'")
    p.add_argument("-o", "--output", required=True,
                   help="output bundle: a folder, or a single .ekb archive (replaced only if an earlier bundle)")

    p = command(commands, "codegen", cmd_codegen, "INT8 .tflite -> generated C and a firmware for an MCU board, "
                                                  "sized by the linker against the board")
    p.add_argument("model", help="full-integer INT8 .tflite (edgekit compile --int8 writes one)")
    p.add_argument("-o", "--output", required=True, help="folder for the C, Makefile and linker script")
    p.add_argument("--target", required=True, help="MCU profile: its core, flash and SRAM (e.g. stm32f746)")
    p.add_argument("--build", choices=("cortex-m", "host"), default="cortex-m",
                   help="cortex-m (default): the board firmware with arm-none-eabi-gcc; host: gcc only, no board")
    p.add_argument("--check", type=_positive, default=0, metavar="N", help="run N random inputs against "
                   "tflite-micro on the host build (and under QEMU when qemu-system-arm is installed)")
    p.add_argument("--force", action="store_true", help="exit 0 even when the firmware does not fit the board")
    p.add_argument("--patch", nargs="?", const="streamed", choices=("streamed", "resident"),
                   help="compile in edgekit's patch schedule (MCUNetV2) for the board: the first stage patch by "
                   "patch, the rest layer by layer, one static arena; the image streamed window by window "
                   "(ek_model_read_window, the default) or resident in the arena")

    plan = commands.add_parser("plan", help="plan patch-based execution").add_subparsers(dest="plan_command",
                                                                                     required=True)
    p = command(plan, "patch", cmd_plan_patch, "choose the patch stage and grid (MCUNetV2) under a target's SRAM")
    p.add_argument("model", help="reference model name, package.module:factory, or a .onnx / .tflite file")
    p.add_argument("--target", help="device profile: its SRAM (MCU) or RAM is the budget")
    p.add_argument("--input-shape", type=_shape, help="N,C,H,W (default: the model's own input_shape)")
    p.add_argument("--max-extra-macs", type=float, default=0.20, help="recompute budget (default 0.20 = 20%%)")
    p.add_argument("--input-resident", action="store_true", help="count the whole input image (default: streamed)")
    p.add_argument("--stage-end", help="hand-pick the last layer of the patch stage (with --grid) instead of searching")
    p.add_argument("--grid", type=int, help="hand-pick an n x n grid (with --stage-end)")
    p.add_argument("--emit", metavar="DIR", help="INT8 .tflite model (NHWC): write the patch models and schedule "
                                                 "(plus C arrays and headers for an MCU --target) to DIR")
    p.add_argument("--force-patch", action="store_true", help="patch even when the layer-by-layer peak already "
                                                             "fits the --target (default: no schedule, none emitted)")
    p.add_argument("--plot", metavar="PNG", help="write memory per layer, before and after")
    _accounting_flags(p)

    p = command(plan, "split", cmd_plan_split, "choose where to cut the model between device and edge server")
    p.add_argument("model", help="reference model name, package.module:factory, or a .onnx / .tflite file")
    p.add_argument("--device", required=True, help="device profile (runs the head)")
    p.add_argument("--server", required=True, help="server profile (runs the tail)")
    p.add_argument("--link", required=True, help="link profile between them")
    p.add_argument("--bandwidth", type=_bit_rate, help="what-if uplink, e.g. '5 Mbit/s' (default: the link's)")
    p.add_argument("--objective", choices=("latency", "energy"), default="latency")
    p.add_argument("--dtype", choices=("int8", "fp32"), default="int8",
                   help="the head's dtype on the device (a calibrated profile applies to its calibrated dtype)")
    p.add_argument("--split", metavar="LAYER", help="report your cut after LAYER against the planner's best (an "
                                                    "invalid cut is an error saying why)")
    p.add_argument("--jpeg-bytes", type=_positive, metavar="N", help="also report sending a JPEG of the input "
                                                                    "(N bytes per frame) instead of the raw input")
    p.add_argument("--eval", help="held-out .npz ('x') to measure compressed inputs on: bytes, codec time, top-1 "
                                  "drop through the float model; the planner then chooses among them too")
    p.add_argument("--calib", help="frames (.npy/.npz or images) to measure compressed inputs on without --eval")
    p.add_argument("--codecs", metavar="CODEC:Q[,...]", help="compressed inputs to weigh (default with --eval or "
                                                              "--calib: jpeg:50,jpeg:75,jpeg:90,webp:50,webp:75)")
    p.add_argument("--max-drop", type=float, default=1.0, help="refuse a compressed input whose top-1 drop exceeds "
                                                               "this many points (default 1)")
    p.add_argument("--mean", type=_floats, help="per-channel mean of the model's input normalisation")
    p.add_argument("--std", type=_floats, help="per-channel std of the model's input normalisation")
    p.add_argument("--input-shape", type=_shape, help="N,C,H,W (default: the model's own input_shape)")
    p.add_argument("--plot", metavar="PNG", help="write latency per cut at 1, 5, 20 and 100 Mbit/s")

    p = command(commands, "serve", cmd_serve, "run a bundle's tail for devices over MQTT until Ctrl-C")
    p.add_argument("bundle", help="bundle folder or .ekb file holding the tail")
    p.add_argument("--broker", help="mqtt[s]://[user@]host[:port] (password in $EDGEKIT_MQTT_PASSWORD); "
                                    "default: start an embedded Mosquitto on a free port")
    p.add_argument("--workers", type=_positive, default=1, help="worker processes sharing the requests (default 1)")
    p.add_argument("--model-id", help="model id devices ask for (default: the bundle's model name)")
    p.add_argument("--prefix", default="edgekit", help="topic prefix of the fleet (default edgekit)")
    p.add_argument("--group", default="tail", help="shared-subscription group (default tail)")
    p.add_argument("--listen", default="127.0.0.1", metavar="ADDRESS",
                   help="embedded broker's address (default 127.0.0.1: this machine only, anonymous); any other "
                        "address requires logins: serve writes them, with a per-device ACL, into --secrets")
    p.add_argument("--secrets", metavar="DIR", help="folder (0700) for the fleet key and, with a non-loopback "
                                                    "--listen, the password file, ACL and device credentials "
                                                    "(default BUNDLE.secrets beside the bundle; kept across restarts)")
    p.add_argument("--devices", type=lambda text: text.split(","), default=["device-1"], metavar="ID[,ID...]",
                   help="with a non-loopback --listen: device ids to make credentials for (default device-1)")
    p.add_argument("--ca", help="CA file to verify the broker (TLS)")
    p.add_argument("--cert", help="client certificate (TLS)")
    p.add_argument("--key", help="client key (TLS)")
    p.add_argument("--fleet-key", metavar="FILE", help="sign answers with this fleet key (hex, mode 0600) and serve "
                                                       "only requests signed with it (default: fleet.key in "
                                                       "--secrets, made on first serve)")
    p.add_argument("--backend", choices=backends, help="override the manifest's backend")
    p.add_argument("--threads", type=_positive, help="backend threads per worker")
    return parser


def cmd_serve(args: argparse.Namespace) -> None:
    from edgekit.offload.auth import load_key
    from edgekit.offload.connection import BrokerConfig
    from edgekit.offload.server import serve
    from edgekit.report.runtime import render_metrics

    broker = None if args.broker is None else BrokerConfig.parse(
        args.broker, ca_certs=args.ca, certfile=args.cert, keyfile=args.key,
        password=os.environ.get("EDGEKIT_MQTT_PASSWORD"))
    key = None if args.fleet_key is None else load_key(args.fleet_key)
    metrics = serve(args.bundle, broker, workers=args.workers, model_id=args.model_id, prefix=args.prefix,
                    group=args.group, backend=args.backend, threads=args.threads, listen=args.listen, answer_key=key,
                    secrets=args.secrets, devices=args.devices,
                    announce=lambda line: print(line, file=user_stderr() if args.json else user_stdout(), flush=True))
    _emit(args, metrics, render_metrics(metrics))


def _accounting_flags(p: argparse.ArgumentParser) -> None:
    """The memory-accounting variants (edgekit.memory.MemoryPolicy), shared by analyze and plan."""
    p.add_argument("--no-inplace-depthwise", action="store_true",
                   help="count depthwise input and output separately (default: in place, as MCUNetV2)")
    p.add_argument("--inplace-residual", action="store_true",
                   help="residual adds accumulate into their input (TinyEngine; the MCUNetV2 paper's 172 kB)")
    p.add_argument("--materialize-pads", action="store_true",
                   help="explicit PAD ops of a .tflite keep a padded copy, as TFLite runs them; with "
                        "--no-inplace-depthwise: TF Lite Micro's arena head")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one-line errors with a non-zero exit; tracebacks only with --debug; other libraries' output
    only with --verbose or before the error line (serve shows it as it comes: its workers run for hours)."""
    args = build_parser().parse_args(argv)
    set_quiet(args.quiet or getattr(args, "json", False))
    try:
        with Captured(show=args.verbose or args.func is cmd_serve):
            args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's final flush does not fail
        return 0
    except EdgekitError as exc:
        if args.debug:
            raise
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - last resort: still one line, the traceback behind --debug
        if args.debug:
            raise
        print(f"edgekit: unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        set_quiet(False)  # in-process callers (tests, notebooks) get their progress bars back
    return 0


if __name__ == "__main__":
    sys.exit(main())

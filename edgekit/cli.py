"""The `edgekit` command: a thin shell over library calls; tables by default, `--json` on request."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from edgekit.errors import EdgekitError


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape must be integers like 1,3,224,224, found {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"input shape must be positive integers, found {text!r}")
    return dims


def _emit(args: argparse.Namespace, data: object, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def cmd_targets_list(args: argparse.Namespace) -> None:
    from edgekit.report import render_targets
    from edgekit.targets import list_targets, load_link, load_target

    devices = [load_target(n) for n in list_targets(args.pattern, kind="device")]
    links = [load_link(n) for n in list_targets(args.pattern, kind="link")]
    data = {"devices": [dataclasses.asdict(d) for d in devices], "links": [dataclasses.asdict(k) for k in links]}
    _emit(args, data, render_targets(devices, links))


def cmd_targets_show(args: argparse.Namespace) -> None:
    from edgekit.report import render_profile
    from edgekit.targets import load_link, load_target
    from edgekit.errors import ProfileError

    try:
        profile = load_target(args.name)
    except ProfileError as exc:
        if "'kind' must be" not in str(exc):
            raise
        profile = load_link(args.name)
    _emit(args, dataclasses.asdict(profile), render_profile(profile))


def cmd_analyze(args: argparse.Namespace) -> None:
    from edgekit.analysis import analyze
    from edgekit.graph import load_graph
    from edgekit.report import render_analysis
    from edgekit.targets import load_target

    target = load_target(args.target) if args.target else None
    graph = load_graph(args.model, args.input_shape)
    result = analyze(graph, target, inplace_depthwise=not args.no_inplace_depthwise)
    data = result.to_dict()
    if args.plot:
        from edgekit.plot import plot_memory

        data["plot"] = str(plot_memory(result, args.plot))
    text = render_analysis(result) + (f"\nplot written to {data['plot']}" if args.plot else "")
    _emit(args, data, text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit", description="Take a PyTorch model to edge hardware.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
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
    p.add_argument("--no-inplace-depthwise", action="store_true",
                   help="count depthwise input and output separately (default: in place, as MCUNetV2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one-line errors with a non-zero exit; tracebacks only with --debug."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

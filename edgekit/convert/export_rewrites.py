"""Rewrites of an exported torch graph, before quantization, that keep its float results and spare the device.

An average pool whose window is larger than its input (Hugging Face EfficientNet's `AvgPool2d(hidden_dim,
ceil_mode=True)` on a 3x3 map) is a global mean: torch clips the window to the input. litert-torch lowers it
as it is written: PAD to the window (1x1280x1280x1280 int8, 2 GB of activation), a VALID pool, and a MUL undoing
the padded divisor, which also rounds the pooled values to the zero point in int8. As a mean it is one small op.
"""

from __future__ import annotations

from typing import Any


def covering_pools_as_means(module: Any) -> int:
    """Replace in the exported GraphModule `module` every avg_pool2d whose window covers its whole input (one
    output position, no padding, no divisor override) by a mean over H and W; returns how many it replaced."""
    import torch

    replaced = 0
    for node in list(module.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.avg_pool2d.default:
            continue
        x, kernel = node.args[0], list(node.args[1])
        padding = list(node.args[3]) if len(node.args) > 3 else [0]
        divisor = node.args[6] if len(node.args) > 6 else node.kwargs.get("divisor_override")
        source, result = x.meta.get("val"), node.meta.get("val")
        if source is None or result is None or divisor is not None or any(padding):
            continue
        height, width = (int(d) for d in source.shape[-2:])
        kernel = kernel * 2 if len(kernel) == 1 else kernel
        if tuple(result.shape[-2:]) != (1, 1) or kernel[0] < height or kernel[1] < width or kernel == [height, width]:
            continue
        with module.graph.inserting_before(node):
            mean = module.graph.call_function(torch.ops.aten.mean.dim, (x, [-2, -1], True))
        mean.meta = dict(node.meta)
        node.replace_all_uses_with(mean)
        module.graph.erase_node(node)
        replaced += 1
    if replaced:
        module.graph.lint()
        module.recompile()
    return replaced

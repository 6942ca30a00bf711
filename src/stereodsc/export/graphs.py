"""The deployed graphs: torch wrappers with the wire-side I/O (uint8 NHWC images, int32 symbols)
and their ONNX export with torch's default (dynamo) exporter.

Edge: ``image`` uint8 [1, H, W, 3] -> ``y`` int32 [1, M, H/16, W/16] (a scale-hyperprior model
also outputs ``z`` int32 [1, N, H/64, W/64], first): the conversion to float, the analysis transform
and the rounding all sit inside the graph, so a camera board feeds camera bytes and gets the
integers the entropy coder takes. Host: ``y`` int32 (+ ``side`` uint8 [1, H, W, 3]) -> ``image``
uint8 [1, H, W, 3], rounded as ``round(255 clamp(x_hat, 0, 1))``. The hyperprior's h_s is in
neither graph: its table rows come from the bundle's integer scale net (`stereodsc.entropy.scale_path`).

A model that refines its own decode with the side image (`refines_decode`: DSIN matching against the
side image itself) splits its host side in two: the host graph decodes ``y`` alone to x_dec (uint8),
and the refine graph takes (``x_dec``, ``side``) uint8 to ``image``, x_hat. Trained on the intra codec's frozen
decoder, its host graph is the intra codec's byte for byte, so the bundle stores it once and such a
quality costs only its refine graph (~0.1 MB); without a side image the host shows x_dec.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.export import Dim

from stereodsc.models import CompressionModel
from stereodsc.models.dsin import DSIN
from stereodsc.models.priors import ScaleHyperprior
from stereodsc.wire import MAX_DIM

EDGE_INPUTS = ("image",)
HOST_OUTPUTS = ("image",)
SIDE_INPUT = "side"
REFINE_INPUTS = ("x_dec", SIDE_INPUT)


def to_float(image: Tensor) -> Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [0, 1] (what the models were trained on)."""
    return image.permute(0, 3, 1, 2).to(torch.float32) / 255.0


def to_uint8(x: Tensor) -> Tensor:
    """float [B, 3, H, W] in [0, 1] -> uint8 [B, H, W, 3] (round half to even, as ONNX Round)."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8).permute(0, 2, 3, 1)


class EdgeGraph(nn.Module):
    """Camera side: uint8 image -> the integer symbols of every transmitted latent."""

    def __init__(self, model: CompressionModel, latents: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.latents = latents

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        latents = self.model.analysis(to_float(image))
        return tuple(latents[name].to(torch.int32) for name in self.latents)


class HostGraph(nn.Module):
    """Host side: symbols (+ the decoded side image for side-information models) -> uint8 image;
    for a model that `refines_decode`, symbols -> its decode before refinement, x_dec."""

    def __init__(self, model: CompressionModel) -> None:
        super().__init__()
        self.decode_only = refines_decode(model)
        self.model = model if self.decode_only else for_host_export(model)  # no SI-Net to widen in x_dec

    def forward(self, y: Tensor, side: Tensor | None = None) -> Tensor:
        if self.decode_only:
            assert isinstance(self.model, DSIN)
            return to_uint8(self.model.decode_without_side(y.to(torch.float32)))
        side_float = None if side is None else to_float(side)
        return to_uint8(self.model.synthesis({"y": y.to(torch.float32)}, side_float))


class RefineGraph(nn.Module):
    """Host side of a model that `refines_decode`: (x_dec, decoded side image) uint8 -> uint8 x_hat."""

    def __init__(self, model: DSIN) -> None:
        super().__init__()
        exported = for_host_export(model)
        assert isinstance(exported, DSIN)
        self.model = exported

    def forward(self, x_dec: Tensor, side: Tensor) -> Tensor:
        x_hat, _ = self.model.refine(to_float(x_dec), to_float(side))
        return to_uint8(x_hat)


def refines_decode(model: CompressionModel) -> bool:
    """Whether the model's host side is its plain decode x_dec = g_s(y) followed by a refinement with
    the side image that reads nothing else (DSIN without re-encoding the side image): exported as two
    graphs, host and refine."""
    return isinstance(model, DSIN) and not model.reencode_side


def graph_parts(model: CompressionModel) -> tuple[str, ...]:
    """The graphs each quality of the model exports, in the order they run."""
    return ("edge", "host", "refine") if refines_decode(model) else ("edge", "host")


def for_host_export(model: CompressionModel) -> CompressionModel:
    """The model as its host graph is exported: DSIN's SI-Net wider than 8 channels widened to a
    multiple of 16 with zero weights (the same function; `RefineNet.widened` says why; 8 runs as fast
    as 16 does), other models as they are."""
    if not isinstance(model, DSIN) or model.si_net.width <= 8 or model.si_net.width % 16 == 0:
        return model
    wide = copy.deepcopy(model)
    wide.si_net = model.si_net.widened(16)
    return wide


def host_input_names(model: CompressionModel) -> tuple[str, ...]:
    return ("y", SIDE_INPUT) if model.uses_side_info and not refines_decode(model) else ("y",)


def latent_names(model: CompressionModel) -> tuple[str, ...]:
    """The transmitted latents in wire-segment order: ("z", "y") for a scale hyperprior, else ("y",)."""
    return ("z", "y") if isinstance(model.prior, ScaleHyperprior) else ("y",)


def fixed_size_reason(model: CompressionModel, part: str) -> str | None:
    """Why a graph of this model is exported per padded size instead of once for any size (None: it isn't).

    Decided per model rather than by trying: torch.onnx falls back to tracing when torch.export
    fails, and a traced graph silently bakes in the example's shape.
    """
    if getattr(model, "patch_mode", None) == "grid":
        return "NDIC-CAM with patch_mode='grid' runs only at its training image_size"
    si_part = "refine" if refines_decode(model) else "host"
    if part == si_part and isinstance(model, DSIN) and model.search == "exhaustive":
        return (
            "DSIN's exhaustive SI-Finder loops over the rows of patches and indexes by the padded width "
            f"(shape-dependent control flow): one {si_part} graph per padded size (search='band' exports once)"
        )
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision ops, deprecations); errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_graph(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    opset: int,
    stride: int | None,
    y_stride: int | None = None,
) -> None:
    """Export `module` at the example `args` to one self-contained ONNX file.

    `stride` given: image dims are dynamic multiples of it, and a "y" input's dims are tied to them
    (y has `y_stride`, by default `stride`: a hyperprior pads images to 64, y is at 1/16);
    None: the graph runs only at the example's shapes. torch.export runs first, on its own, so a
    graph that cannot take dynamic shapes fails here instead of being traced at one size.
    """
    dynamic_shapes: dict[str, Any] | None = None
    if stride is not None:
        h, w = Dim("h", min=1, max=MAX_DIM // stride), Dim("w", min=1, max=MAX_DIM // stride)
        image_dims = {1: stride * h, 2: stride * w}
        ratio = stride // (y_stride or stride)
        y_dims = {2: h, 3: w} if ratio == 1 else {2: ratio * h, 3: ratio * w}
        by_name = {"image": image_dims, REFINE_INPUTS[0]: image_dims, SIDE_INPUT: image_dims, "y": y_dims}
        dynamic_shapes = {name: by_name[name] for name in input_names}
    module.eval()
    with _quiet(), torch.no_grad():
        # As torch.onnx's own capture: size-oblivious reasoning keeps the padding arithmetic of
        # NDIC-CAM's attention symbolic instead of guarding on the example's sizes.
        with torch.fx.experimental._config.patch(backed_size_oblivious=True):  # type: ignore[attr-defined]
            program = torch.export.export(
                module,
                args,
                dynamic_shapes=dynamic_shapes,
                strict=False,
                prefer_deferred_runtime_asserts_over_guards=True,
            )
        onnx_program = torch.onnx.export(
            program,
            args,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
        assert onnx_program is not None
        _drop_debug_metadata(onnx_program.model)
        onnx_program.save(path, external_data=False)


def _drop_debug_metadata(model: Any) -> None:
    """Remove the exporter's debug annotations (metadata_props of the model, its graphs, functions and
    nodes: stack traces with absolute source paths and line numbers, FX node dumps, and a range
    constraint dict whose order follows Python's per-process string hashing). They made the same
    model export to different bytes in another process or checkout, hence another bundle id, so a
    checkpoint exported on the fly on a camera and on a host (`stereodsc.export.open_model`) disagreed.
    """
    model.metadata_props.clear()
    for graph in (*model.graphs(), *model.functions.values()):
        graph.metadata_props.clear()
        for node in graph.all_nodes():
            node.metadata_props.clear()


HALF_MIN_ELEMENTS = 1024
"""Tensors at least this large (the convolution kernels: nearly all the bytes) are stored in float16."""


def round_weights_to_half(model: nn.Module, min_elements: int = HALF_MIN_ELEMENTS) -> int:
    """Round the model's large float parameters to float16 values (kept as float32), in place.

    The exported graph then holds exactly these values in float16 (`store_weights_half`): half the
    bytes, and the torch model the parity check compares against computes with the very same weights.
    Returns how many tensors were rounded.
    """
    rounded = 0
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and param.numel() >= min_elements and fits_half(param.detach().numpy()):
                param.copy_(param.half().float())
                rounded += 1
    return rounded


FLOAT16_MAX = float(np.finfo(np.float16).max)


def fits_half(values: np.ndarray) -> bool:
    """Whether float16 can hold every value's magnitude (a larger one would become inf): such a tensor
    stays float32 in the graph and in the model the parity check uses."""
    return bool(np.all(np.isfinite(values)) and np.abs(values).max(initial=0.0) <= FLOAT16_MAX)


def store_weights_half(path: Path, min_elements: int = HALF_MIN_ELEMENTS) -> int:
    """Rewrite an ONNX file so every large float32 initializer that float16 holds exactly is stored as
    float16 and cast back to float32 at load (onnxruntime and TensorRT fold the cast once, so the graph
    computes in float32 exactly as before). Returns how many initializers were converted."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    kept, casts, converted = [], [], 0
    for init in graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype != np.float32 or values.size < min_elements or not fits_half(values):
            kept.append(init)
            continue
        half = values.astype(np.float16)
        if np.array_equal(half, values):
            kept.append(numpy_helper.from_array(half, f"{init.name}__f16"))
            casts.append(helper.make_node("Cast", [f"{init.name}__f16"], [init.name], to=onnx.TensorProto.FLOAT))
            converted += 1
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)  # casts first: the nodes stay in topological order
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    return converted

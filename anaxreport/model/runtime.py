"""ONNX graphs of the detector's dense stages, written from the checkpoint's arrays, and the
sessions that run them: the heavy arithmetic of :class:`~.engine.OnnxModel`.

On these CPUs ONNX Runtime (MLAS, in its blocked NCHWc layout) runs the ResNet + FPN about 1.4×
faster than torch's oneDNN convolutions, and packs the box head's weights once, at load, where
torch's GEMM packs fc6's 25 MB on every call. The graphs are written here, node for node, from
the same folded arrays the torch model wraps (:mod:`.plan`), so there is no export step, no file
beside the checkpoint and nothing to go stale: the safetensors stay the one source of the
weights. No torch here: the CLI's engine must not import it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigurationError
from .config import RUNTIMES
from .plan import ROI_LEVELS

if TYPE_CHECKING:
    from .plan import BackboneSpec, BlockSpec, BoxHeadSpec, ConvSpec, LinearSpec, RpnSpec

__all__ = [
    "OnnxGraph",
    "Session",
    "box_head_graph",
    "default_threads",
    "features_graph",
    "nms_graph",
    "onnxruntime_available",
    "resolve_runtime",
]

OPSET = 17
TO_CHANNELS_LAST = [0, 2, 3, 1]
GROUP_NORM_REFUSED = "runtime onnxruntime: GroupNorm detectors run in torch only"


#: what the ONNX Runtime engine imports beyond NumPy (all are dependencies; a trimmed
#: install without them still runs in torch)
ENGINE_PACKAGES = ("onnx", "onnxruntime", "scipy")


def onnxruntime_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ENGINE_PACKAGES)


def resolve_runtime(runtime: str, foldable: bool) -> str:
    """``torch`` or ``onnxruntime`` for a requested runtime; ``foldable`` says whether every
    normalisation folds into its convolution (GroupNorm does not, and stays in torch)."""
    if runtime not in RUNTIMES:
        raise ConfigurationError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnxruntime" and not onnxruntime_available():
        raise ConfigurationError(
            f"runtime onnxruntime needs the packages {', '.join(ENGINE_PACKAGES)}"
        )
    if runtime == "onnxruntime" and not foldable:
        raise ConfigurationError(GROUP_NORM_REFUSED)
    if runtime == "auto":
        return "onnxruntime" if foldable and onnxruntime_available() else "torch"
    return runtime


@dataclass(frozen=True)
class OnnxGraph:
    """A serialised graph whose weights are kept apart, as arrays by initializer name."""

    model: bytes
    weights: Mapping[str, np.ndarray]


class GraphBuilder:
    """An ONNX graph written node by node; tensors are named in order of creation."""

    def __init__(self) -> None:
        from onnx import TensorProto, helper

        self._helper, self._proto = helper, TensorProto
        self._float = TensorProto.FLOAT
        self.nodes: list[object] = []
        self.initializers: list[object] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.inputs: list[object] = []
        self._constants: dict[int, tuple[np.ndarray, str]] = {}  # by id: one copy each
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def input(self, rank: int, dtype: str = "float") -> str:
        """An input of ``rank`` dimensions, each of any size."""
        name = self._name("input")
        shape = [f"{name}_{axis}" for axis in range(rank)]
        kind = self._float if dtype == "float" else self._proto.INT64
        self.inputs.append(self._helper.make_tensor_value_info(name, kind, shape))
        return name

    def constant(self, values: np.ndarray) -> str:
        """A weight, handed to the session beside the graph: its bytes never pass through
        protobuf (serialising 45 MB of weights cost 0.2 s of every start). An array given again
        (a layer shared by the FPN levels) is the same initializer."""
        if id(values) in self._constants:  # held below, so its id cannot be reused meanwhile
            return self._constants[id(values)][1]
        name = self._name("weight")
        array = np.ascontiguousarray(values, dtype=np.float32)
        proto = self._proto(name=name, data_type=self._float, dims=array.shape)
        proto.data_location = self._proto.EXTERNAL
        for key, value in (("location", "anaxreport"), ("offset", "0"),
                           ("length", str(array.nbytes))):  # fmt: skip
            proto.external_data.add(key=key, value=value)
        self.initializers.append(proto)
        self.arrays[name] = array
        self._constants[id(values)] = (values, name)
        return name

    def scalar(self, value: float, dtype: str = "float") -> str:
        """A one-element constant in the graph itself."""
        kind = self._float if dtype == "float" else self._proto.INT64
        tensor = self._helper.make_tensor(self._name("value"), kind, [1], [value])
        return self.node("Constant", [], value=tensor)

    def node(self, op: str, inputs: Sequence[str], **attributes: object) -> str:
        output = self._name(op.lower())
        self.nodes.append(self._helper.make_node(op, list(inputs), [output], **attributes))
        return output

    def model(self, outputs: Sequence[str], integer: Sequence[str] = ()) -> OnnxGraph:
        """The graph with these outputs (float32, but for the ``integer`` ones: int64)."""
        helper = self._helper
        graph = helper.make_graph(
            self.nodes,
            "anaxreport",
            self.inputs,
            [
                helper.make_tensor_value_info(
                    name, self._proto.INT64 if name in integer else self._float, None
                )
                for name in outputs
            ],
            self.initializers,
        )
        opset = [helper.make_opsetid("", OPSET)]
        # the oldest IR version that the opset needs, not the installed onnx's newest, which
        # an older onnxruntime refuses (onnx 1.23 writes IR 14; onnxruntime 1.30 reads ≤ 13)
        model = helper.make_model(
            graph,
            opset_imports=opset,
            producer_name="anaxreport",
            ir_version=helper.find_min_ir_version_for(opset),
        )
        return OnnxGraph(model.SerializeToString(), self.arrays)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` where it is set (torch's convention, which the benchmark's runs
    follow), else every core."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


class Session:
    """A graph on an ONNX Runtime CPU session: arrays in, arrays out.

    ONNX Runtime optimises a graph (0.1-0.2 s) with the GIL released, so the session is built
    in the background, beside the rest of the model's construction, until :meth:`wait`. Its
    threads spin between the nodes of a run, a forward pass 1-2.5 ms (2-4 %) faster than waking
    them for each node, and stop as each run ends: a pool that went on spinning would take the
    cores from the NumPy stages between the graphs.
    """

    def __init__(self, graph: OnnxGraph, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        options.log_severity_level = 3
        names = list(graph.weights)
        values = [onnxruntime.OrtValue.ortvalue_from_numpy(graph.weights[n]) for n in names]
        options.add_external_initializers(names, values)
        self.model = graph.model  # the graph, without its weights (which the session copies)
        pool = ThreadPoolExecutor(max_workers=1)
        self._building: Future[Any] | None = pool.submit(_session, graph, options, values)
        pool.shutdown(wait=False)  # the thread ends with the build

    def wait(self) -> None:
        """Wait until the session is built; raises what building it raised."""
        if self._building is not None:
            self.session = self._building.result()
            self.input_names = [node.name for node in self.session.get_inputs()]
            self._building = None

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        self.wait()
        feed = dict(zip(self.input_names, inputs, strict=True))
        return self.session.run(None, feed)

    def __deepcopy__(self, memo: dict[int, object]) -> Session:
        raise TypeError("an ONNX Runtime session cannot be copied; load the model again")


def _session(graph: OnnxGraph, options: Any, initializers: list[Any]) -> Any:
    """An ONNX Runtime CPU session of ``graph``. ``initializers``, the OrtValues that
    ``options`` names, are views of the graph's arrays: the session copies them as it loads,
    and they must live until then (this call holds them)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(graph.model, options, ["CPUExecutionProvider"])
    del initializers  # copied into the session: free to go from here
    return session


def features_graph(backbone: BackboneSpec, rpn: RpnSpec) -> OnnxGraph:
    """The ResNet + FPN and the RPN head's convolutions as one graph: an NCHW image batch in;
    out, the four pooled FPN levels as NHWC, then for each of the five levels the RPN's
    predictions [N, H, W, 5 A] (A objectness logits, then A × 4 deltas, per cell), the layout
    the NumPy stages read (ONNX Runtime writes it straight from its blocked layout)."""
    graph = GraphBuilder()
    x = graph.input(rank=4)
    x = graph.node("Relu", [_conv(graph, backbone.stem, x)])
    x = graph.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    stages = []
    for blocks in backbone.stages:
        for block in blocks:
            x = _block(graph, block, x)
        stages.append(x)
    inner = _conv(graph, backbone.lateral[-1], stages[-1])
    levels = [_conv(graph, backbone.output[-1], inner)]
    for index in range(len(stages) - 2, -1, -1):
        lateral = _conv(graph, backbone.lateral[index], stages[index])
        size = graph.node("Shape", [lateral])
        up = graph.node(
            "Resize",
            [inner, "", "", size],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )
        inner = graph.node("Add", [lateral, up])
        levels.insert(0, _conv(graph, backbone.output[index], inner))
    levels.append(graph.node("MaxPool", [levels[-1]], kernel_shape=[1, 1], strides=[2, 2]))
    hidden = rpn.conv
    predict = _conv_weights(graph, rpn.predict)
    predictions = []
    for level in levels:
        cells = graph.node("Relu", [_conv(graph, hidden, level)])
        out = graph.node("Conv", [cells, *predict], kernel_shape=[1, 1])
        predictions.append(graph.node("Transpose", [out], perm=TO_CHANNELS_LAST))
    pooled = [graph.node("Transpose", [x], perm=TO_CHANNELS_LAST) for x in levels[:ROI_LEVELS]]
    return graph.model([*pooled, *predictions])


def _conv_weights(graph: GraphBuilder, linear: LinearSpec) -> list[str]:
    """A linear layer over channels as the weights of a 1 × 1 convolution."""
    return [graph.constant(linear.weight[:, :, None, None]), graph.constant(linear.bias)]


def _conv(graph: GraphBuilder, conv: ConvSpec, x: str) -> str:
    if conv.group_norm is not None:
        raise ConfigurationError(GROUP_NORM_REFUSED)
    inputs = [x, graph.constant(conv.weight)]
    if conv.bias is not None:
        inputs.append(graph.constant(conv.bias))
    return graph.node("Conv", inputs, kernel_shape=list(conv.weight.shape[-2:]),
                      strides=[conv.stride] * 2, pads=[conv.padding] * 4)  # fmt: skip


def _block(graph: GraphBuilder, block: BlockSpec, x: str) -> str:
    out = x
    for conv in block.convs[:-1]:
        out = graph.node("Relu", [_conv(graph, conv, out)])
    out = _conv(graph, block.convs[-1], out)
    identity = x if block.downsample is None else _conv(graph, block.downsample, x)
    return graph.node("Relu", [graph.node("Add", [out, identity])])


def box_head_graph(box: BoxHeadSpec) -> OnnxGraph:
    """The box head (fc6, ReLU, fc7, ReLU) and predictor: pooled boxes [n, 7 · 7 · C] in
    (channels last); their 1024-d vectors, class logits and box regression out."""
    graph = GraphBuilder()
    hidden = graph.input(rank=2)
    for layer in (box.fc6, box.fc7):
        hidden = graph.node("Relu", [_linear(graph, layer, hidden)])
    return graph.model(
        [hidden, _linear(graph, box.cls_score, hidden), _linear(graph, box.bbox_pred, hidden)]
    )


def _linear(graph: GraphBuilder, layer: LinearSpec, x: str) -> str:
    inputs = [x, graph.constant(layer.weight), graph.constant(layer.bias)]
    return graph.node("Gemm", inputs, transB=1)


def nms_graph(threshold: float) -> OnnxGraph:
    """Greedy NMS for several classes at once (ONNX's NonMaxSuppression): boxes [1, N, 4] and
    scores [1, classes, N] in, a box dropped from a class by a score below 0; the survivors'
    (batch, class, box) indices [S, 3] out, each class's in order of score."""
    graph = GraphBuilder()
    boxes, scores = graph.input(rank=3), graph.input(rank=3)
    limit = graph.scalar(2**62, dtype="int64")
    kept = graph.node(
        "NonMaxSuppression",
        [boxes, scores, limit, graph.scalar(threshold), graph.scalar(-0.5)],
    )
    return graph.model([kept], integer=[kept])

"""The backbone on ONNX Runtime: the CPU's faster engine for this model's convolutions.

On these CPUs ONNX Runtime (MLAS, in its blocked NCHWc layout) runs the ResNet + FPN about 1.4×
faster than torch's oneDNN convolutions. It also runs the box head on the regions' 18 best boxes
(:class:`OnnxBoxHead`): its weights are packed once, at load, where torch's GEMM packs fc6's 25 MB
on every call, which at 18 rows costs more than the arithmetic (6.4 → 4.1 ms inside the model).
The rest stays in torch: the RPN's 3×3 convolution and the box head over the 300 proposals
measured no faster on ONNX Runtime inside the model, and proposals, NMS, RoIAlign and the GCN are
not its kind of work. The graphs are written here, node for node, from the same folded weights
the torch stages hold, so there is no export step, no file beside the checkpoint and nothing to
go stale: the safetensors stay the one source of the weights. ``tests/test_inference.py`` holds
both runtimes to the plain model's boxes and probabilities.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigurationError
from .config import RUNTIMES

if TYPE_CHECKING:
    from .inference import Conv, Linear, ResNetFPN, _Block

__all__ = [
    "OnnxBackbone",
    "OnnxBoxHead",
    "OnnxStage",
    "backbone_graph",
    "onnxruntime_available",
    "resolve_runtime",
]

OPSET = 17
TO_CHANNELS_LAST = [0, 2, 3, 1]
GROUP_NORM_REFUSED = "runtime onnxruntime: GroupNorm detectors run in torch only"


def onnxruntime_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def resolve_runtime(runtime: str, foldable: bool) -> str:
    """``torch`` or ``onnxruntime`` for a requested runtime; ``foldable`` says whether every
    normalisation folds into its convolution (GroupNorm does not, and stays in torch)."""
    if runtime not in RUNTIMES:
        raise ConfigurationError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnxruntime" and not onnxruntime_available():
        raise ConfigurationError(
            "runtime onnxruntime: the onnx and onnxruntime packages are missing"
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
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def input(self, rank: int) -> str:
        """A float32 input of ``rank`` dimensions, each of any size."""
        name = self._name("input")
        shape = [f"{name}_{axis}" for axis in range(rank)]
        self.inputs.append(self._helper.make_tensor_value_info(name, self._float, shape))
        return name

    def constant(self, tensor: Tensor) -> str:
        """A weight, handed to the session beside the graph: its bytes never pass through
        protobuf (serialising 45 MB of weights cost 0.2 s of every start)."""
        name = self._name("weight")
        array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        proto = self._proto(name=name, data_type=self._float, dims=array.shape)
        proto.data_location = self._proto.EXTERNAL
        for key, value in (("location", "anaxreport"), ("offset", "0"),
                           ("length", str(array.nbytes))):  # fmt: skip
            proto.external_data.add(key=key, value=value)
        self.initializers.append(proto)
        self.arrays[name] = array
        return name

    def node(self, op: str, inputs: Sequence[str], **attributes: object) -> str:
        output = self._name(op.lower())
        self.nodes.append(self._helper.make_node(op, list(inputs), [output], **attributes))
        return output

    def model(self, outputs: Sequence[str]) -> OnnxGraph:
        helper = self._helper
        graph = helper.make_graph(
            self.nodes,
            "anaxreport",
            self.inputs,
            [helper.make_tensor_value_info(name, self._float, None) for name in outputs],
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


class OnnxStage(nn.Module):
    """A graph on an ONNX Runtime session: tensors in, tensors out, CPU only.

    Its threads match torch's and do not spin between runs: a spinning pool would take the
    cores from the torch stages that follow it.
    """

    def __init__(self, graph: OnnxGraph, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        names = list(graph.weights)
        values = [onnxruntime.OrtValue.ortvalue_from_numpy(graph.weights[n]) for n in names]
        options.add_external_initializers(names, values)
        # ONNX Runtime optimises the graph (0.1-0.2 s) with the GIL released: in the background,
        # beside the rest of the model's construction, until :meth:`wait`
        pool = ThreadPoolExecutor(max_workers=1)
        self._building: Future[onnxruntime.InferenceSession] | None = pool.submit(
            _session, graph, options, values
        )
        pool.shutdown(wait=False)  # the thread ends with the build

    def wait(self) -> None:
        """Wait until the session is built; raises what building it raised."""
        if self._building is not None:
            self.session = self._building.result()
            self.input_names = [node.name for node in self.session.get_inputs()]
            self._building = None

    def forward(self, *inputs: Tensor) -> list[Tensor]:
        if any(x.device.type != "cpu" for x in inputs):
            raise ValueError("an ONNX Runtime stage runs on the CPU; use runtime='torch' on a GPU")
        self.wait()
        feed = {
            name: x.detach().contiguous().numpy()
            for name, x in zip(self.input_names, inputs, strict=True)
        }
        return [torch.from_numpy(out) for out in self.session.run(None, feed)]

    def __deepcopy__(self, memo: dict[int, object]) -> OnnxStage:
        raise TypeError(
            "an ONNX Runtime stage cannot be copied; build a model with runtime='torch'"
        )


def _session(graph: OnnxGraph, options: Any, initializers: list[Any]) -> Any:
    """An ONNX Runtime CPU session of ``graph``. ``initializers``, the OrtValues that
    ``options`` names, are views of the graph's arrays: the session copies them as it loads,
    and they must live until then (this call holds them)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(graph.model, options, ["CPUExecutionProvider"])
    del initializers  # copied into the session: free to go from here
    return session


class OnnxBackbone(OnnxStage):
    """:class:`~.inference.ResNetFPN` on ONNX Runtime: the same five maps, channels-last."""

    def __init__(self, backbone: ResNetFPN) -> None:
        super().__init__(backbone_graph(backbone))

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        return [level.permute(0, 3, 1, 2) for level in super().forward(x)]


def backbone_graph(backbone: ResNetFPN) -> OnnxGraph:
    """:class:`~.inference.ResNetFPN` as an ONNX graph: an NCHW image in, the five FPN levels
    out as NHWC, the layout the RPN's convolution and RoIAlign read (ONNX Runtime writes it
    straight from its blocked layout; torch would copy each map)."""
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
    return graph.model([graph.node("Transpose", [x], perm=TO_CHANNELS_LAST) for x in levels])


def _conv(graph: GraphBuilder, conv: Conv, x: str) -> str:
    if conv.grouped:
        raise ConfigurationError(GROUP_NORM_REFUSED)
    weight = conv.weight
    inputs = [x, graph.constant(weight)]
    if conv.bias is not None:
        inputs.append(graph.constant(conv.bias))
    return graph.node("Conv", inputs, kernel_shape=list(weight.shape[-2:]),
                      strides=[conv.stride] * 2, pads=[conv.padding] * 4)  # fmt: skip


def _block(graph: GraphBuilder, block: _Block, x: str) -> str:
    out = x
    for conv in block.convs[:-1]:
        out = graph.node("Relu", [_conv(graph, conv, out)])
    out = _conv(graph, block.convs[-1], out)
    identity = x if block.downsample is None else _conv(graph, block.downsample, x)
    return graph.node("Relu", [graph.node("Add", [out, identity])])


class OnnxBoxHead(OnnxStage):
    """The box head (fc6, ReLU, fc7, ReLU) on ONNX Runtime: pooled boxes [n, 7, 7, C] in, their
    1024-d vectors out, as :meth:`~.inference.RegionFeatures.box_head` gives them."""

    def __init__(self, fc6: Linear, fc7: Linear) -> None:
        graph = GraphBuilder()
        hidden = graph.input(rank=2)
        for layer in (fc6, fc7):
            inputs = [hidden, graph.constant(layer.weight), graph.constant(layer.bias)]
            hidden = graph.node("Relu", [graph.node("Gemm", inputs, transB=1)])
        super().__init__(graph.model([hidden]))

    def forward(self, pooled: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(pooled.flatten(1))[0]

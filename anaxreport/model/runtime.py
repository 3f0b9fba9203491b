"""The convolutional stages on ONNX Runtime: the CPU's faster engine for small-batch convolution.

On these CPUs ONNX Runtime's convolutions (MLAS, in its blocked NCHWc layout) run the ResNet +
FPN and the RPN's 3×3 convolution about 1.4× faster than torch's oneDNN path; the rest of the
model (proposal selection, RoIAlign, the box head, the GCN) stays in torch. The graphs are
written here, node for node, from the same folded weights the torch stages hold, so there is
no export step, no file beside the checkpoint and nothing to go stale: the safetensors stay
the one source of the weights. ``tests/test_inference.py`` holds both runtimes to the plain
model's boxes and probabilities.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .inference import Conv, ResNetFPN, _Block

__all__ = ["RUNTIMES", "OnnxStage", "onnxruntime_available", "resolve_runtime"]

#: ``auto`` takes ONNX Runtime on the CPU where it is installed, torch otherwise.
RUNTIMES = ("auto", "torch", "onnxruntime")
OPSET = 17


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
        raise ConfigurationError("runtime onnxruntime: GroupNorm detectors run in torch only")
    if runtime == "auto":
        return "onnxruntime" if foldable and onnxruntime_available() else "torch"
    return runtime


class GraphBuilder:
    """An ONNX graph written node by node; tensors are named in order of creation."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy = helper, numpy_helper
        self.nodes: list[object] = []
        self.initializers: list[object] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.inputs: list[str] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def input(self) -> str:
        """A float32 NCHW input of any batch size and image size."""
        self.inputs.append(self._name("input"))
        return self.inputs[-1]

    def constant(self, tensor: Tensor) -> str:
        """A weight, handed to the session beside the graph (its bytes never pass through
        protobuf: serialising 45 MB of weights cost 0.2 s of every start)."""
        from onnx import TensorProto

        name = self._name("weight")
        array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        proto = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
        proto.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", "anaxreport"),
            ("offset", "0"),
            ("length", str(array.nbytes)),
        ):
            proto.external_data.add(key=key, value=value)
        self.initializers.append(proto)
        self.arrays[name] = array
        return name

    def node(self, op: str, inputs: Sequence[str], **attributes: object) -> str:
        output = self._name(op.lower())
        self.nodes.append(self._helper.make_node(op, list(inputs), [output], **attributes))
        return output

    def conv(self, x: str, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> str:
        inputs = [x, self.constant(weight)] + ([self.constant(bias)] if bias is not None else [])
        return self.node(
            "Conv",
            inputs,
            kernel_shape=list(weight.shape[-2:]),
            strides=[stride, stride],
            pads=[padding] * 4,
        )

    def model(self, outputs: Sequence[str]) -> OnnxGraph:
        from onnx import TensorProto

        helper = self._helper

        def value(name: str) -> object:
            shape = ["batch", "channels", f"{name}_rows", f"{name}_columns"]
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

        graph = helper.make_graph(
            self.nodes,
            "anaxreport",
            [value(name) for name in self.inputs],
            [value(name) for name in outputs],
            self.initializers,
        )
        opset = [helper.make_opsetid("", OPSET)]
        model = helper.make_model(graph, opset_imports=opset, producer_name="anaxreport")
        return OnnxGraph(model.SerializeToString(), self.arrays)


@dataclass(frozen=True)
class OnnxGraph:
    """A serialised graph whose weights are kept apart, as arrays by initializer name."""

    model: bytes
    weights: Mapping[str, np.ndarray]


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
        self.session = onnxruntime.InferenceSession(
            graph.model, options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [node.name for node in self.session.get_inputs()]

    def forward(self, *inputs: Tensor) -> list[Tensor]:
        if any(x.device.type != "cpu" for x in inputs):
            raise ValueError("an ONNX Runtime stage runs on the CPU; use runtime='torch' on a GPU")
        feed = {
            name: x.detach().contiguous().numpy()
            for name, x in zip(self.input_names, inputs, strict=True)
        }
        return [torch.from_numpy(out) for out in self.session.run(None, feed)]

    def __deepcopy__(self, memo: dict[int, object]) -> OnnxStage:
        raise TypeError(
            "an ONNX Runtime stage cannot be copied; build a model with runtime='torch'"
        )


def backbone_graph(backbone: ResNetFPN, rpn_conv: Conv | None = None) -> OnnxGraph:
    """:class:`~.inference.ResNetFPN` as an ONNX graph: image in, the five FPN levels out."""
    graph = GraphBuilder()
    x = graph.input()
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
    if rpn_conv is not None:
        levels += [graph.node("Relu", [_conv(graph, rpn_conv, level)]) for level in list(levels)]
    return graph.model(levels)


def conv_relu_graph(conv: Conv, count: int) -> OnnxGraph:
    """One convolution and ReLU over ``count`` maps (the RPN's 3×3 over the FPN levels)."""
    graph = GraphBuilder()
    inputs = [graph.input() for _ in range(count)]
    weight = graph.constant(conv.weight)
    bias = [graph.constant(conv.bias)] if conv.bias is not None else []
    kernel = list(conv.weight.shape[-2:])
    outputs = [
        graph.node(
            "Relu",
            [graph.node("Conv", [x, weight, *bias], kernel_shape=kernel, pads=[conv.padding] * 4,
                        strides=[conv.stride] * 2)],
        )
        for x in inputs
    ]  # fmt: skip
    return graph.model(outputs)


def _conv(graph: GraphBuilder, conv: Conv, x: str) -> str:
    if conv.grouped:
        raise ConfigurationError("runtime onnxruntime: GroupNorm detectors run in torch only")
    return graph.conv(x, conv.weight, conv.bias, conv.stride, conv.padding)


def _block(graph: GraphBuilder, block: _Block, x: str) -> str:
    out = x
    for conv in block.convs[:-1]:
        out = graph.node("Relu", [_conv(graph, conv, out)])
    out = _conv(graph, block.convs[-1], out)
    identity = x if block.downsample is None else _conv(graph, block.downsample, x)
    return graph.node("Relu", [graph.node("Add", [out, identity])])

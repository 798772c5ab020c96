"""The convolutional transforms of the hierarchical DQ codec (``hdq``) on onnxruntime, without torch.

The ONNX graphs are built by hand from a model's stored arrays and mirror the torch modules of
:mod:`dqcodec.models.conv_transforms` (read there what each transform does), so an install
without torch can run the analysis and synthesis. Layer structure comes from the array names
and shapes (``<transform>.layers.<i>.weight``: a convolution, ``.gamma``: a GDN, an index with
no arrays: a LeakyReLU(0.1)), channel counts from the weights' shapes, so any size of the
architecture builds. The arrays are cast to float32, as torch's load does, and the graphs
compute in float32. All shapes are (B, channels, H, W); batch, height and width are dynamic.
"""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dqcodec.models.hdq_levels import FINE_STRIDE

LEAKY_SLOPE = 0.1  # the LeakyReLU of CoarseAnalysis and CoarseSynthesis
OPSET = 17
_shared_arena = False  # whether this process has registered the sessions' one memory arena


def _share_one_arena() -> None:
    """Register one memory arena in onnxruntime's environment (once per process; a forked worker
    inherits it) for every session to allocate from. Each session's own arena kept the largest
    buffers it had met, so the analysis' and the synthesis' stayed side by side: a 6 MP image in
    1024 tiles peaked at 1.18 GB to encode, and at 0.80-0.83 GB from one arena that grows by what
    is asked (not to the next power of two), in about the same time (two interleaved pairs of
    runs: 12.9-13.9 against 11.3-15.2 s)."""
    global _shared_arena
    if not _shared_arena:
        memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        same_as_requested = 1  # onnxruntime's ArenaExtendStrategy::kSameAsRequested
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, same_as_requested, -1, -1))
        _shared_arena = True


class _Graph:
    """Nodes and float32 initializers of one ONNX graph under construction, with unique names."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, array: np.ndarray) -> str:
        name = f"c{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attributes) -> str:
        output = f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def session(self, inputs: dict[str, int], output: str, options: ort.SessionOptions) -> ort.InferenceSession:
        """An InferenceSession of the graph; ``inputs``: name -> channels of each (B, channels,
        H, W) float32 input, whose B, H, W are free (each input gets its own names for them)."""
        values = [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", channels, f"{name}_height", f"{name}_width"])
            for name, channels in inputs.items()
        ]
        result = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", None, None, None])
        graph = helper.make_graph(self.nodes, "transform", values, [result], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        onnx.checker.check_model(model)
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _float32(arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    """The stored array (float16 for the network weights) as float32, as torch's load casts it."""
    return arrays[key].astype(np.float32)


def _nonnegative(arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    """compressai's NonNegativeParametrizer of parameter ``key``: max(p, bound)^2 - pedestal,
    in float32 as torch computes it."""
    bound = _float32(arrays, f"{key}_reparam.lower_bound.bound")
    pedestal = _float32(arrays, f"{key}_reparam.pedestal")
    return np.maximum(_float32(arrays, key), bound) ** 2 - pedestal


def _deconv(graph: _Graph, x: str, weight: np.ndarray, bias: np.ndarray) -> str:
    """compressai's ``deconv`` (ConvTranspose2d 5x5, stride 2, padding 2, output padding 1) of
    ``x`` (B, C_in, h, w) with ``weight`` (C_in, C_out, 5, 5) -> (B, C_out, 2h, 2w), as a sub-pixel
    convolution: output pixel (2m + a, 2n + b) reads inputs m - 1..m + 1, n - 1..n + 1 through
    taps (4 - 2t + a, 4 - 2u + b) of the kernel (t, u = 0..2; taps past 4 are zero), so one 3x3
    convolution gives the four phases (a, b) as channels 4 o + 2 a + b and a transposed 2x2
    convolution of stride 2 with one-hot weights puts them in place (exactly: each output
    pixel gets one input value).

    Why not onnxruntime's ConvTranspose: at the synthesis' 96-channel 128 x 192 -> 256 x 384
    layer it took 0.23 s on 2 threads (it multiplies into a 25-tap column buffer of 236 MB and
    scatters that), the 3x3 convolution 0.12 s (with 36 taps for 25: the zeros) and the
    interleave 0.01 s; the synthesis of a Kodak image took 0.30 s instead of 0.33-0.40 s (on
    1 thread, the same time). DepthToSpace would place the phases too, but took 0.06 s.
    """
    channels = weight.shape[1]
    taps = np.array([[4, 2, 0], [5, 3, 1]])  # [a, t]: the kernel row (or column) of phase a, offset t
    padded = np.pad(weight, ((0, 0), (0, 0), (0, 1), (0, 1)))  # tap 5 reads zero
    phases = padded[:, :, taps[:, :, None, None], taps[None, None, :, :]]  # (C_in, C_out, a, t, b, u)
    phases = phases.transpose(1, 2, 4, 0, 3, 5).reshape(4 * channels, weight.shape[0], 3, 3)
    x = graph.node("Conv", [x, graph.constant(phases), graph.constant(np.repeat(bias, 4))], pads=[1, 1, 1, 1])
    interleave = np.tile(np.eye(4, dtype=np.float32).reshape(4, 1, 2, 2), (channels, 1, 1, 1))
    return graph.node("ConvTranspose", [x, graph.constant(interleave)], group=channels, strides=[2, 2])


def _sequential(graph: _Graph, arrays: dict[str, np.ndarray], prefix: str, x: str, synthesis: bool) -> str:
    """The nodes of the ``nn.Sequential`` at ``<prefix>.layers`` applied to ``x``; returns its output.

    As in conv_transforms, a 3x3 convolution keeps the size (stride 1, padding 1) and a 5x5 one
    is compressai's ``conv`` (stride 2, padding 2) in an analysis, its ``deconv`` (:func:`_deconv`)
    in a synthesis; a synthesis' GDNs are inverse (IGDN).
    """
    layer_prefix = f"{prefix}.layers."
    count = 1 + max(int(key[len(layer_prefix):].split(".")[0]) for key in arrays if key.startswith(layer_prefix))
    for index in range(count):
        layer = f"{layer_prefix}{index}"
        if f"{layer}.weight" in arrays:
            weight, bias = _float32(arrays, f"{layer}.weight"), _float32(arrays, f"{layer}.bias")
            size = weight.shape[-1]
            if size == 3:
                x = graph.node("Conv", [x, graph.constant(weight), graph.constant(bias)], pads=[1, 1, 1, 1])
            elif size != 5:
                raise ValueError(f"{layer}.weight: {size} x {size} kernel, expected 3 x 3 or 5 x 5")
            elif synthesis:
                x = _deconv(graph, x, weight, bias)
            else:
                inputs = [x, graph.constant(weight), graph.constant(bias)]
                x = graph.node("Conv", inputs, strides=[2, 2], pads=[2, 2, 2, 2])
        elif f"{layer}.gamma" in arrays:
            # y = x / sqrt(beta + gamma * x^2) (IGDN: times the root); gamma (C, C) as a 1x1 convolution.
            gamma = _nonnegative(arrays, f"{layer}.gamma")
            beta = _nonnegative(arrays, f"{layer}.beta")
            square = graph.node("Mul", [x, x])
            norm = graph.node("Conv", [square, graph.constant(gamma[:, :, None, None]), graph.constant(beta)])
            x = graph.node("Mul" if synthesis else "Div", [x, graph.node("Sqrt", [norm])])
        else:
            x = graph.node("LeakyRelu", [x], alpha=LEAKY_SLOPE)
    return x


class OnnxTransforms:
    """The analysis, coarse analysis and synthesis of an ``hdq`` model as onnxruntime sessions.

    ``arrays``: the model's arrays by name, as stored (``safetensors.numpy.load_file`` of the
    level's file merged with its shared weights); those of ``analysis``, ``coarse_analysis``,
    ``synthesis`` and ``coarse_synthesis`` are used. ``threads``: onnxruntime's intra-op
    threads (0: its default). Results match the torch network to float32 rounding.
    """

    def __init__(self, arrays: dict[str, np.ndarray], threads: int = 0):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning after each run: the coder's numpy work between
        # runs needs the cores (spinning made hdq-q5's nearest-code search 3 times as slow).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No memory plan per input shape: each plan holds a block of the largest size it met, and
        # the tiles of a large image come in several shapes. A 6 MP image in 1024 tiles peaked at
        # 1.17 instead of 1.86 GB to encode, in the same time.
        options.enable_mem_pattern = False
        _share_one_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
        self._analysis = self._build_analysis(arrays, options)
        self._coarse_analysis = self._build_coarse_analysis(arrays, options)
        self._synthesis = self._build_synthesis(arrays, options)

    @staticmethod
    def _build_analysis(arrays: dict[str, np.ndarray], options: ort.SessionOptions) -> ort.InferenceSession:
        graph = _Graph()
        # The linear block path, PixelUnshuffle(16) then a 1x1 convolution: torch's unshuffled
        # channel c * 256 + 16 i + j is pixel (i, j) of colour c in the block, so the (C, 768)
        # matrix is a (C, 3, 16, 16) convolution of stride 16.
        weight = _float32(arrays, "analysis.linear.weight")
        weight = weight.reshape(weight.shape[0], -1, FINE_STRIDE, FINE_STRIDE)
        linear = graph.node(
            "Conv", ["image", graph.constant(weight), graph.constant(_float32(arrays, "analysis.linear.bias"))],
            strides=[FINE_STRIDE, FINE_STRIDE],
        )
        branch = _sequential(graph, arrays, "analysis", "image", synthesis=False)
        return graph.session({"image": 3}, graph.node("Add", [linear, branch]), options)

    @staticmethod
    def _build_coarse_analysis(arrays: dict[str, np.ndarray], options: ort.SessionOptions) -> ort.InferenceSession:
        graph = _Graph()
        channels = arrays["coarse_analysis.layers.0.weight"].shape[1]
        coarse = _sequential(graph, arrays, "coarse_analysis", "latent", synthesis=False)
        return graph.session({"latent": channels}, coarse, options)

    @staticmethod
    def _build_synthesis(arrays: dict[str, np.ndarray], options: ort.SessionOptions) -> ort.InferenceSession:
        graph = _Graph()
        # The linear block path reads the fine features only: a 1x1 convolution to 768
        # channels, then PixelShuffle(16), whose channel order DepthToSpace's CRD mode has.
        weight = _float32(arrays, "synthesis.linear.weight")
        linear = graph.node(
            "Conv", ["fine", graph.constant(weight), graph.constant(_float32(arrays, "synthesis.linear.bias"))]
        )
        linear = graph.node("DepthToSpace", [linear], blocksize=FINE_STRIDE, mode="CRD")
        coarse = _sequential(graph, arrays, "coarse_synthesis", "coarse", synthesis=True)
        features = graph.node("Concat", ["fine", coarse], axis=1)
        branch = _sequential(graph, arrays, "synthesis", features, synthesis=True)
        inputs = {"fine": weight.shape[1], "coarse": arrays["coarse_synthesis.layers.0.weight"].shape[0]}
        return graph.session(inputs, graph.node("Add", [linear, branch]), options)

    def analyse(self, image: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) image in [0, 1], H and W multiples of 16 -> (B, C, H/16, W/16) float32 fine latent."""
        if image.shape[2] % FINE_STRIDE or image.shape[3] % FINE_STRIDE:
            raise ValueError(f"image of {image.shape[2]} x {image.shape[3]} pixels: need multiples of {FINE_STRIDE}")
        return self._analysis.run(None, {"image": np.ascontiguousarray(image, dtype=np.float32)})[0]

    def coarse_analyse(self, latent: np.ndarray) -> np.ndarray:
        """(B, C, h, w) fine latent, h and w multiples of 4 -> (B, C_c, h/4, w/4) float32 coarse latent."""
        return self._coarse_analysis.run(None, {"latent": np.ascontiguousarray(latent, dtype=np.float32)})[0]

    def reconstruct(self, fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """(B, F, h, w) fine and (B, F_c, h/4, w/4) coarse codewords -> (B, 3, 16h, 16w) float32
        image in [0, 1] units, not clamped."""
        inputs = {"fine": np.ascontiguousarray(fine, dtype=np.float32),
                  "coarse": np.ascontiguousarray(coarse, dtype=np.float32)}
        return self._synthesis.run(None, inputs)[0]

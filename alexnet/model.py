"""AlexNet as in Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional
Neural Networks" (NeurIPS 2012), on the fused ops of ``kernels``.

The network (paper, section 3.5 and figure 2), with both towers on one device:

    conv1  96 x 11x11 stride 4        -> ReLU -> LRN per tower -> max-pool 3x3 stride 2
    conv2 256 x 5x5 pad 2, groups=2   -> ReLU -> LRN per tower -> max-pool 3x3 stride 2
    conv3 384 x 3x3 pad 1             -> ReLU                     (sees both towers)
    conv4 384 x 3x3 pad 1, groups=2   -> ReLU
    conv5 256 x 3x3 pad 1, groups=2   -> ReLU -> max-pool 3x3 stride 2
    fc6 4096 -> ReLU -> dropout, fc7 4096 -> ReLU -> dropout, fc8 1000   (each sees both towers)

60,965,224 parameters at the defaults. Channel ``c`` of every layer belongs to tower ``c // (C/2)``:
the first half of the maps is the first GPU of the paper, the second half the second one. A
``groups=2`` convolution is exactly "sees only its own tower's maps", and the LRN window is applied
to each half separately, as in the authors' two-GPU configuration (cuda-convnet2), so it never
crosses towers. ``alexnet.parallel.parallelize`` splits this module into one tower per device.

224 or 227: the paper says the input is 224x224x3 and that conv1's output is 55x55 (stride 4,
11x11 kernels), but (224 - 11) / 4 + 1 = 54.25: no padding makes both true. 227x227 gives exactly
55x55 (as in Caffe's reference model and cuda-convnet2's 224 crop with padding), so 227 is the
default here. Any ``image_size`` >= 67 works: the fc6 input size follows from it (256 * 6 * 6 =
9216 at 227, 256 * 5 * 5 = 6400 at 224).

LRN follows the authors' code (and Caffe, and ``F.local_response_norm``): alpha is divided by the
window size, b = a / (k + alpha / n * sum a^2) ^ beta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels

# ops="fused": the Triton kernels; ops="eager": their shared eager reference (F.relu, F.local_response_norm,
# F.max_pool2d, F.dropout). The model uses relu_lrn_max_pool2d, relu_max_pool2d and relu_dropout of either.
OPS = {"fused": kernels, "eager": kernels.reference}

PAPER_PARAMETERS = 60_965_224  # at the default config


@dataclass
class AlexNetConfig:
    num_classes: int = 1000
    image_size: int = 227  # input height and width; the fc6 input size follows from it
    width: float = 1.0  # multiplier on every layer's channel / unit count, kept even (two towers)
    lrn_size: int = 5  # LRN window n, in channels of one tower
    lrn_alpha: float = 1e-4  # divided by lrn_size inside the op, as in the authors' code
    lrn_beta: float = 0.75
    lrn_k: float = 2.0
    dropout: float = 0.5  # on fc6 and fc7 in training mode
    init: str = "paper"  # "paper": N(0, 0.01) weights, see bias_one; "kaiming": Kaiming-normal, zero biases
    bias_one: float = 1.0  # the paper's "1" biases of conv2/4/5, fc6, fc7 (Caffe's reference model used 0.1)

    def __post_init__(self):
        if self.init not in ("paper", "kaiming"):
            raise ValueError(f"init must be 'paper' or 'kaiming', got {self.init!r}")
        if self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.feature_size < 1:
            raise ValueError(f"image_size {self.image_size} is too small: conv5's pooled maps would be empty "
                             f"(the smallest input is 67x67)")

    @property
    def channels(self) -> tuple[int, int, int, int, int, int]:
        """(conv1, conv2, conv3, conv4, conv5, fc6/fc7) widths: 96, 256, 384, 384, 256, 4096 times width,
        each rounded to an even number (at least 2) so that the two towers split it evenly."""
        return tuple(max(2, 2 * round(c * self.width / 2)) for c in (96, 256, 384, 384, 256, 4096))

    @property
    def feature_size(self) -> int:
        """Height (= width) of conv5's pooled maps: 6 at 227x227."""
        s = (self.image_size - 11) // 4 + 1  # conv1, 11x11 stride 4: 55
        for _ in range(3):  # the three 3x3 stride 2 pools (conv2-5 keep the size): 27, 13, 6
            s = (s - 3) // 2 + 1
        return s


class AlexNet(nn.Module):
    """The paper's network with both towers on one device.

    ops: "fused" (``kernels``: ReLU+LRN+pool in one op, ReLU+dropout in one op) or "eager" (the
    plain PyTorch reference). Both have the same parameters and compute the same function.

    ``towers`` is the number of towers this module holds (2). ``join_towers`` and ``join_logits``
    are identities here; ``alexnet.parallel.parallelize`` halves every layer to one tower
    (``towers = 1``) and replaces them with all-gathers across the tower pair.
    """

    def __init__(self, config: AlexNetConfig | None = None, ops: str = "fused"):
        super().__init__()
        if ops not in OPS:
            raise ValueError(f"ops must be one of {sorted(OPS)}, got {ops!r}")
        self.config = config = config if config is not None else AlexNetConfig()
        self.ops = ops
        self.towers = 2  # towers held by this module: 2 on one device, 1 after alexnet.parallel splits it
        # Where this module's activations sit in the one-device, full-batch network, so that the fused
        # dropout draws the very masks the one-device model would (set by alexnet.parallel.parallelize):
        self.tower_rank = 0  # which tower this module holds when towers == 1
        self.data_rank = 0  # which equal shard of the full batch this module sees
        c1, c2, c3, c4, c5, f = config.channels
        s = config.feature_size
        self.conv1 = nn.Conv2d(3, c1, 11, stride=4)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=2)
        self.fc6 = nn.Linear(c5 * s * s, f)
        self.fc7 = nn.Linear(f, f)
        self.fc8 = nn.Linear(f, config.num_classes)
        self.join_towers = nn.Identity()  # (N, C/2 per tower, ...) -> (N, C, ...) across devices
        self.join_logits = nn.Identity()  # the same for the (replicated) logits
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        cfg = self.config
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
            layer = getattr(self, name)
            if cfg.init == "paper":
                nn.init.normal_(layer.weight, 0.0, 0.01)
                bias = cfg.bias_one if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
                nn.init.constant_(layer.bias, bias)
            else:
                nonlinearity = "linear" if name == "fc8" else "relu"
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity=nonlinearity)
                nn.init.zeros_(layer.bias)

    def _relu_lrn_pool(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU, LRN within each tower, 3x3 stride 2 max-pool: (N, C, H, W) -> (N, C, H', W')."""
        cfg = self.config
        n, c, h, w = x.shape
        x = x.reshape(n * self.towers, c // self.towers, h, w)  # a row per tower: the LRN window stays inside
        x = OPS[self.ops].relu_lrn_max_pool2d(x, cfg.lrn_size, cfg.lrn_alpha, cfg.lrn_beta, cfg.lrn_k,
                                              kernel_size=3, stride=2, padding=0)
        return x.reshape(n, c, x.shape[2], x.shape[3])

    def _relu_dropout(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.config.dropout > 0):
            return F.relu(x)
        if self.ops != "fused":
            return OPS[self.ops].relu_dropout(x, self.config.dropout, True)
        # (N, F / towers) at rows data_rank * N, columns tower_rank * F / towers of the whole (batch, F)
        n, f = x.shape
        col0 = self.tower_rank * f if self.towers == 1 else 0
        position = (self.data_rank * n, col0, f * (2 // self.towers))
        return OPS["fused"].relu_dropout(x, self.config.dropout, True, position=position)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Shapes at the defaults with both towers here; one tower holds half of every C (and of the logits)
        # until a join gathers both halves.
        x = self._relu_lrn_pool(self.conv1(x))  # (N, 96, 55, 55) -> (N, 96, 27, 27)
        x = self._relu_lrn_pool(self.conv2(x))  # (N, 256, 27, 27) -> (N, 256, 13, 13), own tower only
        x = F.relu(self.conv3(self.join_towers(x)))  # (N, 384, 13, 13), both towers
        x = F.relu(self.conv4(x))  # (N, 384, 13, 13), own tower only
        # ReLU and pool in one op: it saves one byte per pooled output, not conv5's ReLU output
        x = OPS[self.ops].relu_max_pool2d(self.conv5(x), 3, 2, 0)  # (N, 256, 13, 13) -> (N, 256, 6, 6)
        x = self.join_towers(x).flatten(1)  # (N, 9216), the channel-major order of the one-device model
        x = self._relu_dropout(self.fc6(x))  # (N, 4096)
        x = self._relu_dropout(self.fc7(self.join_towers(x)))  # (N, 4096)
        x = self.fc8(self.join_towers(x))  # (N, 1000)
        return self.join_logits(x)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, *args, **kwargs) -> float:
    """Bytes saved for backward per image by one training forward of ``model(x, *args, **kwargs)``.

    Counts every storage that autograd saves once (an output that the next layer saves too is one
    storage), whole storages (a saved view keeps its base alive), and leaves out parameters and
    buffers. The input counts: conv1 keeps it for its weight gradient. Returns bytes / len(x).
    """
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own and storage.device.type != "meta":
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, *args, **kwargs)
    del out
    return sum(seen.values()) / x.shape[0]

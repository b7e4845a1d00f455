"""Shared plumbing for the fused ops: where an op runs, input checks, memory formats, launch configs."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

try:  # Triton ships with PyTorch's Linux wheels; elsewhere the ops keep their plain-PyTorch path.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on platforms without Triton
    triton = None
    tl = None

HAS_TRITON = triton is not None
# Read once, like Triton itself: @triton.jit decides at decoration time whether to interpret.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# ALEXNET_NO_ASM=1: every kernel built without inline asm (kernels/_jit.py), on any GPU. Read once.
NO_ASM = os.environ.get("ALEXNET_NO_ASM", "0") not in ("", "0")

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

_state = threading.local()


@contextlib.contextmanager
def triton_disabled():
    """Inside this block CPU tensors take the plain-PyTorch path even when TRITON_INTERPRET=1.

    CUDA tensors always run the Triton kernels."""
    previous = getattr(_state, "disabled", False)
    _state.disabled = True
    try:
        yield
    finally:
        _state.disabled = previous


def use_triton(x: torch.Tensor) -> bool:
    """True where the Triton kernel runs: CUDA tensors (NVIDIA and AMD: ROCm's torch names its devices
    "cuda" too), and CPU tensors under the interpreter (or while ``recording`` launches)."""
    if getattr(_state, "recorder", None) is not None:
        return True
    if x.device.type == "cuda":
        if not HAS_TRITON:
            raise RuntimeError("alexnet_triton: CUDA tensors need Triton, which is not installed")
        return True
    return HAS_TRITON and INTERPRET and x.device.type == "cpu" and not getattr(_state, "disabled", False)


@contextlib.contextmanager
def compiling_for(capability: int):
    """Inside this block ``capability`` reports ``capability`` (e.g. 75) for any tensor: launches recorded
    for compiling (``recording``) are planned as for a GPU of that compute capability."""
    previous = getattr(_state, "capability", None)
    _state.capability = capability
    try:
        yield
    finally:
        _state.capability = previous


@functools.cache
def _device_capability(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return major * 10 + minor


def capability(x: torch.Tensor) -> int:
    """The compute capability the kernels for x are compiled for, as Triton writes it (75, 80, 90): the
    NVIDIA GPU's own; 90 elsewhere (the interpreter, recorded launches) unless ``compiling_for`` says
    otherwise; 0 on ROCm. For launch plans whose code needs another shape before sm_80."""
    forced = getattr(_state, "capability", None)
    if forced is not None:
        return forced
    if torch.version.hip:
        return 0
    if x.device.type == "cuda":
        index = x.device.index
        return _device_capability(torch.cuda.current_device() if index is None else index)
    return 90


def inline_ptx() -> bool:
    """Whether this process's kernels are built with inline PTX: on NVIDIA (and the interpreter, which
    stands in for it), unless ALEXNET_NO_ASM=1; never on ROCm (``torch.version.hip``). Launchers choose
    by it a structure that only inline PTX compiles in reasonable time (the NCHW fused block's patch
    walks, hundreds of loads: Triton's coalescing pass takes minutes over them as tl.load)."""
    return not NO_ASM and not torch.version.hip


# ------------------------------------------------------------------------- eager fast path


def _dispatcher_free(args) -> bool:
    """True where an op may run its implementation without torch's custom-op dispatcher: outside
    torch.compile's tracing, functorch transforms and Python dispatch modes (selective activation
    checkpointing's policy, ``FlopCounterMode``, debug and tracing modes must see the op), with plain
    tensors only (no fake, functional or other subclass tensors, which need the registered op and its
    fake)."""
    if (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or torch._C._len_torch_dispatch_stack() > 0):
        return False
    return all(type(a) is torch.Tensor for a in args if isinstance(a, torch.Tensor))


def fast_path(op, impl):
    """``op`` (a ``torch.library.custom_op``) as a function that calls ``impl``, the same computation,
    directly where the dispatcher adds nothing (see ``_dispatcher_free``): a custom op costs tens of
    microseconds of host time per call in eager mode, which is what small layers are bound by on a
    GPU. Under torch.compile, with fake tensors, under functorch and under a dispatch mode, ``op`` runs
    as registered."""
    def call(*args):
        return impl(*args) if _dispatcher_free(args) else op(*args)
    call.op = op
    return call


def eager_autograd(name: str, forward, setup_context, backward):
    """A ``torch.autograd.Function`` with the forward, ``setup_context`` and backward an op registers
    with ``register_autograd``: the op's eager path (``fast_path(op, Fn.apply)``), bit for bit the same
    computation. Its backward is once-differentiable, as the registered op's is."""
    def _forward(ctx, *inputs):  # the classic form: apply() then skips binding defaults by signature
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(_forward),
        "backward": staticmethod(torch.autograd.function.once_differentiable(backward)),
    })


# ----------------------------------------------------------------------------------------- checks


def check_tensor(op: str, x, ndim: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: expected a floating-point tensor (float32, float16, bfloat16 or float64), "
                        f"got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{op}: expected a {ndim}-D (N, C, H, W) tensor, got {x.dim()}-D "
                         f"with shape {tuple(x.shape)}")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise RuntimeError(f"{op}: expected all tensors on one device, got {listed}")


def check_lrn_args(op: str, size, alpha, beta, k) -> None:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"{op}: size must be an int, got {type(size).__name__}")
    if size < 1:
        raise ValueError(f"{op}: size must be >= 1, got {size}")
    for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{op}: {name} must be a number, got {type(value).__name__}")


def check_p(op: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{op}: p must be a number, got {type(p).__name__}")
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"{op}: dropout probability p must be in [0, 1], got {p}")
    return float(p)


def _pair(op: str, name: str, value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, Sequence) and len(value) in (1, 2) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])
    raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")


def pool_args(op: str, x: torch.Tensor, kernel_size, stride, padding):
    """Normalise and check pooling arguments exactly where ``F.max_pool2d`` rejects them.

    Returns (kernel, stride, padding, (out_h, out_w)), each a pair of ints."""
    kernel = _pair(op, "kernel_size", kernel_size)
    stride = kernel if stride is None or (isinstance(stride, Sequence) and len(stride) == 0) \
        else _pair(op, "stride", stride)
    padding = _pair(op, "padding", padding)
    if min(kernel) < 1:
        raise ValueError(f"{op}: kernel_size must be positive, got {kernel}")
    if min(stride) < 1:
        raise ValueError(f"{op}: stride must be positive, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"{op}: padding must be non-negative, got {padding}")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding {padding} must be at most half of kernel_size {kernel}")
    out = pool_out_size(x.shape[2], x.shape[3], kernel, stride, padding)
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"{op}: output size {out} is too small for input {tuple(x.shape)} with "
                         f"kernel_size={kernel}, stride={stride}, padding={padding}")
    return kernel, stride, padding, out


def pool_out_size(h: int, w: int, kernel, stride, padding) -> tuple[int, int]:
    """floor((in + 2 * pad - kernel) / stride) + 1, as PyTorch computes it without ceil_mode."""
    return ((h + 2 * padding[0] - kernel[0]) // stride[0] + 1,
            (w + 2 * padding[1] - kernel[1]) // stride[1] + 1)


# --------------------------------------------------------------------------------- memory formats


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout an op works in and returns: channels_last for a channels_last 4-D input, else
    contiguous (a non-contiguous input is copied once)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def dense(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    return x.contiguous(memory_format=fmt)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints, on the host (``triton.cdiv`` unwraps constexprs: slow on a launch's path)."""
    return -(-a // b)


# ------------------------------------------------------------------------------- launch configs


@dataclass(frozen=True)
class Config:
    """One launch configuration: constexprs, num_warps and a register cap.

    max_registers: NVIDIA's .maxnreg (ROCm has none). Left without one, ptxas aims some kernels at a
    register count of its own choosing and spills a few bytes to meet it (8-40 bytes, on some targets
    only). Given a cap it tends to fill it, and can spill under a cap it would not have needed: set one
    only for the launches whose own choice spills (tests/test_compile_sm.py)."""

    constexprs: dict
    num_warps: int = 4
    max_registers: int | None = None

    def __hash__(self):
        return hash((tuple(sorted(self.constexprs.items())), self.num_warps, self.max_registers))


# ------------------------------------------------------------------------------------- launching


@dataclass
class Launch:
    """One kernel launch as a launcher issues it: what ``recording`` hands to its callback."""

    name: str  # the kernel's registered name, e.g. "relu_lrn_fwd"
    fn: object  # the @triton.jit function
    grid: tuple  # (programs,)
    args: tuple  # positional arguments, tensors included
    constexprs: dict  # constexpr keyword arguments
    num_warps: int
    device: torch.device


@contextlib.contextmanager
def recording(callback):
    """Inside this block every op takes its Triton path on any tensor (CPU tensors too) and, instead
    of launching, hands each launch to ``callback(Launch)``; outputs are left unwritten. Used by
    ``bench/tools/sass_cost.py`` to compile exactly what a launch would, without a GPU."""
    previous = getattr(_state, "recorder", None)
    _state.recorder = callback
    try:
        yield
    finally:
        _state.recorder = previous


def device_guard(device: torch.device):
    """Launch on the tensor's own device, not the current one (a tensor on cuda:1 while cuda:0 is
    current)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def launch(name: str, fn, grid: tuple, args: tuple, cfg: Config, device: torch.device, **constexprs) -> None:
    """Launch ``fn[grid](*args, **cfg.constexprs, **constexprs)`` under ``device``'s guard (or hand it
    to the active recorder)."""
    constexprs = {**cfg.constexprs, **constexprs}
    if cfg.max_registers and not torch.version.hip:
        constexprs["maxnreg"] = cfg.max_registers
    with device_guard(device):
        recorder = getattr(_state, "recorder", None)
        if recorder is not None:
            recorder(Launch(name, fn, tuple(grid), tuple(args), constexprs, cfg.num_warps, device))
            return
        fn[grid](*args, **constexprs, num_warps=cfg.num_warps)

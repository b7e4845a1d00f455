"""The public ops' contracts in one table (PyTorch's OpInfo at this project's size).

Each row names an op's reference, a sample input, the dtypes and layouts it takes, what it saves for
backward, how to call it through the dispatcher, its gradcheck and opcheck cases, and its bad inputs.
tests/test_op_contracts.py writes each contract property once over the table; the per-op files
(tests/test_ops_*.py) keep what is particular to one op (windows, ties, NaN rules, Philox streams).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

import kernels
from kernels import reference
from tests._utils import (
    EXACT,
    FLOAT_DTYPES,
    TOLERANCES,
    Tol,
    grad_tol,
    make_values,
    pool_grad_tol,
)

ERRORS = (TypeError, ValueError, RuntimeError)
INT_DTYPES = (torch.int32, torch.int64, torch.uint8, torch.bool)
LAYOUTS_4D = ("contiguous", "channels_last")

# what an op may save for backward, each storage once: the input itself, the output itself, or one byte
# per output (the argmax of a pooling window); a few bytes more (a seed) are not counted
INPUT, OUTPUT, ARGMAX = "input", "output", "argmax"


@dataclass(frozen=True)
class OpInfo:
    name: str
    signature: str  # the public function's, annotations left out
    args: tuple  # a sample call's arguments after x (not the defaults)
    defaults: tuple  # the default arguments spelled out
    registered: Callable  # (x, *args) -> output: the same call through torch.ops (the dispatcher)
    reference: Callable  # (x, *args) -> output: the op written with PyTorch's ops
    tol: Callable[[torch.dtype], Tol]  # forward against the reference
    grad_tol: Callable  # (dtype, args, grad_out, expected gradient) -> Tol
    saves: tuple[str, ...]  # INPUT / OUTPUT / ARGMAX, each storage the op saves for backward
    gradcheck: tuple  # (args, float64 input maker (layout) -> x, layouts, atol, rtol)
    opcheck: tuple  # (input shape, arguments of the registered op after x)
    sample_shape: tuple = (1, 6, 7, 7)
    layouts: tuple[str, ...] = LAYOUTS_4D
    dtypes: tuple = tuple(FLOAT_DTYPES)
    empty_shapes: tuple = ((0, 4, 7, 7),)
    bad_ranks: tuple = ()
    bad_input_shape: tuple = (1, 2, 5, 4)
    bad_args: tuple = ()  # pytest.param((args, kwargs), id=...)
    reference_rejects_bad_args: bool = False  # the bad arguments are bad for the reference too
    arg_forms: tuple = ()  # argument tuples the op must read as the reference does (ints, pairs, None)
    seeded: bool = False  # a random op: the reference needs its mask
    definition: Callable | None = None  # (x, *args): the gradient's definition, where not the reference
    geometry: Callable | None = None  # (lrn size, pool) -> args, for 4-D ops: the odd-stride cases
    extra: dict = field(default_factory=dict)

    @property
    def fn(self):
        """The public op, looked up at call time."""
        return getattr(kernels, self.name)

    def grad_definition(self):
        return self.definition or self.reference


def _op(name):
    return getattr(torch.ops.alexnet_triton, name)


def _lrn_tol(dtype, args, g, expected):
    return grad_tol(dtype, expected)


def _pool_tol(dtype, args, g, expected):
    return pool_grad_tol(dtype, args[0], args[1], g)


def _dropout_tol(dtype, args, g, expected):
    return TOLERANCES[dtype]


def _away_from_zero(layout):
    """float64 values away from the ReLU's kink."""
    from tests._utils import to_memory_format

    x = torch.randn(1, 6, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return to_memory_format(torch.where(x.abs() < 0.1, x.sign() * 0.5, x), layout)


def _distinct(offset):
    """Distinct float64 values 1e-2 apart (gradcheck's eps changes no argmax), ``offset`` below 0; two
    channels of 7 x 6 (the property does not depend on the batch or channel count)."""
    def make(layout):
        g = torch.Generator().manual_seed(0)
        return (torch.randperm(2 * 7 * 6, generator=g).double() * 1e-2 - offset).reshape(1, 2, 7, 6)
    return make


def _block_gradcheck_input(args):
    """Positive inputs whose LRN output has no two values within 1e-3 in any pooling window."""
    size, alpha, beta, k, kernel, stride, padding = args

    def make(layout):
        for s in range(100):
            g = torch.Generator().manual_seed(s)
            x = torch.rand(1, 5, 5, 5, generator=g, dtype=torch.float64) * 2 + 0.2
            y = torch.nn.functional.pad(reference.relu_lrn(x, size, alpha, beta, k), (padding,) * 4,
                                        value=float("-inf"))
            win = y.unfold(2, kernel, stride).unfold(3, kernel, stride).flatten(-2)
            top2 = win.topk(2, dim=-1).values
            if not bool(((top2[..., 0] - top2[..., 1]) < 1e-3).any()):
                return x
        raise AssertionError("no input without near ties found")
    return make


def _nonzero64(layout):
    x = make_values((3, 7, 5), "normal", 12, torch.float32)
    return torch.where(x.abs() < 0.05, torch.full_like(x, 0.5), x).double()


def _block_definition(x, size, alpha, beta, k, kernel, stride, padding):
    """max_pool2d of the op's own relu_lrn values (tests/test_ops_block.py: the LRN values of the kernel
    and of PyTorch may differ by an ulp, and at a tie that moves the argmax)."""
    return reference.max_pool2d(kernels.relu_lrn(x, size, alpha, beta, k), kernel, stride, padding)


_POOL_SIG = "(x, kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=False, return_indices=False)"
_DROPOUT_SIG = "(x, p=0.5, training=True, seed=None, *, position=None)"
_POOL_GRADCHECK_ARGS = ((3, 2, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (2, None, 0))
_POOL_FORMS = ((3, None), ([2, 3], [1, 2], [1, 0]), ((2, 3), None))
BAD_POOL_PARAMS = tuple(pytest.param(((kernel, stride, padding), {}), id=name)
                        for name, kernel, stride, padding in (
    ("kernel0", 0, 1, 0),
    ("kernel-neg", -1, 1, 0),
    ("kernel-pair-0", (3, 0), 1, 0),
    ("stride0", 3, 0, 0),
    ("stride-neg", 3, -2, 0),
    ("stride-pair-0", 3, (2, 0), 0),
    ("padding-neg", 3, 2, -1),
    ("padding-over-half-kernel", 3, 2, 2),
    ("padding-h-over-half", (3, 3), 1, (2, 0)),
    ("padding-w-over-half", (2, 4), 1, (1, 3)),
    ("output-empty", 7, 1, 0),
    ("output-width-empty", (1, 7), 1, (0, 1)),
    ("kernel-three-values", (3, 3, 3), 1, 0),
))
# 3-D (C, H, W) is taken by the pooling ops, as F.max_pool2d takes it (tests/test_nn.py)
_POOL_BAD_RANKS = ((25,), (5, 5), (1, 1, 2, 5, 5))


def _pool_row(name, ref, gradcheck_offset):
    return OpInfo(
        name=name, signature=_POOL_SIG, args=(3, 2, 1), defaults=(3, 2, 0),
        registered=lambda x, k, s, p: _op(name)(x, [k, k], [s, s], [p, p])[0],
        reference=ref, tol=lambda dtype: EXACT, grad_tol=_pool_tol, saves=(ARGMAX,),
        gradcheck=tuple((args, _distinct(gradcheck_offset), ("contiguous",), 1e-8, 1e-6)
                        for args in _POOL_GRADCHECK_ARGS),
        opcheck=(((1, 2, 7, 6), ([3, 3], [2, 2], [0, 0])), ((1, 2, 7, 6), ([2, 3], [1, 2], [1, 1]))),
        bad_ranks=_POOL_BAD_RANKS, bad_args=BAD_POOL_PARAMS, reference_rejects_bad_args=True,
        arg_forms=_POOL_FORMS, geometry=lambda size, pool: pool,
    )


def _dropout_row(name):
    return OpInfo(
        name=name, signature=_DROPOUT_SIG, args=(0.5, True, 77), defaults=(0.5, True, None),
        registered=lambda x, p, training, seed: _op(name)(x, None, p, 0, 0, 0, seed),
        reference=lambda x, p=0.5, training=True, seed=None: getattr(reference, name)(x, p, training),
        tol=lambda dtype: TOLERANCES[dtype], grad_tol=_dropout_tol,
        saves=(OUTPUT,) if name == "relu_dropout" else (), seeded=True,
        gradcheck=tuple(((p, True, 1234), _nonzero64, ("contiguous",), 1e-8, 1e-6) for p in (0.3, 0.5)),
        opcheck=(((2, 3, 5, 6), (torch.tensor([42], dtype=torch.int64), 0.5)),
                 ((2, 3, 5, 6), (torch.tensor([7], dtype=torch.int64), 0.25)),
                 ((2, 3, 5, 6), (None, 0.5, 0, 0, 0, 2**40 + 1)),  # an integer seed: no seed tensor
                 ((3, 6), (None, 0.5, 3, 4, 12, 99))),  # a block of a larger tensor
        empty_shapes=((0,), (0, 4096), (2, 0, 3), (0, 4, 7, 7)),
        bad_input_shape=(10,),
        bad_args=tuple(pytest.param(((p, True, 1), {}), id=f"p={p}") for p in (-0.1, 1.5, float("nan"),
                                                                                 float("inf"))),
    )


_LRN = (5, 1e-4, 0.75, 2.0)
OPS = [
    OpInfo(
        name="relu_lrn", signature="(x, size=5, alpha=0.0001, beta=0.75, k=2.0)",
        args=(3, 0.1, 0.75, 1.0), defaults=_LRN,
        registered=lambda x, *a: _op("relu_lrn")(x, *a),
        reference=reference.relu_lrn, tol=lambda dtype: TOLERANCES[dtype], grad_tol=_lrn_tol, saves=(INPUT,),
        gradcheck=tuple((lrn, _away_from_zero, LAYOUTS_4D, 1e-6, 1e-4)
                        for lrn in (_LRN, (4, 0.7, 0.6, 1.0), (9, 1.5, 1.0, 0.5))),
        opcheck=(((1, 7, 3, 4), (5, 1e-4, 0.75, 2.0)), ((1, 7, 3, 4), (4, 0.5, 0.5, 1.0))),
        empty_shapes=((0, 8, 5, 5), (2, 0, 5, 5), (2, 8, 0, 3)),
        bad_ranks=((4, 3, 3), (12,), (), (1, 4, 3, 3, 2)),
        bad_args=tuple(pytest.param(((), dict(size=s)), id=f"size{s}") for s in (0, -1, -5)),
        geometry=lambda size, pool: (size, 0.5, 0.75, 2.0),
    ),
    _pool_row("max_pool2d", reference.max_pool2d, 1.0),
    _pool_row("relu_max_pool2d", reference.relu_max_pool2d, 1.255),  # half negative, 5e-3 from the kink
    OpInfo(
        name="relu_lrn_max_pool2d",
        signature="(x, size=5, alpha=0.0001, beta=0.75, k=2.0, kernel_size=3, stride=2, padding=0)",
        args=(3, 0.1, 0.75, 1.0, 3, 2, 1), defaults=(*_LRN, 3, 2, 0),
        registered=lambda x, *a: _op("relu_lrn_max_pool2d")(x, *a[:4], *([v, v] for v in a[4:]))[0],
        reference=reference.relu_lrn_max_pool2d, tol=lambda dtype: TOLERANCES[dtype],
        grad_tol=_lrn_tol, saves=(INPUT, ARGMAX), definition=_block_definition,
        gradcheck=tuple((args, _block_gradcheck_input(args), ("contiguous",), 1e-6, 1e-4)
                        for args in ((*_LRN, 3, 2, 0), (4, 0.8, 0.6, 1.0, 2, 1, 1))),
        opcheck=(((1, 6, 5, 5), (5, 1e-4, 0.75, 2.0, [3, 3], [2, 2], [0, 0])),
                 ((1, 6, 5, 5), (2, 0.5, 0.5, 1.0, [2, 3], [1, 2], [1, 1]))),
        empty_shapes=((0, 6, 9, 9),),
        bad_ranks=((4, 5, 5), (25,), (1, 1, 4, 5, 5)),
        bad_input_shape=(1, 4, 5, 5),
        bad_args=tuple(pytest.param(((), kw), id=name) for name, kw in [
            ("size0", dict(size=0)), ("size-neg", dict(size=-3)), ("kernel0", dict(kernel_size=0)),
            ("stride0", dict(stride=0)), ("stride-neg", dict(stride=-1)), ("padding-neg", dict(padding=-1)),
            ("padding-over-half-kernel", dict(padding=2)), ("output-empty", dict(kernel_size=7))]),
        geometry=lambda size, pool: (size, 0.5, 0.75, 2.0, *pool),
        extra=dict(wide_lrn_on_h_x_1_only=True),  # the interpreter runs a 17-channel window slowly
    ),
    _dropout_row("dropout"),
    _dropout_row("relu_dropout"),
]
BY_NAME = {op.name: op for op in OPS}
NAMES = [op.name for op in OPS]


def sample(op: OpInfo, dtype=torch.float32, layout="contiguous", seed=0, shape=None) -> torch.Tensor:
    """The op's sample input: N(0, 3^2) values (ReLU and LRN in their nonlinear range) in ``layout``."""
    from tests._utils import to_memory_format

    x = make_values(shape or op.sample_shape, "normal", seed, dtype, scale=3.0)
    return to_memory_format(x, layout) if x.dim() == 4 else x


def cases(*fields):
    """pytest parameters over the table: ("op",) gives one per op; ("op", "layout") one per op and layout,
    and so on for "dtype", "bad_args", "gradcheck", "opcheck", "arg_forms"."""
    rows = []
    for op in OPS:
        combos = [((op,), [op.name])]
        for f in fields[1:]:
            values = {"layout": op.layouts, "dtype": op.dtypes}.get(f) or getattr(op, f)
            new = []
            for vals, ids in combos:
                for i, v in enumerate(values):
                    if isinstance(v, type(pytest.param(0))):
                        new.append(((*vals, *v.values), [*ids, v.id]))
                    else:
                        vid = str(v).replace("torch.", "") if f in ("layout", "dtype") else f"{f}{i}"
                        new.append(((*vals, v), [*ids, vid]))
            combos = new
        rows += [pytest.param(*vals, id="-".join(ids)) for vals, ids in combos]
    return rows

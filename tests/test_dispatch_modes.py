"""Python dispatch modes see the ops (issue 19.5): the eager fast path, which skips torch's dispatcher,
steps aside while a ``TorchDispatchMode`` is active, so selective activation checkpointing's policy,
``FlopCounterMode`` and debugging or tracing modes get ``alexnet_triton`` ops, forward and backward."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

import kernels as K

LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
POOL = dict(kernel_size=3, stride=2)

# (op, a call of it on x): every public op with autograd
CALLS = {
    "relu_lrn": lambda x: K.relu_lrn(x, **LRN),
    "max_pool2d": lambda x: K.max_pool2d(x, **POOL),
    "relu_max_pool2d": lambda x: K.relu_max_pool2d(x, **POOL),
    "relu_lrn_max_pool2d": lambda x: K.relu_lrn_max_pool2d(x, **LRN, **POOL),
    "dropout": lambda x: K.dropout(x, p=0.5, training=True, seed=7),
    "relu_dropout": lambda x: K.relu_dropout(x, p=0.5, training=True, seed=7),
}


class RecordOps(TorchDispatchMode):
    """Records the name of every op dispatched to it."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(f"{func.namespace}::{func._opname}")
        return func(*args, **(kwargs or {}))


def alexnet_ops(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith("alexnet_triton::")]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_dispatch_mode_sees_the_op_forward_and_backward(name):
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64, requires_grad=True)
    want = CALLS[name](x)                                     # the fast path, outside any mode
    (want_grad,) = torch.autograd.grad(want, x, torch.ones_like(want))
    with RecordOps() as mode:
        got = CALLS[name](x)
        (grad,) = torch.autograd.grad(got, x, torch.ones_like(got))
    seen = alexnet_ops(mode.names)
    assert seen and seen[0].startswith(f"alexnet_triton::{name}"), mode.names
    assert len(seen) >= 2, f"the backward op was not dispatched: {seen}"
    torch.testing.assert_close(got, want, rtol=0, atol=0)     # the same computation either way
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=0)


def _block_tower(x):
    """conv1's tail as AlexNet runs it: the fused block, then something cheap to recompute."""
    return K.relu_lrn_max_pool2d(x, **LRN, **POOL).sin()


@pytest.mark.parametrize("save_block", [True, False])
def test_selective_checkpointing_saves_or_recomputes_the_fused_block(save_block):
    """A policy that saves the fused block keeps it out of the backward's recomputation; one that prefers
    recomputing it runs it again there (counted by a recording mode beneath the checkpoint's own).
    Gradients equal the unchecked model's either way."""
    seen: list[str] = []

    def policy(ctx, op, *args, **kwargs):
        seen.append(str(op))
        if save_block and str(op).startswith("alexnet_triton.relu_lrn_max_pool2d."):
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    x = torch.randn(2, 8, 11, 11, dtype=torch.float64, requires_grad=True)
    want = _block_tower(x)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    runs = lambda names: names.count("alexnet_triton::relu_lrn_max_pool2d")   # the forward op's runs
    with RecordOps() as rec:
        got = checkpoint(_block_tower, x, use_reentrant=False,
                         context_fn=functools.partial(create_selective_checkpoint_contexts, policy))
        forward_runs = runs(rec.names)
        (grad,) = torch.autograd.grad(got.sum(), x)
    assert any(s.startswith("alexnet_triton.relu_lrn_max_pool2d.") for s in seen), seen
    assert forward_runs == 1 and runs(rec.names) == (1 if save_block else 2), rec.names
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=0)


def test_flop_counter_mode_runs_the_registered_op():
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 6, 9, 9)
    with RecordOps() as rec, FlopCounterMode(display=False):
        K.relu_lrn_max_pool2d(x, **LRN, **POOL)
    assert alexnet_ops(rec.names), rec.names


def test_a_tensor_subclass_sees_the_op():
    """A tensor subclass (outside any mode) takes the registered op, so its ``__torch_dispatch__`` sees it,
    and each of its halves gets the plain tensor's result."""
    from torch.testing._internal.two_tensor import TwoTensor

    seen = []

    class Logged(TwoTensor):
        @classmethod
        def __torch_dispatch__(cls, func, types, args, kwargs=None):
            seen.append(f"{func.namespace}::{func._opname}")
            return super().__torch_dispatch__(func, types, args, kwargs)

    x = torch.randn(1, 8, 5, 5)
    y = CALLS["relu_lrn"](Logged(x, x.clone()))
    assert type(y) is Logged and "alexnet_triton::relu_lrn" in seen, seen
    want = CALLS["relu_lrn"](x)
    torch.testing.assert_close(y.a, want, rtol=0, atol=0)
    torch.testing.assert_close(y.b, want, rtol=0, atol=0)

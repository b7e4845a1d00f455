"""Checks common to all ops: the public signatures, torch.compile(fullgraph=True) forward and
backward against eager (aot_eager everywhere, one inductor run)."""

import inspect

import pytest
import torch

import kernels
from kernels import reference
from tests._utils import (
    PATHS,
    TOLERANCES,
    assert_close_verbose,
    grad_tol,
    make_grad,
    make_values,
    on_path,
    to_memory_format,
)

_POOL = "(x, kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=False, return_indices=False)"
SIGNATURES = {
    "relu_lrn": "(x, size=5, alpha=0.0001, beta=0.75, k=2.0)",
    # F.max_pool2d's signature (dilation and return_indices are refused with a clear error)
    "max_pool2d": _POOL,
    "relu_max_pool2d": _POOL,
    "relu_lrn_max_pool2d": "(x, size=5, alpha=0.0001, beta=0.75, k=2.0, kernel_size=3, stride=2, padding=0)",
    # the signature, plus a keyword-only extension (where x sits in a larger tensor's mask)
    "dropout": "(x, p=0.5, training=True, seed=None, *, position=None)",
    "relu_dropout": "(x, p=0.5, training=True, seed=None, *, position=None)",
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_public_signature(name):
    sig = inspect.signature(getattr(kernels, name))
    plain = sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in
                                    sig.parameters.values()], return_annotation=inspect.Signature.empty)
    assert str(plain) == SIGNATURES[name]


def test_reference_module_has_every_op():
    for name in [*SIGNATURES, "dropout_with_mask"]:
        assert callable(getattr(reference, name))


def block(x, seed):
    """The paper's layer sequence at toy size, every op once."""
    y = kernels.relu_lrn_max_pool2d(x, 5, 1e-4, 0.75, 2.0, 3, 2, 0)  # (2, 8, 4, 4)
    z = kernels.max_pool2d(kernels.relu_lrn(y, 3, 0.1, 0.75, 2.0), 2, 1, 1)  # (2, 8, 5, 5)
    z = kernels.relu_max_pool2d(z - 0.5, 1, 1, 0)  # (2, 8, 5, 5)
    h = kernels.relu_dropout(z.flatten(1) * 2.0 - 0.1, 0.5, True, seed)
    return kernels.dropout(h, 0.3, True, seed + 1)


def eager_and_compiled(backend, fmt="contiguous", dtype=torch.float32):
    x = to_memory_format(make_values((2, 8, 9, 9), "normal", 21, dtype, scale=5.0), fmt)
    g = make_grad((2, 200), 21, dtype)
    results = []
    for fn in [block, torch.compile(block, backend=backend, fullgraph=True)]:
        xk = x.detach().requires_grad_()
        out = fn(xk, 17)
        (grad,) = torch.autograd.grad(out, xk, g)
        results.append((out.detach(), grad))
    return results


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_compile_fullgraph_aot_eager_matches_eager(fmt):
    torch._dynamo.reset()
    (out, grad), (cout, cgrad) = eager_and_compiled("aot_eager", fmt)
    assert_close_verbose(cout, out, TOLERANCES[torch.float32], name="compiled forward")
    assert_close_verbose(cgrad, grad, grad_tol(torch.float32, grad), name="compiled backward")


@pytest.mark.slow
def test_compile_fullgraph_inductor_matches_eager():
    torch._dynamo.reset()
    (out, grad), (cout, cgrad) = eager_and_compiled("inductor")
    assert_close_verbose(cout, out, TOLERANCES[torch.float32], name="inductor forward")
    assert_close_verbose(cgrad, grad, grad_tol(torch.float32, grad), name="inductor backward")


def test_compile_fullgraph_dropout_seed_none():
    """seed=None inside a compiled graph: no graph break (fullgraph), a valid dropout output, and
    the backward uses the forward's mask."""
    torch._dynamo.reset()

    def f(x):
        return kernels.dropout(x, 0.5) + kernels.relu_dropout(x, 0.25)

    x = torch.rand(4, 1000) + 0.5
    xk = x.clone().requires_grad_()
    out = torch.compile(f, backend="aot_eager", fullgraph=True)(xk)
    out.sum().backward()
    # every element is x*(2*a + 4/3*b) for a, b in {0, 1}
    ratio = (out.detach() / x).flatten()
    allowed = torch.tensor([0.0, 2.0, 4.0 / 3.0, 2.0 + 4.0 / 3.0])
    assert ((ratio[:, None] - allowed).abs().min(dim=1).values < 1e-5).all()
    assert_close_verbose(xk.grad, ratio.view_as(x), TOLERANCES[torch.float32], name="grad = mask * scale")
    both_dropped = float((ratio == 0).float().sum())  # probability 0.5 * 0.25
    assert abs(both_dropped - 500) <= 6 * (4000 * 0.125 * 0.875) ** 0.5, both_dropped


# In eager mode the public ops run their implementation through a plain torch.autograd.Function
# (kernels._common.fast_path): torch's custom-op dispatcher costs tens of microseconds per call. Both
# routes must be the same computation.
FAST_PATH_CASES = {
    "relu_lrn": (lambda x: kernels.relu_lrn(x),
                 lambda x: torch.ops.alexnet_triton.relu_lrn(x, 5, 1e-4, 0.75, 2.0)),
    "max_pool2d": (lambda x: kernels.max_pool2d(x), lambda x: torch.ops.alexnet_triton.max_pool2d(
        x, [3, 3], [2, 2], [0, 0], False)[0]),
    "relu_max_pool2d": (lambda x: kernels.relu_max_pool2d(x),
                        lambda x: torch.ops.alexnet_triton.relu_max_pool2d(
                            x, [3, 3], [2, 2], [0, 0], False)[0]),
    "relu_lrn_max_pool2d": (lambda x: kernels.relu_lrn_max_pool2d(x),
                            lambda x: torch.ops.alexnet_triton.relu_lrn_max_pool2d(
                                x, 5, 1e-4, 0.75, 2.0, [3, 3], [2, 2], [0, 0])[0]),
    "dropout": (lambda x: kernels.dropout(x, 0.5, True, 77),
                lambda x: torch.ops.alexnet_triton.dropout(x, None, 0.5, 0, 0, 0, 77)),
    "relu_dropout": (lambda x: kernels.relu_dropout(x, 0.5, True, 77),
                     lambda x: torch.ops.alexnet_triton.relu_dropout(x, None, 0.5, 0, 0, 0, 77)),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", sorted(FAST_PATH_CASES))
def test_eager_fast_path_equals_the_registered_op(path, name):
    public, registered = FAST_PATH_CASES[name]
    x = make_values((2, 6, 9, 9), "normal", 3, torch.float32)
    g = None
    outs, kinds = [], []
    with on_path(path):
        for fn in (public, registered):
            xk = x.clone().requires_grad_()
            y = fn(xk)
            g = make_grad(y.shape, 4, torch.float32) if g is None else g
            kinds.append(type(y.grad_fn).__name__)
            (dx,) = torch.autograd.grad(y, xk, g, create_graph=False)
            outs.append((y.detach(), dx))
        # once differentiable, as the registered op's backward is: a second derivative raises
        xk = x.clone().requires_grad_()
        (dx,) = torch.autograd.grad(public(xk), xk, g, create_graph=True)
        if dx.requires_grad:
            with pytest.raises(RuntimeError):
                torch.autograd.grad(dx.sum(), xk)
    assert kinds[0] != kinds[1], f"{name}: the public op went through the dispatcher ({kinds})"
    assert torch.equal(outs[0][0], outs[1][0]), f"{name}: forward differs between the two routes"
    assert torch.equal(outs[0][1], outs[1][1]), f"{name}: gradient differs between the two routes"

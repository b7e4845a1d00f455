"""The contract every public op keeps, each property written once over tests/op_table.py: the public
signature, default arguments, gradcheck in float64, opcheck, bad dtypes, ranks and arguments, empty
input, torch.compile(fullgraph=True), what is saved for backward, both routes of the eager fast path,
launches under the tensors' device, and size-1 dimensions with arbitrary strides."""

import contextlib
import inspect

import pytest
import torch

import kernels
from kernels import _common, reference
from tests._utils import (
    EXACT,
    PATHS,
    assert_close_verbose,
    assert_memory_format,
    bits,
    make_grad,
    make_values,
    on_path,
    ref_forward_backward,
    saved_storages,
    to_memory_format,
)
from tests.op_table import ARGMAX, BY_NAME, ERRORS, INPUT, INT_DTYPES, OPS, OUTPUT, cases, sample

paths = pytest.mark.parametrize("path", PATHS)


def expected_forward_backward(op, x, g, args, out=None):
    """The reference's output and the gradient the op is defined to give (its ``definition``'s where it
    has one; a seeded op's from the mask its output shows)."""
    if op.seeded:
        p = args[0]
        mask = out != 0
        return None, reference.dropout_with_mask(g.float(), mask, p).to(g.dtype)
    ref, _ = ref_forward_backward(op.reference, x, None, *args)
    _, ref_dx = ref_forward_backward(op.grad_definition(), x, g, *args)
    return ref, ref_dx


def check_against_definition(op, x, args, g, out, dx, name):
    ref, ref_dx = expected_forward_backward(op, x, g, args, out)
    if ref is not None:
        assert_close_verbose(out, ref, op.tol(x.dtype), name=name + " forward")
    if op.definition is not None:
        own = op.definition(x.detach(), *args)
        assert torch.equal(bits(out), bits(own)), name + ": forward differs bitwise from its definition"
    assert_close_verbose(dx, ref_dx, op.grad_tol(x.dtype, args, g, ref_dx), name=name + " backward")


# ------------------------------------------------------------------------------------ signature, defaults


@pytest.mark.parametrize("op", cases("op"))
def test_public_signature_and_reference(op):
    sig = inspect.signature(op.fn)
    plain = sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in
                                    sig.parameters.values()], return_annotation=inspect.Signature.empty)
    assert str(plain) == op.signature
    assert callable(getattr(reference, op.name))


@paths
@pytest.mark.parametrize("op", cases("op"))
def test_default_arguments_and_argument_forms(op, path):
    """The op without arguments is the op with its defaults spelled out, and is the reference there;
    every argument form (ints or pairs, stride None) means what it means to the reference."""
    x = sample(op, seed=3)
    with on_path(path):
        torch.manual_seed(5)
        implicit = op.fn(x)
        torch.manual_seed(5)
        explicit = op.fn(x, *op.defaults)
        assert torch.equal(bits(implicit), bits(explicit))
        if op.seeded:
            return
        assert_close_verbose(implicit, op.reference(x, *op.defaults), op.tol(x.dtype),
                             name=f"{op.name} defaults")
        for form in op.arg_forms:
            assert_close_verbose(op.fn(x, *form), op.reference(x, *form), op.tol(x.dtype),
                                 name=f"{op.name}{form}")


# -------------------------------------------------------------------------------------- gradcheck, opcheck


@paths
@pytest.mark.parametrize("op,case", cases("op", "gradcheck"))
def test_gradcheck_float64(op, case, path):
    args, make_input, layouts, atol, rtol = case
    for layout in layouts:
        x = make_input(layout).requires_grad_()
        with on_path(path):
            assert torch.autograd.gradcheck(lambda t: op.fn(t, *args), (x,), eps=1e-6, atol=atol, rtol=rtol,
                                            fast_mode=True), (op.name, args, layout)


def _opcheck_params():
    """Every case in every layout; in the default tier the later cases in the first layout only."""
    params = []
    for p in cases("op", "layout", "opcheck"):
        op, layout, case = p.values
        later = case is not op.opcheck[0] and layout != op.layouts[0]
        params.append(pytest.param(*p.values, id=p.id, marks=[pytest.mark.slow] if later else []))
    return params


@pytest.mark.parametrize("op,layout,case", _opcheck_params())
def test_opcheck(op, layout, case):
    """torch.library.opcheck of the registered op: schema, fake tensor, autograd registration, AOT
    dispatch."""
    shape, args = case
    x = make_values(shape, "normal", 5, torch.float32, 3.0)
    x = to_memory_format(x, layout) if x.dim() == 4 else x
    torch.library.opcheck(getattr(torch.ops.alexnet_triton, op.name).default, (x.requires_grad_(), *args))


# -------------------------------------------------------------------------------------------- bad input


@paths
@pytest.mark.parametrize("op", cases("op"))
def test_rejects_integer_dtypes(op, path):
    for dtype in INT_DTYPES:
        with on_path(path), pytest.raises(ERRORS, match=op.name):
            op.fn(torch.ones(op.bad_input_shape, dtype=dtype), *op.args)


@paths
@pytest.mark.parametrize("op", [c for c in cases("op") if c.values[0].bad_ranks])
def test_rejects_wrong_rank(op, path):
    for shape in op.bad_ranks:
        with on_path(path), pytest.raises(ERRORS, match=op.name):
            op.fn(torch.ones(shape))


@paths
@pytest.mark.parametrize("op,bad", cases("op", "bad_args"))
def test_rejects_bad_arguments(op, bad, path):
    args, kwargs = bad
    x = torch.ones(op.bad_input_shape)
    if op.reference_rejects_bad_args:  # the case is really invalid: PyTorch rejects it too
        with pytest.raises(ERRORS):
            op.reference(x, *args, **kwargs)
    with on_path(path), pytest.raises(ERRORS, match=op.name):
        op.fn(x, *args, **kwargs)


@paths
@pytest.mark.parametrize("op,dtype", cases("op", "dtype"))
def test_empty_input(op, dtype, path):
    """An empty batch (and empty channels, rows or whatever the op takes): the reference's shape, a
    backward."""
    for shape in op.empty_shapes:
        x = torch.empty(shape, dtype=dtype, requires_grad=True)
        with on_path(path):
            out = op.fn(x, *op.args)
            assert out.shape == op.reference(torch.empty(shape), *op.args).shape and out.dtype == dtype, shape
            out.sum().backward()
        assert x.grad.shape == x.shape


# ------------------------------------------------------------------------------------------- torch.compile


@pytest.fixture(scope="module")
def compiled():
    """Every op of the table in one graph, compiled once per layout (aot_eager, fullgraph): the eager and
    the compiled outputs and input gradients, by op name."""
    runs = {}

    def get(layout):
        if layout not in runs:
            xs = [sample(op, torch.float32, layout, seed=i) for i, op in enumerate(OPS)]

            def f(*inputs):
                return [op.fn(x * 2.0 - 0.5, *op.args) * 3.0 for op, x in zip(OPS, inputs)]

            torch._dynamo.reset()
            results = []
            for fn in (f, torch.compile(f, backend="aot_eager", fullgraph=True)):
                xk = [x.detach().requires_grad_() for x in xs]
                outs = fn(*xk)
                gs = [make_grad(o.shape, i, torch.float32) for i, o in enumerate(outs)]
                grads = torch.autograd.grad(outs, xk, gs)
                results.append({op.name: (o.detach(), d) for op, o, d in zip(OPS, outs, grads)})
            torch._dynamo.reset()
            runs[layout] = (xs, results)
        return runs[layout]

    return get


@pytest.mark.parametrize("op,layout", cases("op", "layout"))
def test_compile_fullgraph_matches_eager(compiled, op, layout):
    """torch.compile(fullgraph=True): no graph break, forward and backward those of eager bit for bit, the
    output in the input's layout."""
    xs, (eager, comp) = compiled(layout)
    (out, grad), (cout, cgrad) = eager[op.name], comp[op.name]
    # the same kernels on the same values: bit for bit
    assert_close_verbose(cout, out, EXACT, name=f"{op.name} compiled forward")
    assert_close_verbose(cgrad, grad, EXACT, name=f"{op.name} compiled backward")
    assert_memory_format(cout, xs[OPS.index(op)], f"{op.name} compiled")


# -------------------------------------------------------------------------------------- saved for backward


@paths
@pytest.mark.parametrize("op,dtype,layout", cases("op", "dtype", "layout"))
def test_saved_for_backward(op, dtype, layout, path):
    """The op saves exactly what its row says (its input, its output, one byte per output), each storage
    once, no int64 index, and those tensors give its gradient."""
    x = sample(op, dtype, layout, seed=12, shape=(1, 6, 5, 5)).requires_grad_()
    with on_path(path):
        storages, out = saved_storages(lambda t: op.fn(t, *op.args), x)
        saved = []
        for ptr, (nbytes, dt, shape) in storages.items():
            if ptr == x.untyped_storage().data_ptr():
                saved.append(INPUT)
            elif ptr == out.untyped_storage().data_ptr():
                saved.append(OUTPUT)
            elif dt == torch.uint8 and nbytes == out.numel():
                saved.append(ARGMAX)
            elif nbytes > 64:  # a seed is a few bytes
                saved.append(f"{nbytes} bytes of {dt} {shape}")
        assert sorted(saved) == sorted(op.saves), f"{op.name} saved {saved}, its row says {op.saves}"
        g = make_grad(out.shape, 12, dtype)
        (dx,) = torch.autograd.grad(out, x, g)
        _, ref_dx = expected_forward_backward(op, x.detach(), g, op.args, out.detach())
    assert_close_verbose(dx, ref_dx, op.grad_tol(dtype, op.args, g, ref_dx), name=f"{op.name} saved backward")


@pytest.mark.parametrize("fwd_path,bwd_path", [("triton", "torch"), ("torch", "triton")])
@pytest.mark.parametrize("op", cases("op"))
def test_backward_on_the_other_path(op, fwd_path, bwd_path):
    """What the forward saves on one path (an argmax, the mark of a window without a positive element, a
    seed) the backward on the other reads the same way (ties present, so the argmax's meaning matters)."""
    x = to_memory_format(make_values(op.sample_shape, "ties", 19, torch.float32), "channels_last")
    results = []
    for paths in [(fwd_path, fwd_path), (fwd_path, bwd_path)]:
        xk = x.detach().requires_grad_()
        with on_path(paths[0]):
            out = op.fn(xk, *op.args)
        g = make_grad(out.shape, 19, torch.float32)
        with on_path(paths[1]):
            (grad,) = torch.autograd.grad(out, xk, g)
        results.append(grad)
    assert_close_verbose(results[1], results[0], op.grad_tol(torch.float32, op.args, g, results[0]),
                         name=f"{op.name} {fwd_path}->{bwd_path}")


# ---------------------------------------------------------------------------------------- eager fast path


@paths
@pytest.mark.parametrize("op", cases("op"))
def test_eager_fast_path_equals_the_registered_op(op, path):
    """In eager mode the public op runs its implementation through a plain autograd.Function
    (kernels._common.fast_path), not the dispatcher: the same computation bit for bit, and once
    differentiable as the registered op's backward is."""
    x = sample(op, seed=3)
    g = None
    outs, kinds = [], []
    with on_path(path):
        for fn in (lambda t: op.fn(t, *op.args), lambda t: op.registered(t, *op.args)):
            xk = x.clone().requires_grad_()
            y = fn(xk)
            g = make_grad(y.shape, 4, torch.float32) if g is None else g
            kinds.append(type(y.grad_fn).__name__)
            (dx,) = torch.autograd.grad(y, xk, g)
            outs.append((y.detach(), dx))
        xk = x.clone().requires_grad_()
        (dx,) = torch.autograd.grad(op.fn(xk, *op.args), xk, g, create_graph=True)
        if dx.requires_grad:
            with pytest.raises(RuntimeError):
                torch.autograd.grad(dx.sum(), xk)
    assert kinds[0] != kinds[1], f"{op.name}: the public op went through the dispatcher ({kinds})"
    assert torch.equal(bits(outs[0][0]), bits(outs[1][0])), f"{op.name}: forward differs between the routes"
    assert torch.equal(outs[0][1], outs[1][1]), f"{op.name}: gradient differs between the two routes"


# --------------------------------------------------------------------------------- launches and devices


def refuse_direct_launches(monkeypatch):
    """Make ``fn[grid]`` of every Triton kernel raise: inside ``recording`` nothing may launch."""
    import triton.runtime.interpreter
    import triton.runtime.jit

    def refuse(fn, grid):
        raise AssertionError(f"{getattr(fn, '__name__', fn)} launched directly, not through "
                             f"kernels._common.launch (no device guard)")

    monkeypatch.setattr(triton.runtime.jit.KernelInterface, "__getitem__", refuse)
    if "__getitem__" in vars(triton.runtime.interpreter.InterpretedFunction):
        monkeypatch.setattr(triton.runtime.interpreter.InterpretedFunction, "__getitem__", refuse)


@pytest.mark.parametrize("op", cases("op"))
def test_every_launch_names_its_tensors_device(monkeypatch, op):
    """Each op launches every kernel through ``launch`` (the device guard's only way in) and hands it its
    tensors' device (not the current one), forward and backward, every tensor argument on that device.
    (Recorded, not run: CPU tensors stand in for cuda:1.)"""
    refuse_direct_launches(monkeypatch)
    launches = []
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    with _common.recording(launches.append):
        out = op.fn(x, *op.args)
        torch.autograd.grad(out, x, torch.ones_like(out))
    assert len(launches) >= 2, [launch.name for launch in launches]
    for launch in launches:
        assert launch.device == x.device, (launch.name, launch.device)
        for a in launch.args:
            assert not isinstance(a, torch.Tensor) or a.device == launch.device, (launch.name, a.device)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("op", cases("op"))
def test_cuda_op_on_the_second_device_while_the_first_is_current(op):
    """With cuda:0 current, the op on cuda:1 tensors gives what it gives on cuda:0 (the same kernels on
    the same values: bit for bit), forward and backward, and leaves cuda:0 current."""
    x = sample(op, seed=6, shape=(2, 16, 13, 13))
    results = []
    with torch.cuda.device(0):
        for device in ("cuda:0", "cuda:1"):
            xk = x.to(device).requires_grad_()
            out = op.fn(xk, *op.args)
            g = make_grad(out.shape, 6, torch.float32).to(device)
            (dx,) = torch.autograd.grad(out, xk, g)
            torch.cuda.synchronize(device)
            assert out.device == dx.device == torch.device(device)
            results.append((out.detach().cpu(), dx.cpu()))
        assert torch.cuda.current_device() == 0
    (out0, dx0), (out1, dx1) = results
    assert torch.equal(bits(out1), bits(out0)), f"{op.name}: forward on cuda:1 != on cuda:0"
    assert torch.equal(bits(dx1), bits(dx0)), f"{op.name}: backward on cuda:1 != on cuda:0"
    if not op.seeded:
        assert_close_verbose(out1, op.reference(x, *op.args), op.tol(torch.float32),
                             name=f"{op.name} on cuda:1")


# ------------------------------------------------------------------ size-1 dimensions with arbitrary strides
#
# ``torch.randn(1, 4, 1, 6).transpose(2, 3)`` is contiguous to PyTorch, yet a launcher that passes
# ``x.stride(3)`` as the stride of the flattened H*W axis reads (and writes) the wrong elements. The inputs
# here are views into a larger buffer whose tail holds a sentinel, so a wrong address shows up as a wrong
# value; every launch runs on padded copies of its tensors' storages (``padded_launches``), so a wrong
# write is reported instead of corrupting the heap.

CL = torch.channels_last
SENTINEL = 1e6  # float32 only: a wrongly addressed read brings in 1e6 (its square 1e12 in an LRN window)
PAD = 1 << 16  # elements of sentinel on either side of every storage a padded launch touches


def strided_view(values: torch.Tensor, strides) -> torch.Tensor:
    """``values`` copied into ``buffer.as_strided(values.shape, strides)``, a buffer whose elements past
    the view (room for reads made with wrong strides) hold SENTINEL."""
    shape = tuple(values.shape)
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
    buf = torch.full((span + values.numel() * max(strides) + 64,), SENTINEL, dtype=values.dtype)
    view = buf.as_strided(shape, strides)
    view.copy_(values)
    return view


def layout_of(t: torch.Tensor) -> str:
    """"contiguous", "channels_last" or "both" (size-1 dimensions make some tensors both)."""
    c, cl = t.is_contiguous(), t.is_contiguous(memory_format=CL)
    assert c or cl, f"test setup: strides {t.stride()} are neither layout"
    return "both" if c and cl else ("contiguous" if c else "channels_last")


def odd_strides(shape, channels_last: bool) -> tuple[int, ...]:
    """Dense strides of ``shape`` in the layout, every size-1 dimension's stride an odd number that no
    formula would give."""
    canonical = torch.empty(shape, memory_format=CL if channels_last else torch.contiguous_format).stride()
    odd = iter([7, 11, 13, 17])
    return tuple(next(odd) if n == 1 else s for n, s in zip(shape, canonical))


def assert_well_formed(t: torch.Tensor, like: torch.Tensor, name: str) -> None:
    """``t`` dense in ``like``'s layout (either one where ``like`` is both), inside its storage."""
    layout = layout_of(like)
    ok = {"contiguous": t.is_contiguous(), "channels_last": t.is_contiguous(memory_format=CL),
          "both": t.is_contiguous() or t.is_contiguous(memory_format=CL)}[layout]
    assert ok, f"[{name}] {layout} input {like.stride()}: output strides {t.stride()}"
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    assert t.storage_offset() + span <= t.untyped_storage().nbytes() // t.element_size(), \
        f"[{name}] strides {t.stride()} reach past the storage"


def _fill_value(dtype: torch.dtype):
    return SENTINEL if dtype.is_floating_point else 0x5A


@contextlib.contextmanager
def padded_launches():
    """Run every kernel launch inside the block (CPU tensors, Triton's interpreter) on copies of its
    tensors' storages with PAD sentinel elements on either side, then copy the storages back. A read
    outside a storage gets the sentinel, a write outside one lands in the padding; the yielded list names
    each launch that wrote there. Aliasing is kept: one copy per storage."""
    outside = []

    def run(launch):
        copies = {}  # storage data_ptr -> (the storage as a flat tensor, its padded copy)
        args = []
        for a in launch.args:
            if not isinstance(a, torch.Tensor):
                args.append(a)
                continue
            storage = a.untyped_storage()
            if storage.data_ptr() not in copies:
                n = storage.nbytes() // a.element_size()
                flat = torch.empty(0, dtype=a.dtype).set_(storage, 0, (n,), (1,))
                padded = torch.full((n + 2 * PAD,), _fill_value(a.dtype), dtype=a.dtype)
                padded[PAD:PAD + n] = flat
                copies[storage.data_ptr()] = (flat, padded)
            _, padded = copies[storage.data_ptr()]
            args.append(padded.as_strided(a.shape, a.stride(), PAD + a.storage_offset()))
        launch.fn[launch.grid](*args, **launch.constexprs, num_warps=launch.num_warps)
        for flat, padded in copies.values():
            n = flat.numel()
            flat.copy_(padded[PAD:PAD + n])
            fill = torch.full((PAD,), _fill_value(flat.dtype), dtype=flat.dtype)
            if not (torch.equal(padded[:PAD], fill) and torch.equal(padded[PAD + n:], fill)):
                outside.append(launch.name)

    with _common.recording(run):
        yield outside


def run_padded(fn, x, dy, *args):
    """Forward and backward with every launch padded: (output, input gradient, launches that wrote
    outside their tensors' storages)."""
    with padded_launches() as outside:
        xk = x.detach().requires_grad_()
        out = fn(xk, *args)
        (dx,) = torch.autograd.grad(out, xk, dy)
    return out.detach(), dx, outside


# (id, shape, strides of the input view, pooling (kernel, stride, padding) that fits the shape)
W1_POOL = ((3, 1), (2, 1), (1, 0))
H1_POOL = ((1, 3), (1, 2), (0, 1))
ODD_CASES = [
    ("transposed-1x6", (1, 4, 6, 1), (24, 6, 1, 6), W1_POOL),  # torch.randn(1, 4, 1, 6).transpose(2, 3)
    ("nchw-w1", (2, 5, 6, 1), (30, 6, 1, 7), W1_POOL),
    ("nchw-h1", (2, 5, 1, 6), (30, 6, 11, 1), H1_POOL),
    ("nchw-n1", (1, 5, 4, 6), (1000, 24, 6, 1), (3, 2, 1)),
    ("c1", (2, 1, 5, 6), (30, 7, 6, 1), (3, 2, 1)),  # also channels_last
    ("channels-last-w1", (2, 5, 6, 1), (30, 1, 5, 11), W1_POOL),
    ("channels-last-h1", (2, 5, 1, 6), (30, 1, 13, 5), H1_POOL),
    ("channels-last-c1", (2, 1, 5, 6), (30, 1, 6, 1), (3, 2, 1)),  # .contiguous(memory_format=CL) of C=1
    ("hw1", (2, 5, 1, 1), (5, 1, 3, 7), (2, 2, 1)),
    ("channels-last-hw1", (2, 5, 1, 1), (5, 1, 5, 5), (2, 2, 1)),  # .contiguous(memory_format=CL) of 1x1
]
# LRN sizes: the channel-walking kernels (small windows) and the tile kernels (windows past
# WALK_MAX_SIZE = 16 channels); the fused block takes the second only for H x 1 planes (the interpreter
# runs a 17-channel window slowly).
LRN_SIZES = (3, 17)


def _odd_params(cases_, grad_only=False):
    params = []
    for op in OPS:
        if op.geometry is None:
            continue
        for name, shape, strides, pool in cases_:
            seen = set()
            for size in LRN_SIZES:
                args = op.geometry(size, pool)
                wide_block = size > 3 and op.extra.get("wide_lrn_on_h_x_1_only")
                if args in seen or (wide_block and not (shape[3] == 1 and shape[2] > 1)):
                    continue
                seen.add(args)
                # the fused block's tile path (a 17-channel window: seconds in the interpreter) in the
                # exhaustive tier; its odd strides at size 3 and relu_lrn's tiles at 17 run by default
                params.append(pytest.param(op, shape, strides, args, id=f"{op.name}-{name}-{size}",
                                           marks=[pytest.mark.slow] if wide_block else []))
    return params


@pytest.mark.parametrize("op,shape,strides,args", _odd_params(ODD_CASES))
def test_size1_dims_with_arbitrary_strides(op, shape, strides, args):
    """Inputs whose size-1 dimensions have strides no formula gives, and a grad_output likewise: no
    launch reads or writes outside its tensors, the output and gradient are dense in the input's layout
    and equal those of the same values contiguous (the definition's)."""
    seed = OPS.index(op) + 1
    values = make_values(shape, "normal", seed, torch.float32, 3.0)
    x = strided_view(values, strides)
    assert torch.equal(x, values)
    out_shape = op.reference(values, *args).shape
    g = make_grad(out_shape, seed, torch.float32)
    dy = strided_view(g, odd_strides(out_shape, layout_of(x) == "channels_last"))
    out, dx, outside = run_padded(op.fn, x, dy, *args)
    name = f"{op.name}{args} {shape} strides {strides}"
    assert not outside, f"[{name}] launches wrote outside their tensors: {outside}"
    assert_well_formed(out, x, name + " output")
    assert_well_formed(dx, x, name + " input gradient")
    check_against_definition(op, values, args, g, out, dx, name)


@pytest.mark.parametrize("op,shape,strides,args", _odd_params([ODD_CASES[1]]))
def test_grad_output_alone_with_an_odd_stride(op, shape, strides, args):
    """An ordinary input, and a grad_output that is a transposed view (contiguous, an odd stride on its
    size-1 axis): each backward reads it with its own strides."""
    x = make_values(shape, "normal", 5, torch.float32, 3.0)
    n, c, h, w = op.reference(x, *args).shape
    g = make_grad((n, c, w, h), 5, torch.float32)  # (n, c, 1, h)
    dy = strided_view(g, g.stride()).transpose(2, 3)
    assert dy.is_contiguous() and dy.stride(3) == h
    out, dx, outside = run_padded(op.fn, x, dy, *args)
    name = f"{op.name}{args} grad_output view"
    assert not outside, f"[{name}] launches wrote outside their tensors: {outside}"
    check_against_definition(op, x, args, dy.contiguous().clone(), out, dx, name)


def test_the_table_lists_every_public_op():
    public = {"relu_lrn", "max_pool2d", "relu_max_pool2d", "relu_lrn_max_pool2d", "dropout", "relu_dropout"}
    assert public <= set(BY_NAME), public - set(BY_NAME)
    assert all(callable(getattr(kernels, name)) for name in BY_NAME)

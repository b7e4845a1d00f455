"""kernels.enable_compile_fusion: torch.compile (Inductor) replaces the eager patterns with the fused ops,
forward and backward. The evidence is the code Inductor generates (``run_and_get_code``), not the pattern
matcher's counters (Inductor's own patterns count there too). Compiles are few and small (CPU Inductor
builds C++); the ops take their CPU path (their kernels have their own tests)."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch._inductor import config as inductor_config
from torch._inductor.utils import run_and_get_code

import kernels
from alexnet.model import AlexNet, AlexNetConfig
from tests._utils import Tol, assert_close_verbose

# one set of configurations for every test: the patterns are traced once (lru_cache)
LRN = ((5, 1e-4, 0.75, 2.0),)
POOL = ((3, 2, 0, False), (3, 2, 0, True))
TOL = Tol(atol=1e-6, rtol=1e-5, reason="float32: LRN's s^-beta and the gradient sums in another order")


def fused_ops(code: list[str]) -> list[str]:
    return sorted(set(re.findall(r"alexnet_triton\.(\w+)", "\n".join(code))))


def patterns(x):
    """Each pattern once: the fused block, ReLU -> LRN alone (a ReLU follows it), ReLU -> pool, a pool with
    ceil_mode alone."""
    a = F.max_pool2d(F.local_response_norm(F.relu(x), 5, 1e-4, 0.75, 2.0), 3, 2)  # (N, C, 6, 6)
    b = F.local_response_norm(F.relu(2 * x), 5, 1e-4, 0.75, 2.0)
    c = F.max_pool2d(F.relu(b), 3, 2)
    d = F.max_pool2d(a, 3, 2, ceil_mode=True)  # 6x6 -> 3x3 (2x2 without ceil_mode)
    return a.sum() + (c * c).sum() + (d * 3).sum()


@pytest.fixture(autouse=True)
def _fresh():
    torch._dynamo.reset()
    previous = inductor_config.joint_custom_pre_pass
    yield
    inductor_config.joint_custom_pre_pass = previous
    torch._dynamo.reset()


def test_compile_finds_every_pattern_forward_and_backward():
    x = torch.randn(2, 8, 13, 13)
    xe = x.clone().requires_grad_()
    patterns(xe).backward()
    xc = x.clone().requires_grad_()
    with kernels.enable_compile_fusion(lrn=LRN, pool=POOL), kernels.triton_disabled():
        compiled = torch.compile(patterns, fullgraph=True)

        def step():
            out = compiled(xc)
            out.backward()  # compiles the backward too
            return out.detach()

        out, code = run_and_get_code(step)
    assert fused_ops(code) == ["max_pool2d", "max_pool2d_backward", "relu_lrn", "relu_lrn_backward",
                               "relu_lrn_max_pool2d", "relu_lrn_max_pool2d_backward", "relu_max_pool2d",
                               "relu_max_pool2d_backward"]
    assert_close_verbose(out, patterns(x), TOL, name="forward")
    assert_close_verbose(xc.grad, xe.grad, TOL, name="backward")


def test_compile_fusion_in_inference_graphs():
    x = torch.randn(2, 8, 13, 13)
    with torch.no_grad():
        with kernels.enable_compile_fusion(lrn=LRN, pool=POOL), kernels.triton_disabled():
            out, code = run_and_get_code(torch.compile(patterns, fullgraph=True), x)
        assert fused_ops(code) == ["max_pool2d", "relu_lrn", "relu_lrn_max_pool2d", "relu_max_pool2d"]
        assert inductor_config.joint_custom_pre_pass is None  # the context manager restored it
    assert_close_verbose(out, patterns(x), TOL, name="inference")


def test_compile_fusion_matches_dropout():
    """F.dropout(F.relu(x)) and F.dropout(x) in a training graph: the fused ops, forward and backward, with
    dropout's keep rate and scaling (the masks are the fused op's own random numbers)."""
    x = torch.randn(64, 64)
    xc = x.clone().requires_grad_()
    g = torch.randn(2, 64, 64)

    def f(t):
        return torch.stack([F.dropout(F.relu(t), 0.5, True), F.dropout(3 * t, 0.5, True)])

    with kernels.enable_compile_fusion(lrn=LRN, pool=POOL), kernels.triton_disabled():
        compiled = torch.compile(f, fullgraph=True)

        def step():
            out = compiled(xc)
            out.backward(g)
            return out.detach()

        y, code = run_and_get_code(step)
    # (dropout's backward is dropout itself, of the gradient with the same seed)
    assert fused_ops(code) == ["dropout", "relu_dropout", "relu_dropout_backward"]
    assert len(code) == 2 and all("alexnet_triton.dropout." in c for c in code)  # forward, backward
    kept = y != 0
    assert torch.equal(y[0][kept[0]], 2 * F.relu(x)[kept[0]]) and torch.equal(y[1][kept[1]], 6 * x[kept[1]])
    assert abs(kept[1].float().mean().item() - 0.5) < 0.05
    assert_close_verbose(xc.grad, 2 * (kept[0] * g[0]) + 6 * (kept[1] * g[1]), TOL, name="dropout backward")


def test_compiled_eager_alexnet_saves_what_the_fused_one_saves():
    """ops="eager" (F.relu, F.local_response_norm, F.max_pool2d, F.dropout) compiled with the fusion: the
    fused block after conv1 and conv2, relu_max_pool2d after conv5 and relu_dropout after fc6 and fc7 in
    Inductor's code, forward and backward, and the same saved activations as ops="fused" (dropout on)."""
    cfg = AlexNetConfig(width=1 / 16, image_size=67, num_classes=10, dropout=0.5)
    eager = AlexNet(cfg, ops="eager")
    fused = AlexNet(cfg, ops="fused")
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 67, 67)
    with kernels.enable_compile_fusion(lrn=LRN, pool=POOL), kernels.triton_disabled():
        compiled = torch.compile(eager, fullgraph=True)

        def step():
            logits = compiled(x)
            logits.sum().backward()  # compiles the backward too
            return logits.detach()

        _, code = run_and_get_code(step)
        assert fused_ops(code) == ["relu_dropout", "relu_dropout_backward", "relu_lrn_max_pool2d",
                                   "relu_lrn_max_pool2d_backward", "relu_max_pool2d",
                                   "relu_max_pool2d_backward"]
        got, want = activations(compiled, x), activations(fused, x)
    assert got == want, f"compiled eager saves {got}, fused saves {want}"


def activations(model, x):
    """Bytes saved for backward by a training forward, each storage once, leaving out parameters and
    copies of them (Inductor's CPU convolution keeps a copy of each weight in its own layout for the
    backward: a parameter, not an activation). Sorted (shape, dtype, bytes)."""
    params = [p.detach() for p in model.parameters()]
    own = {p.untyped_storage().data_ptr() for p in params}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        is_param_copy = any(t.shape == p.shape and torch.equal(t, p) for p in params)
        if s.data_ptr() not in own and not is_param_copy:
            seen[s.data_ptr()] = (tuple(t.shape), t.dtype, s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sorted(seen.values(), key=str)


def test_pass_uuid_and_enable_disable():
    with kernels.enable_compile_fusion(lrn=LRN, pool=POOL) as a:
        assert inductor_config.joint_custom_pre_pass is a
        uuid = a.uuid()
    assert inductor_config.joint_custom_pre_pass is None
    kernels.enable_compile_fusion(lrn=LRN, pool=POOL)
    assert inductor_config.joint_custom_pre_pass.uuid() == uuid  # stable: the compile cache stays valid
    kernels.enable_compile_fusion(lrn=LRN, pool=POOL[:1])  # another configuration: another uuid
    assert inductor_config.joint_custom_pre_pass.uuid() != uuid
    assert inductor_config.joint_custom_pre_pass.previous is None  # replaced, not stacked
    kernels.disable_compile_fusion()
    assert inductor_config.joint_custom_pre_pass is None


def test_train_run_compile_and_channels_last_flags(capsys):
    """python -m train.run --compile --channels-last: in --help, in the resolved config (config.json), and
    off by default."""
    from train import run

    default, _ = run.resolve_config(run.parse_args([]))
    assert (default["compile"], default["channels_last"]) == (False, False)
    assert "torch.compile" not in run.preset_line(default)
    cfg, _ = run.resolve_config(run.parse_args(["--compile", "--channels-last"]))
    assert (cfg["compile"], cfg["channels_last"]) == (True, True)
    assert "torch.compile, channels_last" in run.preset_line(cfg)
    with pytest.raises(SystemExit):
        run.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "--compile" in help_text and "--channels-last" in help_text

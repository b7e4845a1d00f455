"""alexnet/model.py: structure, shapes, initialisation, tower separation, fused vs eager, saved memory."""

import contextlib
import types
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from alexnet.model import OPS, PAPER_PARAMETERS, AlexNet, AlexNetConfig, saved_activation_bytes

# The paper's structure at the smallest input; TINY is small enough for the Triton interpreter
# (a fused forward and backward at batch 2 take ~10 s on two busy cores).
SMALL = AlexNetConfig(num_classes=10, image_size=67, width=0.25, init="kaiming")
TINY = AlexNetConfig(num_classes=10, image_size=67, width=0.125, init="kaiming")

# Inputs on the scale of mean-subtracted 0-255 pixels (the paper's), so that conv1's outputs are large
# enough (std ~14) for the LRN term alpha/n * sum(a^2) to matter next to k = 2: with unit inputs LRN is
# nearly a constant factor and a 5% error in alpha would change the logits by less than 1e-5.
PIXEL_SCALE = 10.0

# Where the fused ops run their Triton kernels: a GPU, or CPU tensors under the interpreter (conftest
# sets TRITON_INTERPRET=1 without a GPU). With a GPU, CPU tensors take the ops' plain-PyTorch path.
DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

# Relative error bounds, ||actual - expected|| / ||expected||, float32, fused kernels vs eager reference.
TOLERANCE = {
    "forward": 1e-5,  # pow and the LRN window sum round differently: ~1e-7 per op, 100x headroom
    "grad": 1e-4,  # the same differences carried back through eight layers
}


@pytest.fixture
def seed():
    torch.manual_seed(0)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs()
    err = diff.norm().item() / max(expected.double().norm().item(), 1e-30)
    i = int(diff.argmax())
    where = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), diff.shape)) if diff.dim() else ()
    assert err <= rel, (f"{name}: relative error {err:.3g} > {rel:.1g}; largest |diff| "
                        f"{diff.max().item():.3g} at {where}: {actual.flatten()[i].item():.6g} "
                        f"vs {expected.flatten()[i].item():.6g}")


def triton_disabled():
    """kernels.triton_disabled() once the kernels provide it (the plain-PyTorch path for CPU tensors)."""
    return getattr(kernels, "triton_disabled", contextlib.nullcontext)()


# ---------------------------------------------------------------------------------------------- structure


def test_parameter_count_and_layer_shapes():
    with torch.device("meta"):
        model = AlexNet()
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMETERS == 60_965_224
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if name.endswith("weight")}
    assert shapes == {
        "conv1.weight": (96, 3, 11, 11),
        "conv2.weight": (256, 48, 5, 5),  # groups=2: each tower's 128 kernels see its own 48 maps
        "conv3.weight": (384, 256, 3, 3),  # both towers
        "conv4.weight": (384, 192, 3, 3),
        "conv5.weight": (256, 192, 3, 3),
        "fc6.weight": (4096, 9216),
        "fc7.weight": (4096, 4096),
        "fc8.weight": (1000, 4096),
    }
    assert [model.conv2.groups, model.conv3.groups, model.conv4.groups, model.conv5.groups] == [2, 1, 2, 2]


@pytest.fixture(scope="module")
def paper_model():
    """The default model (the paper's, 61M parameters, paper initialisation, seed 0), built once for the
    tests that only read it; each leaves its ops and mode as it found them."""
    torch.manual_seed(0)
    return AlexNet()


@contextlib.contextmanager
def as_model(model, ops, training):
    previous = model.ops, model.training
    model.ops = ops
    model.train(training)
    try:
        yield model
    finally:
        model.ops = previous[0]
        model.train(previous[1])


def test_default_activation_shapes(paper_model, seed):
    shapes = {}
    handles = [getattr(paper_model, name).register_forward_hook(
        lambda m, args, out, name=name: shapes.update({name: (tuple(args[0].shape), tuple(out.shape))}))
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")]
    with as_model(paper_model, "eager", training=False) as model, torch.no_grad():
        logits = model(torch.randn(1, 3, 227, 227))
    for h in handles:
        h.remove()
    assert logits.shape == (1, 1000)
    assert shapes == {
        "conv1": ((1, 3, 227, 227), (1, 96, 55, 55)),
        "conv2": ((1, 96, 27, 27), (1, 256, 27, 27)),
        "conv3": ((1, 256, 13, 13), (1, 384, 13, 13)),
        "conv4": ((1, 384, 13, 13), (1, 384, 13, 13)),
        "conv5": ((1, 384, 13, 13), (1, 256, 13, 13)),
        "fc6": ((1, 9216), (1, 4096)),
        "fc7": ((1, 4096), (1, 4096)),
        "fc8": ((1, 4096), (1, 1000)),
    }


@pytest.mark.parametrize("config, channels, feature_size, parameters", [
    (AlexNetConfig(image_size=224), (96, 256, 384, 384, 256, 4096), 5, 49_430_888),  # fc6 input 6400
    (AlexNetConfig(num_classes=10, image_size=67, width=0.25), (24, 64, 96, 96, 64, 1024), 1, None),
    (AlexNetConfig(num_classes=7, image_size=99, width=0.125), (12, 32, 48, 48, 32, 512), 2, None),
    (AlexNetConfig(num_classes=3, image_size=131, width=0.01), (2, 2, 4, 4, 2, 40), 3, None),  # even, >= 2
])
def test_scaled_configs(config, channels, feature_size, parameters, seed):
    assert config.channels == channels
    assert config.feature_size == feature_size
    model = AlexNet(config, ops="eager")
    assert model.fc6.in_features == channels[4] * feature_size**2
    if parameters is not None:
        assert sum(p.numel() for p in model.parameters()) == parameters
    with torch.no_grad():
        assert model(torch.randn(2, 3, config.image_size, config.image_size)).shape == (2, config.num_classes)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="too small"):
        AlexNetConfig(image_size=66)
    AlexNetConfig(image_size=67)  # the smallest input
    with pytest.raises(ValueError, match="init"):
        AlexNetConfig(init="xavier")
    with pytest.raises(ValueError, match="ops"):
        AlexNet(SMALL, ops="triton")


# ------------------------------------------------------------------------------------------ initialisation


def test_paper_init(paper_model):
    model = paper_model
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        w = getattr(model, name).weight.detach()
        assert abs(w.mean().item()) < 5 * 0.01 / w.numel() ** 0.5, f"{name} weight mean {w.mean().item():.3g}"
        assert w.std().item() == pytest.approx(0.01, rel=0.03), f"{name} weight std {w.std().item():.4g}"
    for name, value in [("conv1", 0.0), ("conv2", 1.0), ("conv3", 0.0), ("conv4", 1.0), ("conv5", 1.0),
                        ("fc6", 1.0), ("fc7", 1.0), ("fc8", 0.0)]:
        b = getattr(model, name).bias.detach()
        assert torch.all(b == value), f"{name} bias should be {value}, got {b.unique().tolist()[:5]}"


def test_paper_init_bias_one_configurable(seed):
    model = AlexNet(AlexNetConfig(num_classes=10, image_size=67, width=0.25, bias_one=0.1))
    assert torch.all(model.conv2.bias == 0.1) and torch.all(model.fc7.bias == 0.1)
    assert torch.all(model.conv3.bias == 0.0) and torch.all(model.fc8.bias == 0.0)


def test_kaiming_init(seed):
    model = AlexNet(AlexNetConfig(num_classes=10, image_size=99, width=0.5, init="kaiming"))
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        layer = getattr(model, name)
        fan_in = layer.weight[0].numel()  # in_channels / groups * kh * kw, or in_features
        gain = 1.0 if name == "fc8" else 2.0**0.5
        std = layer.weight.std().item()
        assert std == pytest.approx(gain / fan_in**0.5, rel=0.05), f"{name}: std {std:.4g}, fan_in {fan_in}"
        assert torch.all(layer.bias == 0), name


# ------------------------------------------------------------------------------------------------ towers


def _forward_with_hooks(model, x, perturb: str | None, record: str):
    """Output of layer ``record``; if ``perturb`` names a layer, its output's tower-1 half gets +1 first."""
    seen = {}
    handles = [getattr(model, record).register_forward_hook(lambda m, a, out: seen.update(out=out.clone()))]
    if perturb is not None:
        def bump(m, args, out):
            out = out.clone()
            out[:, out.shape[1] // 2:] += 1.0
            return out
        handles.append(getattr(model, perturb).register_forward_hook(bump))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen["out"]


# Eager ops only: the fused model computes the same function (test_fused_matches_eager, to 1e-5), so
# a fused LRN window that crossed towers would fail there; the interpreter would make this 60 s.
@pytest.mark.parametrize("perturb, record, crosses", [
    ("conv1", "conv2", False),  # through ReLU, LRN and pool: the LRN window must not cross towers
    ("conv2", "conv3", True),
    ("conv3", "conv4", False),  # the check: tower 0's conv4 ignores tower 1's conv3
    ("conv4", "conv5", False),
    ("conv5", "fc6", True),
    ("fc6", "fc7", True),
    ("fc7", "fc8", True),
])
def test_tower_connections(perturb, record, crosses, seed):
    model = AlexNet(SMALL, ops="eager").eval()
    x = torch.randn(2, 3, SMALL.image_size, SMALL.image_size)
    base = _forward_with_hooks(model, x, None, record)
    moved = _forward_with_hooks(model, x, perturb, record)
    half = base.shape[1] // 2
    tower0_change = (moved[:, :half] - base[:, :half]).abs().max().item()
    tower1_change = (moved[:, half:] - base[:, half:]).abs().max().item()
    assert tower1_change > 1e-3, f"tower 1's {record} should depend on tower 1's {perturb}"
    if crosses:
        assert tower0_change > 1e-3, f"tower 0's {record} should see tower 1's {perturb}"
    else:
        assert tower0_change == 0.0, f"tower 0's {record} moved {tower0_change:.3g} with tower 1's {perturb}"


# ------------------------------------------------------------------------------------------ fused vs eager


def _recording_ops(masks: list):
    """The fused ops, with relu_dropout recording the effective keep-mask of each call (output != 0:
    where ReLU already gave 0 the mask does not matter, forward or backward)."""
    def relu_dropout(x, p=0.5, training=True, seed=None):
        y = kernels.relu_dropout(x, p, training, seed)
        masks.append(y.detach() != 0)
        return y
    return types.SimpleNamespace(relu_lrn_max_pool2d=kernels.relu_lrn_max_pool2d,
                                 relu_max_pool2d=kernels.relu_max_pool2d, relu_dropout=relu_dropout)


def _replaying_ops(masks: list):
    """The eager reference, with dropout replaying the recorded masks in order."""
    def relu_dropout(x, p=0.5, training=True):
        return kernels.reference.dropout_with_mask(F.relu(x), masks.pop(0), p)
    return types.SimpleNamespace(relu_lrn_max_pool2d=kernels.reference.relu_lrn_max_pool2d,
                                 relu_max_pool2d=kernels.reference.relu_max_pool2d, relu_dropout=relu_dropout)


def _step(model, x, y):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    grads["input"] = x.grad
    return logits.detach(), grads


def _compare_fused_eager(model, x, y, monkeypatch):
    """One training step of the fused model, then of the eager one with the fused dropout masks:
    logits, the input's and every parameter's gradient."""
    masks = []
    monkeypatch.setitem(OPS, "recording", _recording_ops(masks))
    monkeypatch.setitem(OPS, "replaying", _replaying_ops(masks))
    model.train()
    model.ops = "recording"
    fused_logits, fused_grads = _step(model, x, y)
    assert len(masks) == 2, "fc6 and fc7 should each call relu_dropout once"
    kept = torch.cat([m.flatten() for m in masks]).float().mean().item()
    assert 0.1 < kept < 0.5, f"kept fraction {kept:.3f}: expected about (1 - p) * P(x > 0)"
    model.ops = "replaying"
    eager_logits, eager_grads = _step(model, x, y)
    assert not masks, "the eager step should replay both masks"
    assert_rel_close(fused_logits, eager_logits, TOLERANCE["forward"], "logits")
    for name in eager_grads:
        assert_rel_close(fused_grads[name], eager_grads[name], TOLERANCE["grad"], f"grad {name}")


def _has_attribute(obj, name: str) -> bool:
    try:
        getattr(obj, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _tf32_switches() -> list[tuple[object, str, object]]:
    """(object, attribute, value that turns TF32 off) for cuBLAS matmuls and cuDNN convolutions.

    torch >= 2.9 has ``fp32_precision`` ("ieee" = full float32) and raises when its legacy
    ``allow_tf32`` flags are read after the new API set a per-operator value, so the new API is used
    wherever it exists and the legacy flags only on older torch. Both are served by the backend
    object's ``__getattr__`` / ``__setattr__`` from the C++ state, never instance attributes: the
    monkeypatch of pytest 9.2 records the absent instance ``__dict__`` entry and undoes the patch with
    ``delattr``, which raised AttributeError at teardown."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    return [
        (matmul, "fp32_precision", "ieee") if _has_attribute(matmul, "fp32_precision")
        else (matmul, "allow_tf32", False),
        (conv, "fp32_precision", "ieee") if conv is not None and _has_attribute(conv, "fp32_precision")
        else (cudnn, "allow_tf32", False),
    ]


@contextlib.contextmanager
def full_fp32():
    """TF32 off for matmuls and convolutions inside the block, the previous settings restored after."""
    switches = _tf32_switches()
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in switches]
    try:
        for obj, name, value in switches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


@pytest.fixture
def no_tf32():
    """TF32 convolutions and matmuls (cuDNN's default) would round far above float32's tolerances."""
    with full_fp32():
        yield


def _tf32_state():
    return [(name, getattr(obj, name)) for obj, name, _ in _tf32_switches()]


def test_full_fp32_turns_tf32_off_and_restores_the_settings():
    """The fixture above: no warning (deprecations included), TF32 off inside, every setting as
    before afterwards, and nothing left on the backend objects (the legacy flags still readable)."""
    before = _tf32_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with full_fp32():
            inside = dict(_tf32_state())
            assert set(inside.values()) <= {"ieee", False}, inside
            assert torch.get_float32_matmul_precision() == "highest"
        assert _tf32_state() == before
        # the legacy flags still read (torch raises after a mix of the two APIs)
        legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        assert all(isinstance(flag, bool) for flag in legacy)
    for obj in (torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)):
        assert "allow_tf32" not in getattr(obj, "__dict__", {})
        assert "fp32_precision" not in getattr(obj, "__dict__", {})


def test_fused_matches_eager(monkeypatch, seed, no_tf32):
    """Training mode, the fused model's dropout masks replayed in the eager one: every fused op
    (ReLU+LRN+pool twice, ReLU+pool, ReLU+dropout twice) forward and backward, both towers, two images."""
    model = AlexNet(TINY, ops="fused").to(DEVICE)
    x = PIXEL_SCALE * torch.randn(2, 3, TINY.image_size, TINY.image_size, device=DEVICE)
    _compare_fused_eager(model, x, torch.tensor([3, 7], device=DEVICE), monkeypatch)


def test_eval_mode_has_no_dropout(seed):
    model = AlexNet(SMALL, ops="eager")
    x = torch.randn(2, 3, SMALL.image_size, SMALL.image_size)
    with torch.no_grad():
        train_a, train_b = model.train()(x), model(x)
        eval_a, eval_b = model.eval()(x), model(x)
    assert not torch.equal(train_a, train_b), "training mode should drop different units each call"
    assert torch.equal(eval_a, eval_b)


@pytest.mark.slow
def test_fused_matches_eager_227(monkeypatch, seed, no_tf32):
    """The full input size (conv1 55x55, pools 27/13/6) at width 0.125, one image, dropout masks shared.
    20-60 s under the interpreter on two busy cores (the cost is in the 55x55 and 27x27 planes)."""
    config = AlexNetConfig(num_classes=10, image_size=227, width=0.125, init="kaiming")
    model = AlexNet(config, ops="fused").to(DEVICE)
    x = PIXEL_SCALE * torch.randn(1, 3, 227, 227, device=DEVICE)
    _compare_fused_eager(model, x, torch.tensor([4], device=DEVICE), monkeypatch)


# ------------------------------------------------------------------------------------------------- memory


def test_saved_activation_bytes_counts_storages_once():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    x = torch.randn(4, 10)
    # Linear 1 saves x (10 floats an image), ReLU its output (20), Linear 2 the same output again;
    # the weights are parameters, not activations.
    assert saved_activation_bytes(model, x) == (10 + 20) * 4
    with torch.no_grad():
        assert saved_activation_bytes(model, x) == 0


@pytest.fixture(scope="module")
def full_model_saved_bytes(paper_model):
    """Saved bytes per image of a float32 training forward of the default model, fused and eager."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 227, 227)
    with as_model(paper_model, "fused", training=True) as model, triton_disabled():
        fused = saved_activation_bytes(model, x)
    with as_model(paper_model, "eager", training=True) as model:
        return {"fused": fused, "eager": saved_activation_bytes(model, x)}


def test_fused_saves_no_more_than_eager(full_model_saved_bytes):
    b = full_model_saved_bytes
    print(f"saved for backward per image: fused {b['fused'] / 1e6:.2f} MB, eager {b['eager'] / 1e6:.2f} MB")
    assert 5e6 < b["eager"] < 30e6, f"eager {b['eager'] / 1e6:.2f} MB: the measurement itself looks wrong"
    assert b["fused"] <= b["eager"]


def test_fused_saves_at_most_4mb_per_image(full_model_saved_bytes):
    fused = full_model_saved_bytes["fused"]
    assert fused <= 4e6, f"fused model saves {fused / 1e6:.2f} MB per image for backward, target 4 MB"


def test_fused_saves_at_most_3_7mb_per_image(full_model_saved_bytes):
    """conv5's ReLU and pool as one op (relu_max_pool2d) save one byte per pooled output (256 x 6 x 6 =
    9 kB an image) instead of the ReLU's float32 output (256 x 13 x 13 x 4 = 173 kB) plus those bytes:
    3.86 MB -> 3.69 MB per image at 227x227, float32."""
    fused = full_model_saved_bytes["fused"]
    assert fused <= 3.7e6, f"fused model saves {fused / 1e6:.3f} MB per image for backward, target 3.7 MB"


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_dropout_of_a_tower_and_a_shard_is_the_one_device_mask(path, seed):
    """A module holding one tower (towers=1) of one data shard draws, for its block of fc6/fc7, the very
    masks the one-device model draws for the full batch (alexnet.parallel sets tower_rank and
    data_rank), so a two-device or data-parallel step with dropout equals the one-device step."""
    model = AlexNet(AlexNetConfig(num_classes=10, image_size=67, width=0.25), ops="fused").train()
    x = torch.randn(8, 1024) + 0.5
    ctx = kernels.triton_disabled() if path == "torch" else contextlib.nullcontext()
    part = AlexNet(AlexNetConfig(num_classes=10, image_size=67, width=0.25), ops="fused").train()
    with ctx:
        torch.manual_seed(3)
        full = model._relu_dropout(x)  # (8, 1024): both towers, the whole batch
        for tower, shard in [(0, 0), (1, 0), (0, 1), (1, 1)]:
            part.towers, part.tower_rank, part.data_rank = 1, tower, shard
            torch.manual_seed(3)
            rows, cols = slice(4 * shard, 4 * shard + 4), slice(512 * tower, 512 * tower + 512)
            assert torch.equal(part._relu_dropout(x[rows, cols]), full[rows, cols]), (tower, shard)
    assert 0.3 < (full == 0).float().mean() < 0.7  # dropout did act

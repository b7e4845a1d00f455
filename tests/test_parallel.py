"""alexnet/parallel.py and alexnet/launch.py: two towers on two gloo processes, data x tower parallelism,
checkpoints across layouts, and failing ranks.

The workers are module-level functions (spawned processes import them); they check their results
themselves and raise, which ``launch`` turns into a LaunchError in the test. Each also writes a
report file, so a worker that returned early cannot pass. They use ops="eager": the fused ops have
their own tests (test_model.py), and the Triton interpreter would make four processes far too slow.
"""

import copy
import json
import os
import signal
import time

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from alexnet.launch import LaunchError, launch
from alexnet.model import AlexNet, AlexNetConfig
from alexnet.parallel import (
    ParallelContext,
    full_state_dict,
    gather_towers,
    init_distributed,
    load_full_state_dict,
    parallelize,
    shard_batch,
)

# The paper's structure at a size that four processes on two cores run in seconds. dropout=0 makes a
# training step deterministic, so two layouts can be compared exactly (dropout has its own tests).
CONFIG = AlexNetConfig(num_classes=10, image_size=67, width=0.25, init="kaiming", dropout=0.0)
REL = 1e-5  # float32: the split layouts sum the same products in another order


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    return ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


def check_close(actual: dict, expected: dict, what: str, rel: float = REL) -> float:
    assert actual.keys() == expected.keys(), f"{what}: keys {sorted(actual)} != {sorted(expected)}"
    worst = 0.0
    for name in expected:
        err = rel_error(actual[name], expected[name])
        assert err <= rel, f"{what} {name}: relative error {err:.3g} > {rel:.1g}"
        worst = max(worst, err)
    return worst


def batch(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = 10.0 * torch.randn(n, 3, CONFIG.image_size, CONFIG.image_size, generator=g)
    y = torch.randint(0, CONFIG.num_classes, (n,), generator=g)
    return x, y


def write_report(out_dir: str, ctx: ParallelContext, **values):
    with open(os.path.join(out_dir, f"rank{ctx.rank}.json"), "w") as f:
        json.dump(values, f)


def read_reports(out_dir, nprocs: int) -> list[dict]:
    reports = []
    for r in range(nprocs):
        with open(os.path.join(out_dir, f"rank{r}.json")) as f:
            reports.append(json.load(f))
    return reports


# --------------------------------------------------------------------------------- two towers, one pair


def _two_towers_worker(out_dir: str):
    ctx = init_distributed(tp_size=2)
    assert (ctx.world_size, ctx.tp_size, ctx.dp_size, ctx.backend) == (2, 2, 1, "gloo"), ctx
    torch.manual_seed(0)
    reference = AlexNet(CONFIG, ops="eager")  # both towers on one device: the same weights on both ranks
    module = parallelize(copy.deepcopy(reference), ctx)
    assert module.conv2.weight.shape == (32, 12, 5, 5) and module.conv2.groups == 1
    assert module.fc8.weight.shape == (5, 1024), module.fc8  # 500 of 1000 outputs at full size
    x, y = batch(4)

    ref_logits = reference(x)
    ref_loss = F.cross_entropy(ref_logits, y)
    ref_loss.backward()
    logits = module(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()

    # logits, loss and every gradient of the one-device model
    errors = {"logits": rel_error(logits.detach(), ref_logits.detach()),
              "loss": rel_error(loss.detach(), ref_loss.detach())}
    assert max(errors.values()) <= REL, errors
    grads = gather_towers({n: p.grad for n, p in module.named_parameters()}, ctx)
    errors["grads"] = check_close(grads, {n: p.grad for n, p in reference.named_parameters()}, "grad")

    # checkpoint 2 -> 1: after an SGD step on both layouts, the gathered state dict is the one-device one
    for m in (module, reference):
        torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4).step()
    full = full_state_dict(module, ctx)
    assert full.keys() == reference.state_dict().keys()
    errors["step"] = check_close(full, reference.state_dict(), "state after step")
    one = AlexNet(CONFIG, ops="eager")
    one.load_state_dict(full)
    with torch.no_grad():
        tower_logits, one_logits = module(x), one(x)
    errors["2->1 logits"] = rel_error(one_logits, tower_logits)
    assert errors["2->1 logits"] <= REL, errors

    # 1 -> 2: the one-device checkpoint into a fresh (differently initialised) two-tower model
    torch.manual_seed(1 + ctx.rank)
    again = parallelize(AlexNet(CONFIG, ops="eager"), ctx)
    load_full_state_dict(again, full, ctx)
    with torch.no_grad():
        assert torch.equal(again(x), tower_logits), "2 -> 1 -> 2 changed the two-device logits"
    round_trip = full_state_dict(again, ctx)
    assert all(torch.equal(round_trip[k], full[k]) for k in full), "2 -> 1 -> 2 changed the weights"
    write_report(out_dir, ctx, errors=errors, loss=loss.item(), logits_shape=list(logits.shape))


def test_two_towers_match_one_device_and_checkpoint_round_trip(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    launch(_two_towers_worker, 2, args=(str(out),), backend="gloo", store_dir=str(tmp_path))
    reports = read_reports(out, 2)
    assert reports[0]["loss"] == reports[1]["loss"], "both towers must compute the same loss"
    for report in reports:
        assert report["logits_shape"] == [4, CONFIG.num_classes]
        assert max(report["errors"].values()) <= REL, report


# ------------------------------------------------------------------------------- 2 data x 2 tower ranks


def _data_and_towers_worker(out_dir: str):
    ctx = init_distributed(tp_size=2)
    assert (ctx.dp_size, ctx.tp_size) == (2, 2)
    assert (ctx.dp_rank, ctx.tp_rank) == divmod(ctx.rank, 2), "the tower axis must be innermost"
    torch.manual_seed(0)
    reference = AlexNet(CONFIG, ops="eager")
    torch.manual_seed(100 + ctx.rank)  # other weights on dp rank 1: DDP must copy dp rank 0's
    model = AlexNet(CONFIG, ops="eager")
    if ctx.dp_rank == 0:
        model.load_state_dict(reference.state_dict())
    module = parallelize(model, ctx)
    assert isinstance(module, torch.nn.parallel.DistributedDataParallel)
    # where the fused dropout finds this rank's block of the full batch's masks (test_model.py checks them)
    assert (module.module.data_rank, module.module.tower_rank) == (ctx.dp_rank, ctx.tp_rank)

    x, y = batch(8)
    before = full_state_dict(module, ctx)
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items()), "DDP did not sync"

    # one-device, full batch
    opt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    F.cross_entropy(reference(x), y).backward()
    opt.step()
    # this rank: its data shard, its tower
    xs, ys = shard_batch(x, ctx), shard_batch(y, ctx)
    assert xs.shape[0] == 4 and torch.equal(xs, x[4 * ctx.dp_rank:4 * ctx.dp_rank + 4])
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    logits = module(xs)
    assert logits.shape == (4, CONFIG.num_classes)
    F.cross_entropy(logits, ys).backward()
    grads = gather_towers({n.removeprefix("module."): p.grad for n, p in module.named_parameters()}, ctx)
    errors = {"grads": check_close(grads, {n: p.grad for n, p in reference.named_parameters()}, "grad")}
    opt.step()
    after = full_state_dict(module, ctx)
    updates = {k: after[k] - before[k] for k in after}
    expected = {k: v - before[k] for k, v in reference.state_dict().items()}
    errors["update"] = check_close(updates, expected, "update")
    write_report(out_dir, ctx, errors=errors, dp_rank=ctx.dp_rank, tp_rank=ctx.tp_rank)


def test_data_and_tower_parallel_match_full_batch_step(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    launch(_data_and_towers_worker, 4, args=(str(out),), backend="gloo", store_dir=str(tmp_path))
    reports = read_reports(out, 4)
    assert [(r["dp_rank"], r["tp_rank"]) for r in reports] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for report in reports:
        assert max(report["errors"].values()) <= REL, report


# -------------------------------------------------------------------------------------- single process


def test_single_process_is_the_trivial_case(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed()  # tp_size=2 asked, one process: both towers here
    assert (ctx.world_size, ctx.tp_size, ctx.dp_size, ctx.is_main, ctx.backend) == (1, 1, 1, True, None)
    torch.manual_seed(0)
    model = AlexNet(CONFIG, ops="eager")
    module = parallelize(model, ctx)
    assert module is model and model.towers == 2 and model.conv2.groups == 2
    state = full_state_dict(module, ctx)
    other = AlexNet(CONFIG, ops="eager")
    load_full_state_dict(other, state, ctx)
    x = batch(2)[0].to(ctx.device)
    with torch.no_grad():
        assert torch.equal(other.to(ctx.device)(x), model(x))
    with pytest.raises(ValueError, match="does not fit"):
        load_full_state_dict(AlexNet(AlexNetConfig(num_classes=12, image_size=67, width=0.25)), state, ctx)


# ------------------------------------------------------------------------------------------ failing ranks


def _raising_worker():
    ctx = init_distributed(tp_size=2)
    if ctx.rank == 1:
        time.sleep(0.5)  # rank 0 is waiting in the all-reduce below
        raise ValueError("rank 1 fails on purpose")
    dist.all_reduce(torch.ones(1))  # never completes: fails with a connection error when rank 1 dies


def _killed_worker():
    if os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(600)  # rank 0 hangs outside any collective: the launcher must stop it


def _sigint_to_launcher_worker():
    os.kill(os.getppid(), signal.SIGINT)
    time.sleep(1.0)  # a SIGTERM forwarded by the launcher would end this rank here
    return "done"


def test_launcher_started_with_sigint_ignored_leaves_it_ignored(tmp_path, sigint_ignored):
    """A background job (SIGINT ignored) is not stopped by a Ctrl-C meant for the shell, as the
    one-process run is not (tests/test_train.py)."""
    try:
        results = launch(_sigint_to_launcher_worker, 1, store_dir=str(tmp_path))
    except KeyboardInterrupt as e:   # LaunchInterrupted; (uncaught, it would end the whole session)
        pytest.fail(f"the launcher acted on a SIGINT that arrived ignored: {e!r}")
    assert results == ["done"]
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_raising_rank_fails_every_rank_and_is_reported_first(tmp_path):
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(_raising_worker, 2, backend="gloo", store_dir=str(tmp_path), grace_s=5.0)
    elapsed = time.monotonic() - start
    assert elapsed < 30, f"took {elapsed:.1f} s"
    message = str(info.value)
    assert message.startswith("rank 1 failed first"), message[:500]
    assert message.index("rank 1 fails on purpose") < message.index("rank 0:"), message
    failures = info.value.failures
    assert [f.rank for f in failures] == [1, 0]
    assert all(f.exitcode not in (0, None) for f in failures)
    assert failures[1].secondary, "rank 0's connection error should be marked as caused by rank 1"


def test_killed_rank_fails_every_rank_in_bounded_time(tmp_path):
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(_killed_worker, 2, store_dir=str(tmp_path), grace_s=2.0)
    elapsed = time.monotonic() - start
    assert elapsed < 30, f"took {elapsed:.1f} s: the hanging rank was not stopped"
    first, second = info.value.failures
    assert (first.rank, first.exitcode) == (1, -signal.SIGKILL)
    assert str(info.value).startswith("rank 1 failed first")
    assert "killed by signal SIGKILL" in str(info.value).split("rank 0")[0]
    assert second.rank == 0 and second.terminated and second.exitcode not in (0, None)

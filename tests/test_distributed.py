"""Two gloo processes on CPU against one process with the same global batch.

One launch of ``dist_worker.py`` trains every scenario (DDP, an explicit sharded layout
with ``process_group=``, FSDP2) for each optimizer; the tests compare each rank's result
with the single-process reference computed here, in float64.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import dist_worker
import pytest
import torch

import lrfree

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch built without torch.distributed")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: a second intra-op thread only contends on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    # PYTHONFAULTHANDLER: a worker that aborts (issue 15's rare SIGABRT at exit) prints
    # where each Python thread was, so the log tells finalization from a live call
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def launch(args_for_rank, timeout: float) -> list[subprocess.CompletedProcess]:
    """Start two processes, wait for both; on a timeout kill both and fail with their logs."""
    procs = [subprocess.Popen(args_for_rank(rank), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=worker_env(), cwd=ROOT)
             for rank in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"distributed workers timed out after {timeout} s")
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-4000:]
    return procs


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    port = free_port()
    launch(lambda rank: [sys.executable, str(HERE / "dist_worker.py"), str(rank), "2",
                         str(port), str(out)], timeout=150)
    return [torch.load(out / f"rank{rank}.pt") for rank in range(2)]


@pytest.fixture(scope="module")
def references():
    cache = {}

    def get(opt_name: str, sparse_aux: bool) -> dict:
        if (opt_name, sparse_aux) not in cache:
            cache[opt_name, sparse_aux] = dist_worker.train(opt_name, "single", sparse_aux)
        return cache[opt_name, sparse_aux]
    return get


def moved_error(params: torch.Tensor, ref: torch.Tensor) -> float:
    """Distance to the reference relative to how far the reference moved from the init."""
    init = dist_worker.flat(dist_worker.make_net())
    moved = (ref - init).norm()
    assert moved > 1e-2 * init.norm(), "the problem must move the parameters to be a test"
    return float((params - ref).norm() / moved)


@pytest.mark.parametrize("layout", ["ddp", "sharded", "fsdp"])
@pytest.mark.parametrize("opt_name", list(dist_worker.OPTIMIZERS))
def test_two_ranks_equal_one_process(results, references, opt_name, layout):
    ref = references(opt_name, layout == "sharded")
    for rank in range(2):
        got = results[rank][f"{opt_name}/{layout}"]
        assert moved_error(got["params"], ref["params"]) < 1e-9
        # the estimate (effective lr and d or the Polyak step) at every step, on every rank
        torch.testing.assert_close(got["scalars"], ref["scalars"], rtol=1e-9, atol=0)


@pytest.mark.parametrize("opt_name", list(dist_worker.OPTIMIZERS))
def test_collectives_per_step(results, opt_name):
    """Every rank joins the same collectives, also rank 1 of the sharded layout on the
    steps where it has no gradient: one per reduction point, one for the non-finite check,
    and for the Polyak methods one to average the loss (also under DDP)."""
    per_step = {"PSDASGD": 2, "PSDASGD-SF": 2, "PSSPS": 3, "PSDoG": 2, "DAdaptSGD": 2}[opt_name]
    first = per_step + (opt_name != "DAdaptSGD")  # N0, the mean of alpha, at the first step
    for layout in ("sharded", "fsdp"):
        counts = [results[rank][f"{opt_name}/{layout}"]["collectives"] for rank in range(2)]
        assert counts[0] == counts[1] == [first] + [per_step] * (dist_worker.STEPS - 1)
    ddp = results[0][f"{opt_name}/ddp"]["collectives"]
    assert ddp == [int(opt_name == "PSSPS")] * dist_worker.STEPS


def test_loss_group_none_keeps_each_ranks_loss(results):
    """loss_group=None: two ranks training their own copies on their own halves of the
    batch (no DDP) each follow a single process on that half, with no collective at all
    (not sharded, so nothing else is reduced). The default ("auto") averages the two
    unrelated losses over WORLD, one collective per step, and differs: the control."""
    for rank in range(2):
        ref = dist_worker.train("PSSPS", "single", half=rank)
        got = results[rank]["PSSPS/independent"]
        assert got["collectives"] == [0] * dist_worker.STEPS
        assert moved_error(got["params"], ref["params"]) < 1e-9
        torch.testing.assert_close(got["scalars"], ref["scalars"], rtol=1e-9, atol=0)
        auto = results[rank]["PSSPS/independent_auto"]
        assert auto["collectives"] == [1] * dist_worker.STEPS
        assert moved_error(auto["params"], ref["params"]) > 1e-3


def test_loss_group_is_validated():
    for bad in ("world", 0, "none"):
        with pytest.raises(ValueError, match="loss_group must be"):
            lrfree.PSSPS([torch.nn.Parameter(torch.zeros(2))], loss_group=bad)
    lrfree.SPS([torch.nn.Parameter(torch.zeros(2))], loss_group=None)


def test_sharding_without_reduction_differs(results, references):
    """The control: the same sharded layout without process_group= gives each rank an
    estimate from its own shard only, and the comparison above catches it."""
    ref = references("PSDASGD", True)
    got = results[0]["PSDASGD/unreduced"]
    assert moved_error(got["params"], ref["params"]) > 1e-3


@pytest.mark.parametrize("opt_name", ["PSDASGD", "PSSPS", "PSDoG"])
def test_fsdp_grad_scaler_skips_on_every_rank(results, references, opt_name):
    """FSDP2 + torch.amp.GradScaler("cpu"): an inf in rank 1's gradient shard only makes
    both ranks skip that step (the scaler's check reaches every shard), and training then
    equals a single process that left the step out."""
    ref = dist_worker.train(opt_name, "single", skip_step=dist_worker.SKIP)
    for rank in range(2):
        got = results[rank][f"{opt_name}/fsdp_scaler"]
        assert got["scale"] == 2.0**9
        assert got["collectives"][dist_worker.SKIP] == 0  # opt.step was not called
        assert moved_error(got["params"], ref["params"]) < 1e-9
        torch.testing.assert_close(got["scalars"], ref["scalars"], rtol=1e-9, atol=0)


def test_example_under_torchrun(tmp_path):
    """examples/ddp_fsdp_cpu.py --mode fsdp under torchrun (FSDP2, 2 ranks) follows the
    same loop run here in one process on the global batch: the same losses and the same
    estimated learning rate at every step (float32)."""
    path = ROOT / "examples" / "ddp_fsdp_cpu.py"
    spec = importlib.util.spec_from_file_location("ddp_fsdp_cpu", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    steps, out = 10, tmp_path / "fsdp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(ROOT / "examples" / "ddp_fsdp_cpu.py"), "--mode", "fsdp", "--steps", str(steps),
           "--save", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=150,
                          env=worker_env(), cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    got = torch.load(out)

    model = example.make_model()
    opt = lrfree.PSDASGD(model.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses, lrs = [], []
    for step in range(steps):
        x, y = example.global_batch(step, 64)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        lrs.append(float(opt.param_groups[0]["effective_lr"]))
    assert len(set(lrs)) == steps  # the estimate moves, so the comparison means something
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(losses), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(got["effective_lr"]), torch.tensor(lrs),
                               rtol=1e-4, atol=0)


def test_no_group_no_collective():
    """Without torch.distributed initialised nothing is reduced (one process)."""
    assert lrfree.distributed.loss_group(None) is None
    assert lrfree.distributed.shard_group([torch.zeros(1)], None) is None

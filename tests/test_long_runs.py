"""Long runs (thousands of steps): the estimate must neither blow up nor stall at its
initial value; parameters that converge early must not stop the others; badly scaled
problems (features 1e-3..1e3 in one problem, layers initialised at very different scales)
must train. Each threshold is derived in the comment beside it: a stalled estimate leaves
the objective at its initial value, a blown-up one diverges or sits far above it, so the
thresholds sit orders of magnitude from both failure modes."""
import math

import pytest
import torch
from torch import nn

import lrfree

torch.set_num_threads(1)

MAKERS = {
    "psdasgd": lambda p: lrfree.PSDASGD(p),
    "psdasgd-momentum": lambda p: lrfree.PSDASGD(p, schedule_free=False),
    "pssps": lambda p: lrfree.PSSPS(p),
    "sps": lambda p: lrfree.SPS(p),
    "dadaptsgd": lambda p: lrfree.DAdaptSGD(p, momentum=0.9),
}


def least_squares(n=20, m=512, noise=0.1, scales=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=torch.float64)
    if scales is not None:
        a = a * scales
    b = a @ torch.randn(n, generator=g, dtype=torch.float64)
    b = b + noise * torch.randn(m, generator=g, dtype=torch.float64)
    best = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    return a, b, best, g


def run_least_squares(name, steps, schedule, batch=16, **problem):
    """Returns (initial excess loss, mean excess loss over the last 100 steps, max
    effective_lr seen)."""
    a, b, best, g = least_squares(**problem)

    def full(x):
        return 0.5 * ((a @ x - b) ** 2).mean()

    f_best = float(full(best))
    x = nn.Parameter(torch.zeros(a.shape[1], dtype=torch.float64))
    opt = MAKERS[name]([x])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule else None
    tail, peak = [], 0.0
    for k in range(steps):
        idx = torch.randint(0, len(b), (batch,), generator=g) if batch else slice(None)
        opt.zero_grad()
        loss = 0.5 * ((a[idx] @ x - b[idx]) ** 2).mean()
        loss.backward()
        opt.step(loss=loss)
        if sched:
            sched.step()
        peak = max(peak, float(opt.param_groups[0]["effective_lr"]))
        if k >= steps - 100:
            tail.append(float(full(x.detach())) - f_best)
    assert torch.isfinite(x).all()
    return float(full(torch.zeros_like(x))) - f_best, sum(tail) / len(tail), peak


# Noisy least squares: 20 unknowns, 512 rows, batch 16, label noise 0.1, x0 = 0; initial
# excess loss ~12. With a learning rate annealed to 0 (cosine), SGD-type methods converge to
# the optimum; the excess left is set by the last ~100 steps' small lr: measured 3e-5..5e-4.
# A stalled estimate (effective lr ~1e-7 to 1e-9 at d0) moves x by < 1500 * 1e-7 in total:
# the excess stays ~12. A blown-up one (lr above the 2/L ~ 1.4 stability limit for long) ends
# far above 12. The bound, 1e-2 of the initial excess, is 1e2 from both and 20x above the
# largest measured value.
# PSDASGD's defaults: "auto" takes the momentum step under the cosine schedule and the
# schedule-free iteration without one (measured at the training point y, as a loop that
# never calls opt.eval() would).
NOISY_CASES = [
    ("psdasgd", True), ("psdasgd", False), ("pssps", False), ("sps", False),
    pytest.param("psdasgd-momentum", False, marks=pytest.mark.xfail(
        strict=True, reason="known weakness (spec section 7, docs/failure_modes.md): without a "
        "schedule d overshoots under gradient noise (effective_lr ~6, excess 14x the initial)")),
    pytest.param("dadaptsgd", True, marks=pytest.mark.xfail(
        strict=True, reason="D-Adaptation SGD (and dadaptation 3.2 itself, identically) "
        "overshoots under mini-batch noise here and diverges even under a cosine schedule")),
]


@pytest.mark.parametrize("name,schedule", NOISY_CASES)
def test_noisy_least_squares(name, schedule):
    initial, final, peak = run_least_squares(name, 1500, schedule)
    assert final <= 1e-2 * initial, (final, initial, peak)
    # not stalled: some step must have been large enough to cover the distance to the
    # optimum (|x*| ~ 1 per coordinate) in 1500 steps of Adam-sized (or SGD) moves
    assert peak >= 1.0 / 1500


# Features scaled 10^-3 .. 10^3 within one problem (condition number ~1e12), full batch, no
# noise, cosine schedule. The PS methods see Adam-rescaled coordinates, in which the
# problem is well scaled: the objective must fall by 1e-6 (measured: 1e-12 (PSDASGD) and
# 7e-11 (PSSPS)). The unscaled bases are gradient descent on a 1e12-conditioned problem:
# they can only fit the large-feature directions, which carry all but ~1e-5 of the initial
# excess (measured final/initial: 3e-5 (SPS) and 1e-5 (DAdaptSGD)); a stalled estimate would
# leave 1, a blown-up one diverge, so 1e-3 separates both.
@pytest.mark.parametrize("name,bound", [("psdasgd", 1e-6), ("pssps", 1e-6), ("sps", 1e-3),
                                        ("dadaptsgd", 1e-3)])
def test_features_spanning_six_orders_of_magnitude(name, bound):
    scales = 10.0 ** torch.linspace(-3, 3, 20, dtype=torch.float64)
    initial, final, _ = run_least_squares(name, 1000, True, batch=0, noise=0.0, scales=scales)
    assert final <= bound * initial, (final, initial)


def test_early_converging_block_does_not_stop_the_rest():
    """Requirement 2 over a long run: a 400-coordinate block (curvature 1) converges within
    ~200 steps; a 10-coordinate block (curvature 1e-2) must keep training after that. AMSGrad
    scaling, the documented choice for deterministic problems (docs/algorithms.md section 8):
    its denominators do not shrink, so this is gradient descent with a fixed diagonal
    preconditioner and a fixed effective lr once d settles: linear convergence. Bounds: the
    effective lr at step 1000 is >= the one at step 200 (non-decreasing by construction
    without a schedule; a normaliser that followed the converged block's a_k -> eps would
    shrink it), and the slow block's distance falls by >= 1e6 between steps 200 and 1000
    (measured ~1e12; a starved block would stay at 1x). The normaliser that does shrink the
    step (alpha_norm="running") is exercised in test_reductions_and_invariance."""
    g = torch.Generator().manual_seed(3)
    fast_target = torch.randn(400, generator=g, dtype=torch.float64)
    slow_target = torch.randn(10, generator=g, dtype=torch.float64)
    fast = nn.Parameter(torch.zeros(400, dtype=torch.float64))
    slow = nn.Parameter(torch.zeros(10, dtype=torch.float64))
    opt = lrfree.PSDASGD([fast, slow], scaling="amsgrad")
    record = {}
    for k in range(1000):
        opt.zero_grad()
        loss = 0.5 * ((fast - fast_target) ** 2).sum() + 0.005 * ((slow - slow_target) ** 2).sum()
        loss.backward()
        opt.step()
        if k in (199, 999):
            with torch.no_grad():
                record[k] = (float((slow - slow_target).norm()),
                             float(opt.param_groups[0]["effective_lr"]),
                             float((fast - fast_target).norm() / fast_target.norm()))
    (slow200, lr200, fast200), (slow1000, lr1000, _) = record[199], record[999]
    assert fast200 < 1e-2, "the fast block should have converged by step 200"
    assert lr1000 >= lr200
    assert slow1000 <= 1e-6 * slow200, (slow200, slow1000)


class TinyCNN(nn.Module):
    def __init__(self, scales=(1.0, 1.0, 1.0)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            for layer, scale in zip((self.conv1, self.conv2, self.head), scales):
                layer.weight.mul_(scale)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


def cnn_data():
    """Labels from a random teacher of the same architecture: realisable (loss 0 is
    reachable), so any failure to learn is the optimizer's."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(512, 1, 8, 8, generator=g)
    torch.manual_seed(11)
    teacher = TinyCNN()
    with torch.no_grad():
        logits = teacher(x)
    y = (logits[:, 0] - logits[:, 1] > logits[:, 0].sub(logits[:, 1]).median()).long()
    return x, y


@pytest.mark.parametrize("name,scales", [
    ("psdasgd", (1.0, 1.0, 1.0)), ("pssps", (1.0, 1.0, 1.0)),
    # layers initialised at very different scales: the product of the scales is 1, so the
    # network computes a function of the usual size, but per-layer gradients differ by ~1e4
    ("psdasgd", (1e-2, 1.0, 1e2)), ("pssps", (1e-2, 1.0, 1e2)),
])
def test_small_cnn_long_run(name, scales):
    """1000 steps (batch 32, no schedule) of a tiny CNN on a balanced 2-class teacher task.
    Chance loss is ln 2 = 0.693; a stalled estimate leaves the loss there, a blown-up one
    above it or NaN. Learned: the mean loss of the last 100 steps is below half of chance.
    The estimate, as an Adam lr, must stay within [1e-5, 1]: below 1e-5 a weight of scale 0.3
    cannot move by O(1) in 1000 Adam steps (stalled); at >= 1 every Adam step replaces the
    weights by noise (blown up)."""
    x, y = cnn_data()
    torch.manual_seed(0)
    model = TinyCNN(scales)
    opt = MAKERS[name](model.parameters())
    g = torch.Generator().manual_seed(1)
    tail, lrs = [], []
    for k in range(1000):
        idx = torch.randint(0, len(x), (32,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step(loss=loss)
        lrs.append(float(opt.param_groups[0]["effective_lr"]))
        if k >= 900:
            tail.append(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(tail) / len(tail) < 0.5 * math.log(2), sum(tail) / len(tail)
    assert 1e-5 <= max(lrs[100:]) <= 1.0, (min(lrs[100:]), max(lrs[100:]))
    assert opt.param_groups[0].get("skipped_steps", 0) == 0

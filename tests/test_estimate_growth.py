"""How fast PS-DA-SGD's estimate can grow: a derived rate, checked exactly.

On a linear objective every gradient is the same vector g (Adam's a = |g| + eps is then
constant, so the scaled gradient g' is too): the most aligned sequence there is, and the
optimum is infinitely far, so nothing stops the growth. With lambda_i = d_i / G0 and
G0 = ||g'||, if d grows by a factor q per step then s_k = g' sum_i lambda_i and
r_k = ||g'||^2 sum_i lambda_i sum_{j<i} lambda_j, so d_hat = 2 r / ||s|| tends to
2 d_k q / (q^2 - 1). Self-consistency (d_hat = q d_k) gives q^2 = 3: the estimate grows by
sqrt(3) per step, and from a start of 1e-6 (DAdaptAdam's and Prodigy's) needs at least
log(1000) / log(sqrt(3)) ~ 12.6 steps to reach an lr of 1e-3 (docs/algorithms.md section 8).
That is the published rule (``growth_rate=inf``); the default bounds the growth at 1.5 per
step (issue 17, §4g), below sqrt(3), so there the ratio is exactly 1.5.
"""
import math

import pytest
import torch

import lrfree


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.0, 0.999)])
def test_estimate_grows_by_sqrt3_per_step_on_a_linear_objective(betas):
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(1000, dtype=torch.float64))
    opt = lrfree.PSDASGD([p], betas=betas, d0_lr=1e-6, growth_rate=math.inf)
    d, lrs = [], []
    for _ in range(30):
        p.grad = g.clone()
        opt.step()
        d.append(float(opt.param_groups[0]["d"]))
        lrs.append(float(opt.param_groups[0]["effective_lr"]))
    ratios = [b / a for a, b in zip(d[10:], d[11:])]
    assert ratios == pytest.approx([math.sqrt(3)] * len(ratios), rel=1e-6)
    # the first effective lr is d0_lr; at the derived rate 1e-3 is reached at step 15-16
    first = next(k for k, lr in enumerate(lrs) if lr >= 1e-3)
    assert lrs[0] == pytest.approx(1e-6, rel=1e-9)
    assert math.log(1e3) / math.log(math.sqrt(3)) <= first <= 16


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.0, 0.999)])
def test_default_growth_rate_bounds_the_same_growth_at_1_5(betas):
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(1000, dtype=torch.float64))
    opt = lrfree.PSDASGD([p], betas=betas, d0_lr=1e-6)
    d = []
    for _ in range(30):
        p.grad = g.clone()
        opt.step()
        d.append(float(opt.param_groups[0]["d"]))
    ratios = [b / a for a, b in zip(d[10:], d[11:])]
    assert ratios == pytest.approx([1.5] * len(ratios), rel=1e-12)

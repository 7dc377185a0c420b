"""PSDASGD's Polyak warm-up (``warmup="polyak"``, docs/algorithms.md §4d): the fast
implementation equals the slow reference, the first step is the Polyak distance's, and the
paper's two requirements still hold."""
import math

import pytest
import torch

import lrfree
from lrfree.reference import PSDASGDReference
from problems import flat, train
from test_reductions_and_invariance import ScaledAlpha, two_block_problem
from test_reference_agreement import lockstep

# the momentum step (the warm-up's recipe is a scheduled fine-tune), and the last with the
# defaults' schedule-free iteration (no LR scheduler here)
WARMUPS = [
    dict(warmup="polyak", schedule_free=False),
    dict(warmup="polyak", warmup_growth=3.0, schedule_free=False),
    dict(warmup="polyak", warmup_growth=2.0, weight_decay=0.1, schedule_free=False),
    dict(warmup="polyak", warmup_growth=1.5, scaling="adafactor", d0_lr=1e-4),
]


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("options", WARMUPS, ids=str)
def test_warmup_matches_reference(options, foreach):
    lockstep(
        lambda groups: lrfree.PSDASGD(groups, foreach=foreach, **options),
        lambda groups: PSDASGDReference(groups, **options),
        ("m", "v", "v_max", "v_row", "v_col", "s", "z"),
        {"d": "d", "d_hat": "d_hat", "r": "r", "alpha_norm": "N0", "grad_norm0": "G0",
         "warming": "warming"},
    )


@pytest.mark.parametrize("options", WARMUPS, ids=str)
def test_warmup_is_not_vacuous(options):
    """The warm-up changes the trajectory, and the ramp lasts several steps."""
    warming = []
    base, _ = train(lambda g: lrfree.PSDASGD(g, **{k: v for k, v in options.items()
                                                 if not k.startswith("warmup")}), 25)
    net, _ = train(lambda g: lrfree.PSDASGD(g, **options), 25, on_step=lambda step, net, opt:
                   warming.append(float(opt.param_groups[0]["estimate"]["warming"])))
    assert float((flat(net) - flat(base)).norm() / flat(base).norm()) > 1e-3
    if math.isinf(options.get("warmup_growth", math.inf)):
        assert warming == [0.0] * 25
    else:
        assert warming[:2] == [1.0, 1.0] and warming[-1] == 0.0


def test_first_step_is_the_polyak_step():
    """With Adam's a_1 = |g_1| (eps 0 in effect) the first effective lr is
    loss * N / ||g'||^2 = loss / ||g_1||_1, computed here directly."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(50, dtype=torch.float64))
    target = torch.randn(50, dtype=torch.float64)
    opt = lrfree.PSDASGD([w], eps=1e-30, warmup="polyak")
    loss = 0.5 * ((w - target) ** 2).sum()
    loss.backward()
    expected = float(loss) / float(w.grad.abs().sum())
    opt.step(loss=loss)
    assert abs(float(opt.param_groups[0]["effective_lr"]) / expected - 1) < 1e-12
    assert expected > 100 * 1e-6, "the Polyak start must be above the default start"


@pytest.mark.parametrize("options", WARMUPS[:2], ids=str)
@pytest.mark.parametrize("c", [1e-3, 1e3])
def test_requirement1_with_warmup(options, c):
    """Alpha times c, and loss times c (eps times c), leave the trajectory unchanged."""
    base, _ = train(lambda g: lrfree.PSDASGD(g, **options), 40)
    scaled, _ = train(lambda g: lrfree.PSDASGD(g, scaling=ScaledAlpha(c), **options), 40)
    assert float((flat(scaled) - flat(base)).norm() / flat(base).norm()) < 1e-10
    loss_scaled, _ = train(lambda g: lrfree.PSDASGD(g, eps=1e-8 * c, **options), 40,
                           loss_scale=c)
    assert float((flat(loss_scaled) - flat(base)).norm() / flat(base).norm()) < 1e-10


@pytest.mark.parametrize("options", WARMUPS[:2], ids=str)
def test_requirement2_with_warmup(options):
    """As test_requirement2_other_parameters_keep_training, with the warm-up on."""
    a, b, b_star, loss = two_block_problem()
    a_start = float(a.abs().max())
    steps = 2000
    opt = lrfree.PSDASGD([a, b], **options)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    ratios = []
    for _ in range(steps):
        opt.zero_grad()
        value = loss()
        value.backward()
        gamma = sched.get_last_lr()[0]
        opt.step(loss=value)
        ratios.append(float(opt.param_groups[0]["effective_lr"]) / gamma)
        sched.step()
    assert all(later >= earlier * (1 - 1e-9) for earlier, later in zip(ratios[:-1], ratios[1:]))
    assert float(a.abs().max()) < 1e-3 * a_start, "block A converged"
    assert float((b - b_star).norm() / b_star.norm()) < 1e-2


def test_warmup_errors_name_the_fix():
    w = torch.nn.Parameter(torch.ones(3))
    opt = lrfree.PSDASGD([w], warmup="polyak")
    w.grad = torch.ones(3)
    with pytest.raises(ValueError, match="loss=loss"):
        opt.step()
    with pytest.raises(ValueError, match="warmup"):
        lrfree.PSDASGD([w], warmup="geometric")
    with pytest.raises(ValueError, match="warmup_growth"):
        lrfree.PSDASGD([w], warmup="polyak", warmup_growth=1.0)
    with pytest.raises(ValueError, match="fused=True"):
        lrfree.PSDASGD([w], warmup="polyak", warmup_growth=3.0, fused=True)


def test_cpp_kernel_with_warmup():
    """The C++ kernel (lrfree.fused(opt, kernel="cpp")) takes the steps after the warm-up
    and equals the eager step; while the ramp is on, steps are eager (none through it)."""
    fk = pytest.importorskip("test_fused_kernel")  # skips where no C++ compiler
    calls = []
    original = fk.kernels.run

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    fk.kernels.run = counted
    try:
        for options, kernel_steps in (({"warmup": "polyak"}, 9),
                                      ({"warmup": "polyak", "warmup_growth": 1.01}, 0)):
            calls.clear()
            net_e, opt_e, net_k, opt_k = fk.train_pair("PSDASGD", options, torch.float64)
            assert len(calls) == kernel_steps
            worst = fk.max_differences(net_e, opt_e, net_k, opt_k)
            assert max(worst.values()) < 1e-12, worst
    finally:
        fk.kernels.run = original


def test_the_warmup_declares_that_it_needs_the_loss():
    """needs_loss is what the base class (a clear error, the loss's non-finite check, its
    average over ranks) and the framework integrations read; PSDASGD sets it with the
    warm-up only, so that the integrations hand it the loss as they do PSSPS."""
    w = torch.nn.Parameter(torch.ones(3))
    assert lrfree.PSDASGD([w], warmup="polyak").needs_loss
    assert not lrfree.PSDASGD([w]).needs_loss
    opt = lrfree.PSDASGD([w], warmup="polyak")
    w.grad = torch.ones(3)
    with pytest.raises(ValueError, match="needs the mini-batch loss"):
        opt.step()
    opt.step(loss=torch.tensor(float("nan")))  # a non-finite loss skips the step
    assert int(opt.param_groups[0]["skipped_steps"]) == 1 and torch.equal(w, torch.ones(3))

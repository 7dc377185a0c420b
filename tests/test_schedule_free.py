"""PSDASGD(schedule_free=True) (docs/algorithms.md §4h): the average x that eval() recovers
against the reference that stores it, the two design requirements, eval/train semantics,
resume, the errors, and the constant-lr noisy problem it exists for. (The step itself is
checked against the reference in test_reference_agreement; the contract batteries, meta,
CUDA and distributed tests run it through option_matrix, test_torch_contract and
dist_worker.)"""
import warnings

import pytest
import torch

import lrfree
from lrfree.optim.ps_dasgd import check_schedule_free
from lrfree.reference import PSDASGDReference
from problems import TinyNet, batches, flat, param_groups, reload, resume, train
from test_reductions_and_invariance import ScaledAlpha, two_block_problem

SF = dict(schedule_free=True)


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("options", [SF, dict(SF, weight_decay=0.1, betas=(0.95, 0.99))],
                         ids=["defaults", "decay,beta1=0.95"])
def test_eval_puts_the_references_average(options):
    """eval() recovers x = (y - (1 - beta1) z) / beta1; the reference stores x itself."""
    net, opt = train(lambda g: lrfree.PSDASGD(g, **options), 25)
    ref_net, ref = train(lambda g: PSDASGDReference(g, **options), 25)
    assert rel(flat(net), flat(ref_net)) < 1e-10  # y
    opt.eval()
    ref.eval()
    assert rel(flat(net), flat(ref_net)) < 1e-10  # x
    assert rel(flat(net), flat(train(lambda g: lrfree.PSDASGD(g, **options), 25)[0])) > 1e-4


def test_eval_train_round_trip_and_idempotence():
    net, opt = train(lambda g: lrfree.PSDASGD(g, **SF), 20)
    y = flat(net).clone()
    opt.eval()
    x = flat(net).clone()
    opt.eval()
    assert torch.equal(flat(net), x) and rel(x, y) > 1e-4
    opt.train()
    opt.train()
    assert rel(flat(net), y) < 1e-14  # a lerp there and back: float rounding, not bitwise
    with opt.averaged():
        assert rel(flat(net), x) < 1e-14
    with pytest.raises(RuntimeError, match=r"opt\.train\(\)"):
        opt.eval()
        opt.step()


def test_eval_before_any_step_leaves_the_parameters():
    net = TinyNet()
    before = flat(net).clone()
    opt = lrfree.PSDASGD(param_groups(net), **SF)
    opt.eval()
    assert torch.equal(flat(net), before)
    opt.train()
    assert torch.equal(flat(net), before)


@pytest.mark.parametrize("c", [1e-3, 1e3])
def test_requirement1_alpha_times_constant(c):
    """Multiplying alpha by a constant changes neither y nor the average x."""
    def run(scaling):
        net, opt = train(lambda g: lrfree.PSDASGD(g, scaling=scaling, **SF), 40)
        y = flat(net).clone()
        opt.eval()
        return y, flat(net)

    (y, x), (y_c, x_c) = run("adam"), run(ScaledAlpha(c))
    assert rel(y_c, y) < 1e-10 and rel(x_c, x) < 1e-10


def test_requirement2_other_parameters_keep_training():
    """As test_reductions_and_invariance's test, without a schedule: block A converges,
    block B's effective lr never falls and B's average reaches its optimum."""
    a, b, b_star, loss = two_block_problem()
    a_start = float(a.abs().max())
    opt = lrfree.PSDASGD([a, b], **SF)
    lrs = []
    for _ in range(2000):
        opt.zero_grad()
        loss().backward()
        opt.step()
        lrs.append(float(opt.param_groups[0]["effective_lr"]))
    assert all(later >= earlier * (1 - 1e-9) for earlier, later in zip(lrs[:-1], lrs[1:]))
    opt.eval()
    assert float(a.abs().max()) < 1e-3 * a_start, "block A converged"
    assert float((b - b_star).norm() / b_star.norm()) < 1e-2


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resume_saved_in_either_mode(mode):
    make = lambda g: lrfree.PSDASGD(g, **SF)  # noqa: E731
    straight, opt_straight = train(make, 20)
    expected = flat(straight).clone()
    net, opt = train(make, 8)
    if mode == "eval":
        opt.eval()
    net2, _ = resume(net, opt, make, 8, 20)
    if mode == "train":
        assert torch.equal(flat(net2), expected)
    else:  # saved as x, back to y by a lerp: float rounding
        assert rel(flat(net2), expected) < 1e-12


def test_errors_name_the_fix():
    w = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(ValueError, match="average=True"):
        lrfree.PSDASGD(w, schedule_free=True, average=True)
    with pytest.raises(ValueError, match=r"betas\[0\] > 0"):
        lrfree.PSDASGD(w, schedule_free=True, betas=(0.0, 0.999))
    with pytest.raises(ValueError, match="fused=None"):
        lrfree.PSDASGD(w, schedule_free=True, fused=True)
    with pytest.raises(ValueError, match="schedule_free"):
        lrfree.PSDASGD(w, schedule_free="yes")


def test_a_decaying_lr_warns_once_and_a_warmup_does_not():
    """The deprecation path to a schedule-free default (docs/algorithms.md §4h): a scheduler
    that lowers lr under schedule_free=True gets one warning naming the group and the fix;
    a warm-up (lr rising), a constant lr and the momentum step get none."""
    def run(multiplier, steps=8, **options):
        def schedule(step, net, opt):  # what LambdaLR does: the lr of the next step
            for group, base in zip(opt.param_groups, (1.0, 0.5)):
                group["lr"] = base * multiplier(step + 1)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(lambda g: lrfree.PSDASGD(g, **options), steps, on_step=schedule,
                  lrs=(multiplier(0), 0.5 * multiplier(0)))
        return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]

    warmup = lambda step: min(1.0, (step + 1) / 4)  # noqa: E731
    assert run(warmup, **SF) == []
    assert run(lambda step: 1.0, **SF) == []
    decay = lambda step: 1.0 / (step + 2)  # noqa: E731
    assert run(decay, schedule_free=False) == []  # the momentum step is meant to be scheduled
    # the defaults without a torch scheduler (lr set by hand): "auto" is schedule-free, so
    # the hand-made decay is warned about as well
    assert len(run(decay)) == 1
    messages = run(decay, **SF)
    assert len(messages) == 1, messages
    assert "param group 0 fell from 0.5 to 0.333" in messages[0]
    assert "schedule_free=False" in messages[0] and "warm-up is fine" in messages[0]
    after_warmup = lambda step: warmup(step) if step < 4 else 0.9  # noqa: E731
    assert len(run(after_warmup, **SF)) == 1


@pytest.mark.parametrize("saved,built", [(True, False), (False, True), (True, True)])
def test_loading_a_checkpoint_of_the_other_iteration_warns(saved, built):
    """torch restores every group option from a checkpoint, schedule_free with the rest
    (its state, z or m, comes with it); when that changes the iteration the optimizer was
    built with, the load says so."""
    net, opt = train(lambda g: lrfree.PSDASGD(g, schedule_free=saved), 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, opt2 = reload(net, opt, lambda g: lrfree.PSDASGD(g, schedule_free=built))
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert opt2.param_groups[0]["schedule_free"] is saved
    if saved == built:
        assert messages == []
    else:
        assert len(messages) == 1
        assert f"saved with schedule_free={saved}" in messages[0]
        assert ("schedule-free step" if saved else "momentum step") in messages[0]


def auto_run(steps=6, scheduler=None, **options):
    """TinyNet trained by PSDASGD(**options), with ``scheduler(opt)`` attached before the
    first step if given (stepped after each optimizer step)."""
    net = TinyNet()
    opt = lrfree.PSDASGD(param_groups(net), **options)
    sched = scheduler(opt) if scheduler else None
    x, y = batches()
    for step in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[:16], step), y[:16]).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return net, opt


COSINE = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)  # noqa: E731
WARMUP = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
    opt, lambda k: min(1.0, (k + 1) / 3))


@pytest.mark.parametrize("scheduler,expected", [(None, True), (COSINE, False),
                                                (WARMUP, False)],
                         ids=["no scheduler", "cosine", "warm-up"])
def test_auto_is_schedule_free_unless_a_scheduler_is_attached(scheduler, expected):
    """The default schedule_free="auto" settles at the first step: the schedule-free
    iteration without an LR scheduler, the momentum step with one (torch's schedulers mark
    the groups with initial_lr when they are created). Bitwise the run of the explicit
    option, with the same scheduler."""
    opt_auto = lrfree.PSDASGD(param_groups(TinyNet()))
    assert opt_auto.param_groups[0]["schedule_free"] == "auto"
    net, opt = auto_run(scheduler=scheduler)
    explicit, _ = auto_run(scheduler=scheduler, schedule_free=expected)
    with warnings.catch_warnings():  # schedule-free under a scheduler: warned, expected
        warnings.simplefilter("ignore")
        other, _ = auto_run(scheduler=scheduler, schedule_free=not expected)
    assert all(g["schedule_free"] is expected for g in opt.param_groups)
    assert torch.equal(flat(net), flat(explicit))
    assert not torch.equal(flat(net), flat(other))
    assert ("z" in opt.state[net.w1]) is expected and ("m" in opt.state[net.w1]) is not expected


def test_auto_settles_early_where_the_options_exclude_schedule_free():
    """average=True, betas[0] = 0 and fused=True exclude the schedule-free iteration: "auto"
    is False from the start (what these options meant before "auto"), no error."""
    w = [torch.nn.Parameter(torch.ones(3))]
    assert lrfree.PSDASGD(w, average=True).param_groups[0]["schedule_free"] is False
    assert lrfree.PSDASGD(w, betas=(0.0, 0.999)).param_groups[0]["schedule_free"] is False
    with pytest.raises(ValueError, match="fused=True"):  # on the CPU: the kernel's own error
        lrfree.PSDASGD(w, fused=True)
    assert check_schedule_free("auto", False, (0.9, 0.999), True) is False  # fused=True
    assert check_schedule_free("auto", False, (0.9, 0.999), None) == "auto"


def test_eval_before_the_first_step_does_not_block_a_scheduled_run():
    """opt.eval() before any step (an initial validation) under "auto": nothing to swap,
    and no flag left that would make the first step of a scheduled run (the momentum step,
    whose eval() is a no-op) demand opt.train(); the run equals one without the call."""
    expected, _ = auto_run(scheduler=COSINE)
    net = TinyNet()
    opt = lrfree.PSDASGD(param_groups(net))
    sched = COSINE(opt)
    opt.eval()
    x, y = batches()
    for step in range(6):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[:16], step), y[:16]).backward()
        opt.step()
        sched.step()
    assert opt.param_groups[0]["schedule_free"] is False
    assert torch.equal(flat(net), flat(expected))


def test_auto_with_a_plateau_scheduler_is_schedule_free_and_warns_at_its_first_cut():
    """ReduceLROnPlateau does not mark the groups (it sets no initial_lr): "auto" takes the
    schedule-free iteration, and the first cut of lr gets the warning that names the fix."""
    def plateau(opt):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)

    net = TinyNet()
    opt = lrfree.PSDASGD(param_groups(net))
    sched = plateau(opt)
    x, y = batches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(4):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[:16], step), y[:16]).backward()
            opt.step()
            sched.step(1.0)  # a flat metric: a cut after every step
    assert opt.param_groups[0]["schedule_free"] is True
    messages = [str(w.message) for w in caught if "fell from" in str(w.message)]
    assert len(messages) == 1 and "schedule_free=False" in messages[0]


def test_auto_checkpoints_and_late_groups_keep_the_settled_iteration():
    """A checkpoint written after the first step holds the settled value: loading it into a
    fresh "auto" optimizer takes it without a warning (nothing was chosen against it), and
    resuming equals the straight run. A param group added later joins the settled
    iteration."""
    straight, _ = train(lambda g: lrfree.PSDASGD(g), 20)
    net, opt = train(lambda g: lrfree.PSDASGD(g), 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net2, opt2 = resume(net, opt, lambda g: lrfree.PSDASGD(g), 8, 20)
    assert opt2.param_groups[0]["schedule_free"] is True
    assert torch.equal(flat(net2), flat(straight))
    extra = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt2.add_param_group({"params": [extra]})
    extra.grad = torch.ones(3, dtype=torch.float64)
    opt2.step()
    assert opt2.param_groups[-1]["schedule_free"] is True and "z" in opt2.state[extra]


def noisy_least_squares(seed, make, steps=3000):
    """benchmarks/noisy_least_squares.py's problem: 200 x 50, batch 16, lr never scheduled."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(200, 50, dtype=torch.float64, generator=g)
    b = a @ torch.randn(50, dtype=torch.float64, generator=g) + \
        torch.randn(200, dtype=torch.float64, generator=g)
    x_ls = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    draw = torch.Generator().manual_seed(1000 + seed)
    x = torch.nn.Parameter(torch.zeros(50, dtype=torch.float64))
    opt = make([x])
    for _ in range(steps):
        rows = torch.randint(0, 200, (16,), generator=draw)
        opt.zero_grad()
        (0.5 * ((a[rows] @ x - b[rows]) ** 2).mean()).backward()
        opt.step()
    opt.eval()
    return float((x.detach() - x_ls).norm() / x_ls.norm())


def test_constant_lr_noisy_least_squares_converges():
    """Issue 17's third target (relative distance <= 0.1 at a constant lr). Measured
    (benchmarks/results/noisy_least_squares.md, 3 seeds): schedule-free 0.011-0.015, the
    momentum step 0.58 +- 0.17. Bounds: the issue's 0.1 for schedule-free, and the control
    (the momentum step, same problem and seed) beyond 0.3, so the test can fail."""
    assert noisy_least_squares(0, lambda p: lrfree.PSDASGD(p, **SF)) < 0.1
    assert noisy_least_squares(0, lambda p: lrfree.PSDASGD(p, schedule_free=False)) > 0.3
    assert noisy_least_squares(0, lambda p: lrfree.PSDASGD(p)) < 0.1  # the defaults


def test_a_scheduled_multiplier_matches_the_reference():
    """The weights use the largest lr so far (schedule-free AdamW's lr_max): under a
    decaying multiplier the library and the reference (which stores x) agree, y and x."""
    def run(make):
        seen = []

        def decay(step, net, opt):
            for group, base in zip(opt.param_groups, (1.0, 0.5)):
                group["lr"] = base / (2 + step)

        net, opt = train(make, 12, on_step=decay)
        y = flat(net).clone()
        opt.eval()
        return y, flat(net)

    with pytest.warns(UserWarning, match="fell from"):  # the decay is deliberate here
        y, x = run(lambda g: lrfree.PSDASGD(g, **SF))
    y_ref, x_ref = run(lambda g: PSDASGDReference(g, **SF))
    assert rel(y, y_ref) < 1e-10 and rel(x, x_ref) < 1e-10
    constant = train(lambda g: lrfree.PSDASGD(g, **SF), 12)[0]
    assert rel(flat(constant), y) > 1e-3  # the schedule changed the run


@pytest.mark.parametrize("state_dtype", ["float32", "param"])
def test_bf16_parameters_keep_z(state_dtype):
    """bf16 parameters are stepped in float32 and rounded once; a bf16 z (state_dtype=
    "param") is updated through a float32 copy that must be written back (it was not: z
    stayed at its start). Against the float32 run over 30 steps: z moves as far (measured
    0.0166-0.0175 against 0.0168 relative) and along the same path (bf16 rounding alone
    separates them by 0.002-0.006)."""
    def run(dtype, **kw):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        net.to(dtype)
        start = torch.cat([p.detach().float().reshape(-1) for p in net.parameters()])
        opt = lrfree.PSDASGD(net.parameters(), schedule_free=True, **kw)
        gen = torch.Generator().manual_seed(1)
        for _ in range(30):
            x = torch.randn(32, 8, generator=gen).to(dtype)
            target = torch.randint(0, 3, (32,), generator=gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x).float(), target).backward()
            opt.step()
        z = torch.cat([opt.state[p]["z"].float().reshape(-1) for p in net.parameters()])
        return z, start

    z32, start = run(torch.float32)
    z16, _ = run(torch.bfloat16, state_dtype=state_dtype)
    moved32, moved16 = rel(z32, start), rel(z16, start)
    assert moved16 > 0.5 * moved32, (moved16, moved32)
    assert rel(z16, z32) < 0.5 * moved32

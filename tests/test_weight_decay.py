"""Weight decay, both forms, in every optimizer (issue 15, defect 1).

Decoupled decay used to move the iterate by a term the D-Adaptation sums did not hold: once
the decay balanced the gradient (g = -wd x, a constant non-zero gradient at a point that no
longer moves), s grew linearly in one direction, r = sum lam <g, s> quadratically, and
d_hat = 2 r / ||s|| without bound: DAdaptSGD and PSDASGD went to inf/NaN. Now the decay
joins the gradient in the sums (docs/algorithms.md, "Weight decay").

The bound every run must meet. Each decay form makes the optimizer minimise, near its fixed
point, F = f + R with
  - coupled (L2), and decoupled without a scaling (SGD, where x (1 - lr wd) - lr g is
    x - lr (g + wd x)): R(x) = wd / 2 ||x||^2;
  - decoupled with Adam's scaling (AdamW-style): the fixed point of x <- x (1 - lr wd) -
    lr m_hat / a has g = -wd a x, the stationary point of R(x) = wd / 2 sum a x^2 (a
    frozen): a is taken from the decay run's final state.
Then f(x_wd) <= F(x_wd) = min F + gap <= F(x_0) + gap = f(x_0) + R(x_0) + gap, with x_0 the
end point of the same run without decay. Allowing the decay run the optimisation gap that
the run without decay ends with, which is at most its final loss f(x_0) (f* >= 0 for
cross-entropy): f(x_wd) <= 2 f(x_0) + R(x_0). That is the factor: 2, plus the cost of the
regulariser at the no-decay solution. (For the transformer, which is not convex, the same
bound is asked, not implied.) Before the fix, the decoupled DAdaptSGD and PSDASGD runs at
wd = 1e-2 and 0.1 ended at inf or NaN.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lrfree

OPTIMIZERS = ["psdasgd", "dadaptsgd", "pssps", "psdog", "sps"]
SCALED = {"psdasgd", "pssps", "psdog"}
DECAYS = [1e-4, 1e-2, 0.1]
STEPS = 150
# PSDoG starts at reps_rel = 1e-6 of ||x|| and takes ~100 steps to grow its distance
# (logistic: loss 1.9 of 2.4 at 150 steps, 0.33 at 300)
STEPS_OF = {"psdog": 300}


def make(name, params, **kw):
    cls = {"psdasgd": lrfree.PSDASGD, "dadaptsgd": lrfree.DAdaptSGD, "pssps": lrfree.PSSPS,
           "psdog": lrfree.PSDoG, "sps": lrfree.SPS}[name]
    return cls(params, **kw)


def logistic_problem():
    """Multinomial logistic regression, 10 classes, 32 features, 256 points, full batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(32, 10, generator=g, dtype=torch.float64)
         + 2.0 * torch.randn(256, 10, generator=g, dtype=torch.float64)).argmax(1)
    model = nn.Linear(32, 10).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(10, 32, generator=g, dtype=torch.float64) * 0.1)
        model.bias.zero_()
    return model, lambda: nn.functional.cross_entropy(model(x), y)


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 16, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layer = nn.TransformerEncoderLayer(width, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.embed(tokens)))


def transformer_problem():
    """One encoder layer memorising 16 random sequences of 8 tokens (a fixed batch)."""
    torch.manual_seed(0)
    model = TinyTransformer().double()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 16, (16, 8), generator=g)
    targets = torch.randint(0, 16, (16, 8), generator=g)
    return model, lambda: nn.functional.cross_entropy(model(tokens).reshape(-1, 16),
                                                      targets.reshape(-1))


PROBLEMS = {"logistic": logistic_problem, "transformer": transformer_problem}


def run(name, problem, **kw):
    if name == "dadaptsgd" and problem == "transformer":
        pytest.skip("D-Adaptation SGD diverges on this transformer without decay too (loss "
                    "9e14 after 300 steps at momentum 0, 3e16/2e14 at 0.5/0.9; the "
                    "memorisation optimum is at infinity and d grows to 1e6+)")
    model, loss_fn = PROBLEMS[problem]()
    opt = make(name, model.parameters(), **kw)
    steps = STEPS_OF.get(name, STEPS)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step(loss=loss) if opt.needs_loss else opt.step()
        sched.step()
    with torch.no_grad():
        return float(loss_fn()), model, opt


_baselines: dict = {}


def baseline(name, problem):
    if (name, problem) not in _baselines:
        loss, model, _ = run(name, problem)
        assert math.isfinite(loss)
        _baselines[name, problem] = loss, [p.detach().clone() for p in model.parameters()]
    return _baselines[name, problem]


def adam_denominator(opt, p):
    """a = sqrt(v_hat) + eps of the scaling (Adam) at the run's last step."""
    state, group = opt.state[p], opt.param_groups[0]
    beta2 = group["betas"][1]
    return torch.sqrt(state["v"] / (1 - beta2 ** float(state["step"]))) + group["eps"]


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("decouple", [True, False], ids=["decoupled", "coupled"])
@pytest.mark.parametrize("wd", DECAYS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_decay_stays_within_the_regularised_bound(name, wd, decouple, problem):
    loss0, x0 = baseline(name, problem)
    loss, model, opt = run(name, problem, weight_decay=wd, decouple=decouple)
    assert math.isfinite(loss), f"{name} wd={wd}: loss {loss}"
    d = opt.param_groups[0].get("d")
    assert d is None or math.isfinite(float(d))
    if decouple and name in SCALED:
        reg = sum(float((adam_denominator(opt, p) * w * w).sum())
                  for p, w in zip(model.parameters(), x0)) * wd / 2
    else:
        reg = sum(float((w * w).sum()) for w in x0) * wd / 2
    assert loss <= 2 * loss0 + reg, (loss, loss0, reg)


def test_baselines_train():
    """The bound is only worth something if the runs without decay get somewhere: each ends
    below half the loss it starts from, so that 2 f(x_0) is below the start and a decay run
    that does not train fails the bound as one that diverges does (for small wd, R ~ 0)."""
    for problem, build in PROBLEMS.items():
        _, loss_fn = build()
        with torch.no_grad():
            start = float(loss_fn())
        for name in OPTIMIZERS:
            if name == "dadaptsgd" and problem == "transformer":
                continue  # see run()
            assert baseline(name, problem)[0] < start / 2, (name, problem)


def test_dadaptsgd_decay_forms_agree_without_momentum():
    """Without momentum x = z, so decay at x (coupled) and at z (decoupled) is the same
    gradient term: the two forms take the same steps, to the bit."""
    runs = [run("dadaptsgd", "logistic", weight_decay=0.1, decouple=c)[1] for c in (True, False)]
    for a, b in zip(*(m.parameters() for m in runs)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("decouple", [True, False], ids=["decoupled", "coupled"])
@pytest.mark.parametrize("name", ["psdasgd", "dadaptsgd"])
def test_estimate_is_bounded_at_the_decay_fixed_point(name, decouple):
    """The mechanism itself, without a schedule: f(x) = <c, x> (convex, no minimum) with
    decoupled decay has the fixed point where the gradient c balances the decay (x = -c /
    wd for SGD, -sign(c) / wd for Adam's a = |c|). There the gradient stays c, a constant
    non-zero vector: before the fix s grew along it, d_hat ~ k and the run blew up. Now
    the sums see c + decay = 0 at the fixed point and the iterate settles there. (Coupled
    decay was not broken: its fixed point is the minimum of f + wd/2 ||x||^2.)

    dadaptation.DAdaptSGD (coupled only) leaves the decay out of G0 at its first step
    (``grad.add``, not ``add_``, there) and diverges here: G0 = ||c|| = 0.07 makes the
    step d / G0 ~ 50 > 2 / wd. Ours includes it, as every later step of the package does.
    """
    x = nn.Parameter(torch.linspace(-1, 1, 50, dtype=torch.float64))
    c = torch.full((50,), 0.01, dtype=torch.float64)
    wd = 0.1
    # Adam's a = |c| + eps: the coupled fixed point is f + wd/2 ||x||^2's, -c / wd, too
    fixed = -c / wd if name == "dadaptsgd" or not decouple else -c / (wd * (c.abs() + 1e-8))
    start = float((x.detach() - fixed).norm())
    # full batch, no schedule: coupled decay drives the gradient (and with it Adam's a) to
    # 0 at the fixed point, where Adam's step oscillates (docs/failure_modes.md); amsgrad
    # keeps a, as recommended for full-batch problems
    scaling = {} if name == "dadaptsgd" or decouple else {"scaling": "amsgrad"}
    opt = make(name, [x], weight_decay=wd, decouple=decouple, **scaling)
    for _ in range(2000):
        opt.zero_grad()
        (c * x).sum().backward()
        opt.step()
        # G0 includes the decay term, G0 >= wd D (scaled units for PSDASGD), so while
        # d <= D the decay factor 1 - effective_lr * wd stays in [0, 1]
        assert float(opt.param_groups[0]["effective_lr"]) * wd <= 1
    assert float((x.detach() - fixed).norm()) < 1e-3 * start

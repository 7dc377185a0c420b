"""The optax ports (lrfree.jax) against the torch optimizers they port.

1. Trajectory parity: the same problems, the same start, torch ``lrfree.PSDASGD``/``PSSPS``
   and ``lrfree.jax.ps_dasgd``/``ps_sps`` in float64, each computing its own gradients:
   parameters, the estimate (d / Polyak step) and effective_lr agree at every step.
2. The convex battery of tests/test_convex_battery.py (same data, same optima).
3. jit: one compilation for many steps with a changing loss and schedule, no host
   transfer, and the state as a pytree that round-trips through the host.
4. optax composition (chain, MultiSteps), skipped and frozen steps, bf16 parameters.
5. Bad input: ValueErrors that name the argument.
"""
import math
import os
import re

import numpy as np
import pytest
import torch

# optax first: this directory is itself named jax, so with tests/ on sys.path and JAX
# missing, "import jax" alone could find it as a namespace package
optax = pytest.importorskip("optax")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", True)

import lrfree  # noqa: E402
from lrfree.jax import ps_dasgd, ps_sps  # noqa: E402

STEPS = 30
# Measured worst difference: 1.5e-12 (docs/jax.md); 1e-10 leaves room for other BLAS.
RTOL = 1e-10


# ---------------------------------------------------------------------- problems
def _data(seed: int = 0):
    """Badly scaled features (1e-2 .. 1e2), one feature exactly zero (so a row of W has an
    exactly zero gradient), 3 outputs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((48, 6)) * np.array([1e-2, 1e-1, 1.0, 10.0, 1e2, 0.0])
    target = x @ rng.standard_normal((6, 3)) + 0.1 * rng.standard_normal((48, 3))
    labels = rng.integers(0, 3, 48)
    init = {
        "W": rng.standard_normal((6, 3)) * 0.1,
        "b": np.zeros(3),
        "scale": np.ones((1, 3)),
        # enters the loss times 0: its gradient exists and is zero everywhere
        "unused": rng.standard_normal((2, 2)),
    }
    return x, target, labels, init


NAMES = ("W", "b", "scale", "unused")


def _loss_torch(kind, x, target, labels, p):
    out = (x @ p["W"] + p["b"]) * p["scale"] + 0.0 * p["unused"].sum()
    if kind == "least_squares":
        return 0.5 * ((out - target) ** 2).mean()
    return torch.nn.functional.cross_entropy(out, labels) + 5e-3 * (p["W"] ** 2).sum()


def _loss_jax(kind, x, target, labels, p):
    out = (x @ p["W"] + p["b"]) * p["scale"] + 0.0 * p["unused"].sum()
    if kind == "least_squares":
        return 0.5 * jnp.mean((out - target) ** 2)
    logp = jax.nn.log_softmax(out, axis=1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1)) + 5e-3 * jnp.sum(
        p["W"] ** 2)


def cosine(k):
    return 0.5 * (1 + math.cos(math.pi * k / STEPS))


def run_torch(cls, kind, kwargs, schedule):
    x, target, labels, init = _data()
    x, target = torch.tensor(x), torch.tensor(target)
    labels = torch.tensor(labels)
    p = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    if cls is lrfree.PSDASGD:  # the port's default step, whatever the torch default
        kwargs = dict(schedule_free=False, **kwargs)  # (test_schedule_free_port.py: True)
    opt = cls([p[k] for k in NAMES], **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine) if schedule else None
    trace = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = _loss_torch(kind, x, target, labels, p)
        loss.backward()
        opt.step(loss=loss)
        if sched is not None:
            sched.step()
        group = opt.param_groups[0]
        est = float(group["d"] if cls is lrfree.PSDASGD else group["polyak_step"])
        avg = ([opt.state[p[k]]["x_avg"].numpy().copy() for k in NAMES]
               if kwargs.get("average") else None)
        trace.append(([p[k].detach().numpy().copy() for k in NAMES], est,
                      float(group["effective_lr"]), avg))
    return trace


def run_jax(make, kind, kwargs, schedule):
    x, target, labels, init = _data()
    params = {k: jnp.asarray(v) for k, v in init.items()}
    lr = optax.cosine_decay_schedule(1.0, STEPS) if schedule else 1.0
    opt = make(learning_rate=lr, **kwargs)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(
            lambda q: _loss_jax(kind, x, target, labels, q))(params)
        updates, state = opt.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    trace = []
    for _ in range(STEPS):
        params, state = step(params, state)
        est = state.d if make is ps_dasgd else state.polyak_step
        avg = [np.asarray(state.x_avg[k]) for k in NAMES] if kwargs.get("average") else None
        trace.append(([np.asarray(params[k]) for k in NAMES], float(est),
                      float(state.effective_lr), avg))
    return trace


def worst_difference(ours, theirs):
    """Largest relative difference of parameters (per tensor, relative to its size),
    estimate and effective_lr over the whole trajectory."""
    worst = 0.0
    for (p1, e1, l1, a1), (p2, e2, l2, a2) in zip(ours, theirs):
        tensors = list(zip(p1, p2)) + (list(zip(a1, a2)) if a1 is not None else [])
        for u, w in tensors:
            worst = max(worst, float(np.max(np.abs(u - w))) / max(1.0, float(np.max(np.abs(w)))))
        for u, w in ((e1, e2), (l1, l2)):
            worst = max(worst, abs(u - w) / max(abs(w), 1e-300))
    return worst


# Every option of the port appears at least once; options are combined so that each case
# is one compilation (about 1.5 s of CPU each). LRFREE_JAX_FULL_PARITY=1 runs each option
# on its own, on both problems, with and without a schedule (140 cases; see docs/jax.md).
DASGD_CASES = [
    (dict(), "least_squares", False),
    (dict(weight_decay=0.1, scaling="amsgrad", d0_lr=1e-4, average=True), "logistic", True),
    (dict(weight_decay=0.1, decouple=False, scaling="rmsprop", alpha_norm="none",
          d_coef=0.5, growth_rate=1.1), "least_squares", False),
    (dict(scaling="adagrad", betas=(0.0, 0.999), alpha_norm="running"), "logistic", False),
    (dict(scaling="none", betas=(0.5, 0.9), eps=1e-6, d0=1e-6), "least_squares", True),
]
SPS_CASES = [
    (dict(), "logistic", True),
    (dict(weight_decay=0.1, scaling="amsgrad", average=True, betas=(0.5, 0.9)),
     "least_squares", False),
    (dict(weight_decay=0.1, decouple=False, scaling="adagrad", betas=(0.0, 0.999),
          alpha_norm="none", c=0.2, f_star=0.01, cap_start=0.1, cap_growth=1.2, delta=0.0),
     "logistic", False),
    (dict(scaling="none", betas=(0.0, 0.999)), "least_squares", True),
    (dict(alpha_norm="running", scaling="rmsprop", eps=1e-6), "logistic", False),
]
if os.environ.get("LRFREE_JAX_FULL_PARITY"):
    _SINGLE = [dict(weight_decay=0.1), dict(weight_decay=0.1, decouple=False),
               dict(scaling="amsgrad"), dict(scaling="rmsprop"), dict(scaling="adagrad"),
               dict(scaling="none"), dict(alpha_norm="running"), dict(alpha_norm="none"),
               dict(betas=(0.0, 0.999)), dict(average=True)]
    DASGD_CASES = [(o, kind, sched) for o in [o for o, _, _ in DASGD_CASES] + _SINGLE + [
        dict(d_coef=0.5, growth_rate=1.1), dict(d0_lr=1e-4), dict(d0=1e-6)]
        for kind in ("least_squares", "logistic") for sched in (False, True)]
    SPS_CASES = [(o, kind, sched) for o in [o for o, _, _ in SPS_CASES] + _SINGLE + [
        dict(c=0.2, f_star=0.01, cap_start=0.1, cap_growth=1.2), dict(delta=0.0)]
        for kind in ("least_squares", "logistic") for sched in (False, True)]

def case_id(case, schedule_name="cosine"):
    """A parity case's test id: options-problem-schedule."""
    kwargs, kind, schedule = case
    options = ",".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"
    return f"{options}-{kind}-{schedule_name if schedule else 'constant'}"


_id = case_id


@pytest.mark.parametrize("case", DASGD_CASES, ids=_id)
def test_ps_dasgd_trajectory_matches_torch(case):
    kwargs, kind, schedule = case
    theirs = run_torch(lrfree.PSDASGD, kind, kwargs, schedule)
    ours = run_jax(ps_dasgd, kind, kwargs, schedule)
    assert theirs[-1][1] > 10 * theirs[0][1], "the estimate must grow for the test to mean much"
    assert worst_difference(ours, theirs) <= RTOL


@pytest.mark.parametrize("case", SPS_CASES, ids=_id)
def test_ps_sps_trajectory_matches_torch(case):
    kwargs, kind, schedule = case
    theirs = run_torch(lrfree.PSSPS, kind, kwargs, schedule)
    ours = run_jax(ps_sps, kind, kwargs, schedule)
    assert theirs[-1][1] > 0
    assert worst_difference(ours, theirs) <= RTOL


# ---------------------------------------------------------------------- convex battery
BATTERY_STEPS = 500


def _battery_loss(kind):
    if kind == "least_squares":
        def loss(w, x, y, target, l2):
            return 0.5 * jnp.mean((x @ w - target) ** 2)
    else:
        def loss(w, x, y, target, l2):
            logp = jax.nn.log_softmax(x @ w, axis=1)
            return (-jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))
                    + 0.5 * l2 * jnp.sum(w ** 2))
    return loss


def _battery_runner(make, kind):
    """500 full-batch steps under a cosine schedule in one jitted scan; the data are
    arguments, so the three feature scales share one compilation."""
    loss = _battery_loss(kind)
    opt = make(learning_rate=optax.cosine_decay_schedule(1.0, BATTERY_STEPS))

    @jax.jit
    def run(w, x, y, target, l2):
        def body(carry, _):
            w, state = carry
            value, grads = jax.value_and_grad(loss)(w, x, y, target, l2)
            updates, state = opt.update(grads, state, w, value=value)
            return (optax.apply_updates(w, updates), state), None

        (w, _), _ = jax.lax.scan(body, (w, opt.init(w)), None, length=BATTERY_STEPS)
        return loss(w, x, y, target, l2)

    return run


@pytest.mark.parametrize("kind", ["least_squares", "logistic"])
@pytest.mark.parametrize("make", [ps_dasgd, ps_sps], ids=["ps_dasgd", "ps_sps"])
def test_convex_battery_reaches_optimum_at_every_scale(make, kind):
    """tests/test_convex_battery.py for the ports: same data, same optima (computed there
    with torch: pseudo-inverse and L-BFGS), same protocol and tolerance."""
    battery = pytest.importorskip("test_convex_battery")
    x, y, target = (t.numpy() for t in battery.digits())
    run = _battery_runner(make, kind)
    shape = (x.shape[1], 1) if kind == "least_squares" else (x.shape[1], 10)
    for scale in (1.0, 1e-2, 1e2):
        f_star = battery.problem(kind, scale)[2]
        final = float(run(jnp.zeros(shape), jnp.asarray(x * scale), jnp.asarray(y),
                          jnp.asarray(target), 1e-2 * scale ** 2))
        gap = (final - f_star) / f_star
        assert -1e-12 <= gap <= battery.TOL, f"scale {scale}: relative suboptimality {gap:.3g}"


# ---------------------------------------------------------------------- jit
@pytest.mark.parametrize("make", [ps_dasgd, ps_sps], ids=["ps_dasgd", "ps_sps"])
def test_jit_compiles_once_never_syncs_and_state_round_trips(make):
    traces = []
    opt = make(learning_rate=optax.linear_schedule(1.0, 0.1, 20), weight_decay=1e-3,
               scaling="amsgrad", average=True)

    def step(params, state, value, grads):
        traces.append(1)  # runs once per trace
        updates, state = opt.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(step)
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2, jnp.float32)}
    state = opt.init(params)
    args = [(jnp.asarray(10.0 / (k + 1)), _grads(params, k)) for k in range(21)]
    args = [(v, jax.tree.map(lambda g, p: g.astype(p.dtype), g, params)) for v, g in args]
    estimates = []
    with jax.transfer_guard("disallow"):  # no host round trip inside a step
        for value, grads in args[:20]:
            params, state = jitted(params, state, value, grads)
            estimates.append(state.effective_lr)
    assert len(traces) == 1 and jitted._cache_size() == 1
    assert len({float(e) for e in estimates}) == 20  # the schedule and the loss moved it
    assert params["b"].dtype == jnp.float32 and state.effective_lr.dtype == jnp.float64

    # the state is a plain pytree: through the host and back (as a checkpoint), same step
    leaves, treedef = jax.tree_util.tree_flatten(state)
    copy = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(np.asarray(leaf))
                                                  for leaf in leaves])
    assert type(copy) is type(state)
    a = jitted(params, state, *args[20])
    b = jitted(params, copy, *args[20])
    assert jax.tree.all(jax.tree.map(jnp.array_equal, a, b))
    assert jitted._cache_size() == 1


# ---------------------------------------------------------------------- composition
def _grads(params, k):
    rng = np.random.default_rng(k)
    # a common direction plus noise, so that the estimate grows
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) + 2.0), params)


PARAMS = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}


def test_chain_after_clipping_equals_clipping_first():
    chained = optax.chain(optax.clip_by_global_norm(1.0), ps_sps())
    alone, clip = ps_sps(), optax.clip_by_global_norm(1.0)

    @jax.jit
    def both(p1, s1, p2, s2, g, value):
        u1, s1 = chained.update(g, s1, p1, value=value)  # value reaches ps_sps via chain
        clipped, _ = clip.update(g, clip.init(PARAMS))
        u2, s2 = alone.update(clipped, s2, p2, value=value)
        return optax.apply_updates(p1, u1), s1, optax.apply_updates(p2, u2), s2

    p1, s1, p2, s2 = PARAMS, chained.init(PARAMS), PARAMS, alone.init(PARAMS)
    for k in range(4):
        p1, s1, p2, s2 = both(p1, s1, p2, s2, _grads(PARAMS, k), jnp.asarray(2.0 / (k + 1)))
        assert jax.tree.all(jax.tree.map(jnp.array_equal, p1, p2))
    assert optax.tree_utils.tree_get(s1, "polyak_step") == s2.polyak_step > 0


def test_multisteps_equals_averaged_gradients():
    multi = optax.MultiSteps(ps_dasgd(), every_k_schedule=2)
    single = ps_dasgd()

    @jax.jit
    def both(p1, s1, p2, s2, g1, g2):
        for g in (g1, g2):
            u1, s1 = multi.update(g, s1, p1)
            p1 = optax.apply_updates(p1, u1)
        u2, s2 = single.update(jax.tree.map(lambda a, b: (a + b) / 2, g1, g2), s2, p2)
        return p1, s1, optax.apply_updates(p2, u2), s2

    p1, s1, p2, s2 = PARAMS, multi.init(PARAMS), PARAMS, single.init(PARAMS)
    for k in range(3):
        p1, s1, p2, s2 = both(p1, s1, p2, s2, _grads(PARAMS, 2 * k), _grads(PARAMS, 2 * k + 1))
        # MultiSteps averages as a running mean: equal up to its rounding (~1e-16 of the
        # gradient) carried through the estimate and the steps (|x| ~ 1, steps ~1e-4..1e-2)
        assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
            jax.tree.leaves(p1), jax.tree.leaves(p2))) <= 1e-11
    assert s1.inner_opt_state.step == 3 and s1.inner_opt_state.d > 1e-6


def test_nonfinite_and_zero_lr_steps_change_nothing():
    opt = ps_sps(learning_rate=lambda count: jnp.where(count == 3, 0.0, 1.0))
    update = jax.jit(opt.update)
    state = opt.init(PARAMS)
    state = update(_grads(PARAMS, 0), state, PARAMS, value=jnp.asarray(1.0))[1]
    bad_grad = {"w": _grads(PARAMS, 1)["w"].at[0, 0].set(jnp.nan), "b": jnp.zeros(3)}
    for grads, value in ((bad_grad, 1.0), (_grads(PARAMS, 1), jnp.inf),  # skipped, counted
                         (_grads(PARAMS, 1), 1.0)):  # count 3: lr 0, frozen, not counted
        updates, new = update(grads, state, PARAMS, value=jnp.asarray(value))
        assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))
        unchanged = new._replace(count=state.count, skipped_steps=state.skipped_steps)
        assert jax.tree.all(jax.tree.map(jnp.array_equal, unchanged, state))
        assert new.count == state.count + 1
        state = new
    assert state.skipped_steps == 2 and state.step == 1
    updates, state = update(_grads(PARAMS, 1), state, PARAMS, value=jnp.asarray(1.0))
    assert state.step == 2 and float(jnp.abs(updates["w"]).max()) > 0


def test_bf16_params_keep_float32_state():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
    opt = ps_dasgd()
    state = opt.init(params)
    updates, state = jax.jit(opt.update)(
        jax.tree.map(lambda p: p.astype(jnp.bfloat16), _grads(params, 0)), state, params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(state.m))
    assert state.d.dtype == jnp.float32


# ---------------------------------------------------------------------- optax's wrappers
def _optax_contrib_test(name):
    """One of optax's own tests (optax/contrib/_common_test.py, shipped in the optax wheel)
    as a plain function of (self, opt_name, opt_kwargs, wrapper_name, wrapper_kwargs), and
    an instance to run it on. optax generates one method per optimizer of its own; each
    wraps the same function (functools.wraps keeps it in ``__wrapped__``)."""
    common = pytest.importorskip("optax.contrib._common_test")
    cls = common.ContribTest
    generated = [getattr(cls, attr) for attr in dir(cls) if attr.startswith(name)]
    if not generated or not hasattr(generated[0], "__wrapped__"):
        pytest.skip(f"optax {optax.__version__} has no parametrised {name}")
    return common, generated[0].__wrapped__, cls()


def test_optax_own_inject_hyperparams_test_passes_for_ps_dasgd(monkeypatch):
    """optax's test of its contrib optimizers under inject_hyperparams, run verbatim on
    ps_dasgd (not ps_sps: the test passes value= only to optimizers it knows by name)."""
    import unittest

    common, test, instance = _optax_contrib_test(
        "test_optimizers_can_be_wrapped_in_inject_hyperparams")
    monkeypatch.setattr(common.contrib, "ps_dasgd", ps_dasgd, raising=False)
    try:
        test(instance, opt_name="ps_dasgd", opt_kwargs=dict(learning_rate=1.0, weight_decay=0.1),
             wrapper_name=None, wrapper_kwargs=None)
    except unittest.SkipTest as skip:
        pytest.fail(f"optax skipped ps_dasgd: {skip}")


@pytest.mark.parametrize("make", [ps_dasgd, ps_sps], ids=["ps_dasgd", "ps_sps"])
def test_learning_rate_schedule_is_visible_to_optax(make):
    """optax's test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such
    (optax/contrib/_common_test.py) skips an optimizer unless the annotation of
    learning_rate is optax.ScalarOrSchedule or optax.Schedule (a string, as ``from
    __future__ import annotations`` makes it, is neither); then it checks that
    constant_schedule(1e-3) and 1e-3 give the same 10 steps on its parabola. The same here,
    jitted (optax's loop runs eagerly: 13 s), at 0.5: 1e-3 times the default start of the
    estimate leaves float32 parameters where they were."""
    import inspect

    annotation = inspect.signature(make).parameters["learning_rate"].annotation
    assert annotation in (optax.ScalarOrSchedule, optax.Schedule)
    target = jnp.array([1.0, -1.0, 1.0], jnp.float32)

    def objective(w):
        return jnp.sum((w - target) ** 2)

    def run(learning_rate):
        opt = make(learning_rate=learning_rate, weight_decay=0.1)

        @jax.jit
        def step(w, state):
            value, grads = jax.value_and_grad(objective)(w)
            updates, state = opt.update(grads, state, w, value=value)
            return optax.apply_updates(w, updates), state

        w = jnp.array([-1.0, 10.0, 1.0], jnp.float32)
        state = opt.init(w)
        for _ in range(10):
            w, state = step(w, state)
        return w

    with_schedule, with_float = run(optax.constant_schedule(0.5)), run(0.5)
    assert float(jnp.max(jnp.abs(with_float - jnp.array([-1.0, 10.0, 1.0])))) > 0
    assert jnp.array_equal(with_schedule, with_float)


INJECTED = {  # a non-default value of every numeric option, and the options they need
    ps_dasgd: [dict(learning_rate=0.7, eps=1e-6, weight_decay=0.1, d0_lr=1e-3, d_coef=0.5,
                    growth_rate=1.5, average=True, average_power=4.0),
               dict(weight_decay=0.1, decouple=False, d0=1e-3, scaling="amsgrad")],
    ps_sps: [dict(learning_rate=0.7, weight_decay=0.1, c=0.3, f_star=0.1, delta=1e-6,
                  cap_start=0.1, cap_growth=1.1, average=True, average_power=4.0),
             dict(weight_decay=0.1, decouple=False, alpha_norm="running")],
}


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("make", [ps_dasgd, ps_sps], ids=["ps_dasgd", "ps_sps"])
def test_inject_hyperparams_equals_the_plain_transformation(make, dtype):
    """optax.inject_hyperparams passes every numeric option as a 0-d array (a tracer
    under jit): 8 jitted steps give bitwise the updates and state of the same options as
    Python numbers; and a hyperparameter changed in the injected state is the one used (the
    run then equals the plain transformation built with the new value)."""
    params = jax.tree.map(lambda p: p.astype(dtype), PARAMS)

    def run(opt, state, steps, start=0):
        update = jax.jit(opt.update)
        trace, p = [], params
        for k in range(start, start + steps):
            grads = jax.tree.map(lambda g: g.astype(dtype), _grads(params, k))
            updates, state = update(grads, state, p, value=jnp.asarray(3.0 / (k + 1), dtype))
            p = optax.apply_updates(p, updates)
            trace.append((updates, getattr(state, "inner_state", state)))
        return trace, state

    for kwargs in INJECTED[make][:2 if dtype == jnp.float64 else 1]:
        injected = optax.inject_hyperparams(make)(**kwargs)
        ours, _ = run(injected, jax.jit(injected.init)(params), 8)
        theirs, _ = run(make(**kwargs), make(**kwargs).init(params), 8)
        assert jax.tree.all(jax.tree.map(jnp.array_equal, ours, theirs))
    if dtype != jnp.float64:
        return

    # changed after init (weight decay does not enter the initial state)
    changed = dict(weight_decay=0.1, **({"d_coef": 0.5} if make is ps_dasgd else {"c": 0.3}))
    injected = optax.inject_hyperparams(make)()
    state = jax.jit(injected.init)(params)
    state.hyperparams.update({k: jnp.asarray(v, dtype) for k, v in changed.items()})
    ours, _ = run(injected, state, 6)
    theirs, _ = run(make(**changed), make(**changed).init(params), 6)
    default, _ = run(make(), make().init(params), 6)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, ours, theirs))
    assert not jax.tree.all(jax.tree.map(jnp.array_equal, ours, default))  # the control


def test_inject_hyperparams_and_schedule_misuse_are_clear_errors():
    params = PARAMS
    injected = optax.inject_hyperparams(ps_dasgd)()
    state = jax.jit(injected.init)(params)
    # under jit the injected weight_decay=0 is a tracer: it may be non-zero
    with pytest.raises(ValueError, match="^params is required.*static_args='weight_decay'"):
        jax.jit(injected.update)(_grads(params, 0), state)
    static = optax.inject_hyperparams(ps_dasgd, static_args="weight_decay")()
    updates, _ = jax.jit(static.update)(_grads(params, 0), jax.jit(static.init)(params))
    assert float(jnp.abs(updates["w"]).max()) > 0  # ... and that is the way out
    # only learning_rate takes a schedule; the message names the wrapper for the others
    for make, name in ((ps_dasgd, "weight_decay"), (ps_dasgd, "d_coef"), (ps_sps, "c"),
                       (ps_sps, "eps")):
        with pytest.raises(ValueError, match=f"^{name}=.*optax.inject_hyperparams"):
            make(**{name: optax.constant_schedule(0.1)})
    # arrays are checked like numbers when their value is known
    with pytest.raises(ValueError, match="^eps=-1.0 is invalid"):
        ps_dasgd(eps=jnp.asarray(-1.0))
    with pytest.raises(ValueError, match="^cap_growth=0.5 is invalid"):
        ps_sps(cap_growth=np.float32(0.5))
    with pytest.raises(ValueError, match="^learning_rate is invalid: it must be a number or a "
                                         "0-d array"):
        ps_sps(learning_rate=jnp.ones(2))


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,kwargs,name", [
    (ps_dasgd, dict(learning_rate=-1.0), "learning_rate"),
    (ps_dasgd, dict(learning_rate=float("nan")), "learning_rate"),
    (ps_dasgd, dict(betas=(1.0, 0.999)), "betas[0]"),
    (ps_dasgd, dict(betas=(0.9, -0.1)), "betas[1]"),
    (ps_dasgd, dict(betas=0.9), "betas"),
    (ps_dasgd, dict(eps=-1e-8), "eps"),
    (ps_dasgd, dict(eps=0.0), "eps"),
    (ps_dasgd, dict(weight_decay=-0.1), "weight_decay"),
    (ps_dasgd, dict(d0=-1e-6), "d0"),
    (ps_dasgd, dict(d0=0.0), "d0"),
    (ps_dasgd, dict(d0_lr=0.0), "d0_lr"),
    (ps_dasgd, dict(d0=1e-6, d0_lr=1e-6), "d0"),
    (ps_dasgd, dict(scaling="adafactor"), "scaling"),
    (ps_dasgd, dict(d_coef=float("inf")), "d_coef"),
    (ps_dasgd, dict(growth_rate=0.5), "growth_rate"),
    (ps_dasgd, dict(scaling="adamw"), "scaling"),
    (ps_dasgd, dict(alpha_norm="max"), "alpha_norm"),
    (ps_dasgd, dict(average="yes"), "average"),
    (ps_sps, dict(c=0.0), "c"),
    (ps_sps, dict(f_star=float("nan")), "f_star"),
    (ps_sps, dict(delta=-1.0), "delta"),
    (ps_sps, dict(cap_start=-1.0), "cap_start"),
    (ps_sps, dict(cap_growth=0.9), "cap_growth"),
    (ps_sps, dict(betas=(0.9, 1.5)), "betas[1]"),
])
def test_invalid_hyperparameters_name_the_argument(make, kwargs, name):
    with pytest.raises(ValueError, match="^" + re.escape(name) + "="):
        make(**kwargs)


def test_missing_loss_and_params_are_clear_errors():
    opt = ps_sps()
    state = opt.init(PARAMS)
    with pytest.raises(ValueError, match="^value is required"):
        opt.update(_grads(PARAMS, 0), state, PARAMS)
    with pytest.raises(ValueError, match="^value must be a scalar"):
        opt.update(_grads(PARAMS, 0), state, PARAMS, value=jnp.ones(3))
    for decayed in (ps_dasgd(weight_decay=0.1), ps_sps(weight_decay=0.1, decouple=False)):
        with pytest.raises(ValueError, match="^params is required"):
            decayed.update(_grads(PARAMS, 0), decayed.init(PARAMS), value=1.0)


def test_import_without_jax_names_the_extra(monkeypatch):
    import sys

    for name in [n for n in sys.modules if n == "lrfree.jax" or n.startswith("lrfree.jax.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "jax", None)
    with pytest.raises(ImportError, match=re.escape('pip install "lrfree[jax]"')):
        import lrfree.jax  # noqa: F401


def test_docstring_examples_run():
    import doctest
    import importlib

    for name in ("lrfree.jax._ps_dasgd", "lrfree.jax._ps_sps"):
        result = doctest.testmod(importlib.import_module(name))
        assert result.attempted > 5 and result.failed == 0

"""The parameter-scaling half of the JAX PS optimizers, on pytrees (mirrors
``lrfree/optim/_scaled.py`` and ``lrfree/scaling.py``).

Per element, with ``a_k`` from the scaling and a scalar normaliser ``N``:

    alpha_k^2 = a_k / N        g'_k = g_k / alpha_k        x <- x - lam * N * m_hat_k / a_k

A step-size rule (D-Adaptation, Polyak) chooses ``lam`` from g' alone; ``lam * N`` is the
learning rate Adam would need for the same step (``effective_lr``).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrfree.optim._base import check_betas, check_choice, check_positive
from lrfree.optim._scaled import ALPHA_NORMS


# adafactor (lrfree.scaling_factored) is not ported yet
SCALINGS = ("adam", "amsgrad", "rmsprop", "adagrad", "none")


class Options(NamedTuple):
    """The options every PS transformation shares (numbers, or 0-d arrays from
    ``optax.inject_hyperparams``; the strings and flags are static)."""

    learning_rate: Any   # a number, a schedule, or a 0-d array (as all numeric options)
    beta1: float
    beta2: float
    eps: Any
    weight_decay: Any
    decouple: bool
    scaling: str
    alpha_norm: str
    average: bool
    average_power: Any
    skip_nonfinite: bool


def known(value: Any) -> Any:
    """A numeric option's value when it is known while the transformation is built: Python
    numbers and concrete arrays (as floats), None for a tracer.

    ``optax.inject_hyperparams`` calls the factory with every numeric option as a 0-d
    array; inside ``jit`` that is a tracer, whose value exists only when the step runs. The
    math takes such arrays as they are; only the checks and the choices that skip work (a
    zero weight decay, an unbounded growth rate) need the value, and with a tracer they
    take the general path."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return value.item()
    return value


def checkable(name: str, value: Any, stand_in: Any, factory: str) -> Any:
    """``value`` as the shared torch checks take it: a Python number, or the valid
    ``stand_in`` for a tracer, whose value cannot be checked before the step runs (an
    ``init`` outside ``jit`` checks the values ``inject_hyperparams`` injects)."""
    if callable(value):
        raise ValueError(
            f"{name}={value!r} is invalid: only learning_rate takes a schedule; to schedule "
            f"{name}, wrap the optimizer: optax.inject_hyperparams({factory})({name}=schedule)")
    if isinstance(value, (jax.Array, np.ndarray, np.generic)) and jnp.ndim(value) != 0:
        raise ValueError(f"{name} is invalid: it must be a number or a 0-d array; got an "
                         f"array of shape {jnp.shape(value)}")
    value_now = known(value)
    return stand_in if value_now is None and value is not None else value_now


def check_options(learning_rate: Any, betas: Any, eps: Any, weight_decay: Any,
                  decouple: bool, scaling: str, alpha_norm: str, average: bool,
                  average_power: Any, skip_nonfinite: bool, factory: str) -> Options:
    """Validate the shared options with the torch classes' checks and messages.

    Numeric options may be 0-d arrays (``optax.inject_hyperparams``); they are kept as
    given, and cast to the estimate's dtype by :func:`at_dtype` at each step."""
    if not callable(learning_rate):
        check_positive("learning_rate", checkable("learning_rate", learning_rate, 1.0,
                                                  factory), allow_zero=True)
    beta1, beta2 = check_betas(betas)
    eps_now = checkable("eps", eps, 1e-8, factory)
    check_positive("eps", eps_now, allow_zero=True)
    check_positive("weight_decay", checkable("weight_decay", weight_decay, 0.0, factory),
                   allow_zero=True)
    check_choice("scaling", scaling, SCALINGS)
    check_choice("alpha_norm", alpha_norm, ALPHA_NORMS)
    check_choice("decouple", decouple, (True, False))
    check_choice("average", average, (True, False))
    check_choice("skip_nonfinite", skip_nonfinite, (True, False))
    check_positive("average_power", checkable("average_power", average_power, 8.0, factory),
                   allow_zero=True)
    if scaling in ("adam", "amsgrad", "rmsprop") and known(eps) == 0:
        raise ValueError("eps=0 is invalid with this scaling: a zero second moment would "
                         "divide by zero; use eps > 0 (default 1e-8)")
    return Options(learning_rate, beta1, beta2, eps, weight_decay, decouple,
                   scaling, alpha_norm, average, average_power, skip_nonfinite)


def at_dtype(value: Any, dtype: Any) -> Any:
    """An array option (``optax.inject_hyperparams``) in the estimate's dtype, so that the
    state keeps its dtypes; Python numbers, None and schedules as they are."""
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return jnp.asarray(value).astype(dtype)
    return value


def options_at_dtype(opts: Options, dtype: Any) -> Options:
    return opts._replace(eps=at_dtype(opts.eps, dtype),
                         weight_decay=at_dtype(opts.weight_decay, dtype),
                         average_power=at_dtype(opts.average_power, dtype),
                         learning_rate=at_dtype(opts.learning_rate, dtype))


# ------------------------------------------------------------------ dtypes and sums
def state_dtype(dtype: Any) -> Any:
    """bf16/fp16 parameters keep float32 state (as the torch default state_dtype)."""
    return jnp.promote_types(dtype, jnp.float32)


def scalar_dtype(tree: Any) -> Any:
    """float64 if any leaf is float64 (x64 mode), else float32: the estimate's dtype."""
    dtypes = [state_dtype(leaf.dtype) for leaf in jax.tree.leaves(tree)]
    out = jnp.dtype(jnp.float32)
    for dtype in dtypes:
        out = jnp.promote_types(out, dtype)
    return out


def tree_dot(xs: Any, ys: Any, dtype: Any) -> jax.Array:
    parts = [jnp.sum(x * y).astype(dtype) for x, y in zip(jax.tree.leaves(xs),
                                                          jax.tree.leaves(ys))]
    return sum(parts, jnp.zeros((), dtype))


def zeros_tree(params: Any) -> Any:
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), state_dtype(p.dtype)), params)


def scalar(value: float, dtype: Any) -> jax.Array:
    return jnp.asarray(value, dtype)


# ------------------------------------------------------------------ state
def init_fields(params: Any, opts: Options, rule_tensors: tuple[str, ...]) -> dict[str, Any]:
    """The shared part of a PS state (moments, normaliser, counters) plus ``rule_tensors``
    (per-element state of the rule, zero)."""
    dtype = scalar_dtype(params)
    return dict(
        count=jnp.zeros((), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        skipped_steps=jnp.zeros((), jnp.int32),
        alpha_norm=scalar(1.0, dtype),
        effective_lr=scalar(0.0, dtype),
        m=zeros_tree(params) if opts.beta1 > 0 else None,
        v=zeros_tree(params) if opts.scaling != "none" else None,
        v_max=zeros_tree(params) if opts.scaling == "amsgrad" else None,
        **{name: zeros_tree(params) for name in rule_tensors},
        x_avg=jax.tree.map(lambda p: jnp.asarray(p, state_dtype(p.dtype)), params)
        if opts.average else None,
        avg_ratio=scalar(0.0, dtype),
        avg_scale=scalar(0.0, dtype),
    )


class ScaledSpace(NamedTuple):
    """One step's view of the scaled space."""

    grads: Any        # g_k (coupled weight decay included), in the state dtype
    denoms: Any       # a_k, or None for scaling="none"
    scaled: Any       # g'_k = g_k sqrt(N / a_k)
    norm: jax.Array   # N
    first: jax.Array  # whether this is the first step taken (bool)
    k: jax.Array      # the step number, 1-based, in the scalar dtype


def enter_scaled_space(grads: Any, params: Any, state: Any, opts: Options,
                       dtype: Any) -> tuple[ScaledSpace, dict[str, Any]]:
    """Count the step, update m, v (and v_max), fix N and compute g'.

    Returns the step's view and the updated shared state fields.
    """
    step = state.step + 1
    k = step.astype(dtype)
    first = state.step == 0
    grads = jax.tree.map(lambda g: g.astype(state_dtype(g.dtype)), grads)
    if not opts.decouple and known(opts.weight_decay) != 0:  # None (traced): applied
        grads = jax.tree.map(lambda g, p: g + opts.weight_decay * p.astype(g.dtype),
                             grads, params)
    m = state.m
    if opts.beta1 > 0 and m is not None:  # None: schedule-free (beta1 interpolates)
        m = jax.tree.map(lambda m_, g: opts.beta1 * m_ + (1 - opts.beta1) * g, m, grads)
    v, v_max, denoms = second_moment(grads, state.v, state.v_max, k, opts)
    norm = normaliser(grads, denoms, state.alpha_norm, first, opts, dtype)
    if denoms is None:
        scaled = grads
    else:
        root = jnp.sqrt(norm)
        scaled = jax.tree.map(lambda g, a: g / jnp.sqrt(a) * root.astype(g.dtype),
                              grads, denoms)
    fields = dict(step=step, m=m, v=v, v_max=v_max, alpha_norm=norm)
    return ScaledSpace(grads, denoms, scaled, norm, first, k), fields


def second_moment(grads: Any, v: Any, v_max: Any, k: jax.Array,
                  opts: Options) -> tuple[Any, Any, Any]:
    """(v, v_max, a_k) for the scaling (docs/algorithms.md section 2)."""
    if opts.scaling == "none":
        return v, v_max, None
    beta2, eps = opts.beta2, opts.eps
    if opts.scaling == "adagrad":
        v = jax.tree.map(lambda v_, g: v_ + g * g, v, grads)
    else:
        v = jax.tree.map(lambda v_, g: beta2 * v_ + (1 - beta2) * g * g, v, grads)
    if opts.scaling in ("adagrad", "rmsprop"):
        return v, v_max, jax.tree.map(lambda v_: jnp.sqrt(v_) + eps, v)
    correction = 1 - beta2 ** k
    v_hat = jax.tree.map(lambda v_: v_ / correction.astype(v_.dtype), v)
    if opts.scaling == "amsgrad":
        v_max = jax.tree.map(jnp.maximum, v_max, v_hat)
        v_hat = v_max
    return v, v_max, jax.tree.map(lambda v_: jnp.sqrt(v_) + eps, v_hat)


def normaliser(grads: Any, denoms: Any, previous: jax.Array, first: jax.Array,
               opts: Options, dtype: Any) -> jax.Array:
    """N: the mean of a_k over the elements whose gradient is not zero (all elements if
    every gradient is zero), frozen at the first step ("initial"), recomputed every step
    ("running"), or 1 ("none", or scaling="none")."""
    if denoms is None or opts.alpha_norm == "none":
        return scalar(1.0, dtype)

    def mean_over_live() -> jax.Array:
        live_sum = live_count = all_sum = all_count = scalar(0.0, dtype)
        for g, a in zip(jax.tree.leaves(grads), jax.tree.leaves(denoms)):
            live = g != 0
            live_sum = live_sum + jnp.sum(jnp.where(live, a, 0)).astype(dtype)
            live_count = live_count + jnp.sum(live, dtype=dtype)  # no int32 overflow
            all_sum = all_sum + jnp.sum(a).astype(dtype)
            all_count = all_count + a.size
        return jnp.where(live_count > 0, live_sum / jnp.maximum(live_count, 1),
                         all_sum / jnp.maximum(all_count, 1))

    if opts.alpha_norm == "running":
        return mean_over_live()
    # computed once: the other steps skip the pass over a
    return jax.lax.cond(first, mean_over_live, lambda: previous)


# ------------------------------------------------------------------ the step
def take_step(space: ScaledSpace, grads: Any, params: Any, state: Any, m: Any,
              lr: jax.Array, average_scale: jax.Array, opts: Options
              ) -> tuple[Any, dict[str, Any]]:
    """The optax update ``-lr (m_hat / a + wd x)`` (decoupled decay; ``lr`` = effective lr)
    in the dtype of the incoming ``grads``, and the averaging fields."""
    if opts.beta1 > 0:
        correction = 1 - opts.beta1 ** space.k
        direction = jax.tree.map(lambda m_: m_ / correction.astype(m_.dtype), m)
    else:
        direction = space.grads
    if space.denoms is not None:
        direction = jax.tree.map(jnp.divide, direction, space.denoms)
    # skipped when known to be 0; a traced decay (inject_hyperparams) is applied as it is
    decay = opts.weight_decay if opts.decouple and known(opts.weight_decay) != 0 else None

    def one(u: jax.Array, g: jax.Array, p: jax.Array) -> jax.Array:
        step = lr.astype(u.dtype) * u
        if decay is not None:
            step = step + (lr * decay).astype(u.dtype) * p.astype(u.dtype)
        return (-step).astype(g.dtype)

    updates = jax.tree.map(one, direction, grads, params if decay is not None else grads)
    fields: dict[str, Any] = dict(effective_lr=lr)
    if opts.average:
        fields.update(average(params, updates, state, space.k, average_scale, opts))
    return updates, fields


def lerp(start: jax.Array, end: jax.Array, weight: jax.Array) -> jax.Array:
    """``start + weight (end - start)``, written as torch's ``lerp`` is (ATen/native/Lerp.h):
    from the nearer end, so that a weight of 1 gives ``end`` exactly."""
    return jnp.where(jnp.abs(weight) < 0.5, start + weight * (end - start),
                     end - (end - start) * (1 - weight))


def schedule_free_weight(state: Any, lr: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """c_k = w_k / sum of w, w_k = (the largest effective lr so far)^2 (schedule-free
    AdamW's weighting; ``lrfree.optim._scaled.schedule_free_weight``); 0 while no step has
    moved. Returns (c_k, the new running maximum, the new sum)."""
    peak = jnp.maximum(state.sf_lr_max, lr)
    w = peak * peak
    total = state.sf_weight_sum + w
    positive = total > 0
    return jnp.where(positive, w / jnp.where(positive, total, 1), 0), peak, total


def take_schedule_free_step(space: ScaledSpace, grads: Any, params: Any, state: Any,
                            lr: jax.Array, opts: Options) -> tuple[Any, dict[str, Any]]:
    """The schedule-free iteration (Defazio et al. 2024) in the scaled space
    (docs/algorithms.md §4h; ``lrfree.optim._scaled.apply_schedule_free_step``), with
    ``lr`` the effective lr ``eta`` and ``params`` holding ``y``. With ``D = g / a + wd y``
    (the decoupled decay taken at y; a bias-corrected; coupled decay is already in g):

        z <- z - eta D
        x <- (1 - c) x + c z                  (never stored)
        y <- (1 - beta1) z + beta1 x  =  lerp(y - eta (1 - beta1) D, z, c)

    Returns the optax update ``y_new - y`` in each gradient's dtype (``y_new`` rounded to
    the parameter's dtype first, so that ``optax.apply_updates`` rounds once where the
    difference is exact) and the state fields z, sf_lr_max, sf_weight_sum, effective_lr.
    The arithmetic follows the torch step's order (a / eta as one divisor)."""
    beta1 = opts.beta1
    c, peak, total = schedule_free_weight(state, lr)
    # skipped when known to be 0; a traced decay (inject_hyperparams) is applied as it is
    decay = opts.weight_decay if opts.decouple and known(opts.weight_decay) != 0 else None

    def one(z: jax.Array, g: jax.Array, a: jax.Array | None, p: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
        dtype = z.dtype
        y = p.astype(dtype)
        eta = lr.astype(dtype)
        if decay is not None:  # z -= eta wd y, with y before this step
            z = z + y * (-decay * lr).astype(dtype)
        if a is None:  # scaling="none": a = 1
            z = z + (-g) * eta
        else:
            divisor = a / eta
            z = z + (-g) / divisor
        target = y
        if decay is not None:
            target = target * (1.0 - (1.0 - beta1) * decay * lr).astype(dtype)
        if a is None:
            target = target + (-(1.0 - beta1) * g) * eta
        else:
            target = target + (-(1.0 - beta1) * g) / divisor
        y_new = lerp(target, z, c.astype(dtype))
        return z, y_new.astype(p.dtype).astype(dtype) - y

    zs, treedef = jax.tree.flatten(state.z)
    denoms = [None] * len(zs) if space.denoms is None else treedef.flatten_up_to(space.denoms)
    pairs = [one(*leaves) for leaves in zip(zs, treedef.flatten_up_to(space.grads), denoms,
                                             treedef.flatten_up_to(params))]
    z = jax.tree.unflatten(treedef, [z_ for z_, _ in pairs])
    updates = jax.tree.unflatten(treedef, [u.astype(g.dtype) for (_, u), g in zip(
        pairs, treedef.flatten_up_to(grads))])
    return updates, dict(z=z, sf_lr_max=peak, sf_weight_sum=total, effective_lr=lr)


def schedule_free_average(y: Any, z: Any, beta1: jax.Array) -> Any:
    """x = (y - (1 - beta1) z) / beta1 as torch's ``opt.eval()`` computes it:
    ``lerp(y, z, 1 - 1 / beta1)`` in z's dtype, rounded to y's dtype."""
    def one(p: jax.Array, z_: jax.Array) -> jax.Array:
        weight = (1.0 - 1.0 / beta1).astype(z_.dtype)
        return lerp(jnp.asarray(p).astype(z_.dtype), z_, weight).astype(jnp.asarray(p).dtype)

    return jax.tree.map(one, y, z)


def average(params: Any, updates: Any, state: Any, k: jax.Array, scale: jax.Array,
            opts: Options) -> dict[str, Any]:
    """Fold x_k = params + updates into the weighted average (weights scale_k^2 k^p, with
    scale_k = d_k / gamma_k: the lr multiplier's decay moves the weight onto its small steps),
    keeping only the ratio W_k / w_k (as lrfree/averaging.py; it starts at 0, so the
    first step's weight is 1)."""
    shrink = (state.avg_scale / scale) ** 2 * ((k - 1) / k) ** opts.average_power
    ratio = 1.0 + state.avg_ratio * shrink
    weight = 1.0 / ratio
    x_avg = jax.tree.map(
        lambda a, p, u: a + weight.astype(a.dtype) * ((p + u).astype(a.dtype) - a),
        state.x_avg, params, updates)
    return dict(x_avg=x_avg, avg_ratio=ratio, avg_scale=scale)


def per_multiplier(scale: jax.Array, gamma: jax.Array) -> jax.Array:
    """The averaging scale d_k / gamma_k (lrfree/averaging.py), as scale * (1 / gamma).

    gamma is a compile-time constant for a Python learning rate and a traced value under
    optax.inject_hyperparams; the barrier keeps XLA from folding the constant into the
    average's later division (a product with the reciprocal: different bits), so both give
    the same average."""
    return scale * (1 / jax.lax.optimization_barrier(gamma))


def learning_rate_at(opts: Options, count: jax.Array, dtype: Any) -> jax.Array:
    rate = opts.learning_rate(count) if callable(opts.learning_rate) else opts.learning_rate
    return jnp.asarray(rate).astype(dtype)


def guarded(step: Callable[[], tuple[Any, Any]], grads: Any, state: Any, gamma: jax.Array,
            opts: Options, loss: jax.Array | None = None) -> tuple[Any, Any]:
    """Run ``step`` unless the learning rate is 0 (the torch classes freeze such a group:
    no step, no state change) or, with ``skip_nonfinite``, a gradient or the loss is not
    finite (counted in ``skipped_steps``). The schedule's ``count`` advances either way."""
    finite = jnp.asarray(True)
    if opts.skip_nonfinite:
        for g in jax.tree.leaves(grads):
            finite = finite & jnp.all(jnp.isfinite(g))
        if loss is not None:
            finite = finite & jnp.isfinite(loss)

    def skip() -> tuple[Any, Any]:
        zeros = jax.tree.map(jnp.zeros_like, grads)
        return zeros, state._replace(skipped_steps=state.skipped_steps + (~finite).astype(
            jnp.int32))

    updates, new_state = jax.lax.cond(finite & (gamma != 0), step, skip)
    return updates, new_state._replace(count=optax.safe_int32_increment(state.count))


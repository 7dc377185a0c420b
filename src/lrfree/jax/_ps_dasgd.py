"""PS-DA-SGD for optax: D-Adaptation SGD run in the parameter-scaled space of Adam."""
# No ``from __future__ import annotations``: optax reads the annotation of learning_rate
# (``optax.ScalarOrSchedule``) to know that a schedule is accepted; a string hides it.

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lrfree.jax import _scaled
from lrfree.optim._base import check_choice, check_dadapt_start


class PSDASGDState(NamedTuple):
    """State of :func:`ps_dasgd`. Scalars are 0-d arrays; log ``d`` and ``effective_lr``.

    Attributes:
        count: updates seen, including skipped ones (indexes the learning-rate schedule).
        step: steps taken (k; indexes the bias corrections).
        skipped_steps: steps skipped for a non-finite gradient.
        d: the distance estimate for the next step (never decreases).
        d_hat: the latest lower bound 2 r / ||s||.
        r: the numerator of the bound.
        grad_norm0: G0, the norm of the first non-zero scaled gradient (frozen).
        alpha_norm: N, the normaliser of the scaling.
        sq_norm_ema: EMA of ||g'||^2 (used by ``alpha_norm="running"`` only).
        live_count: elements with a non-zero first gradient (the ``d0_lr`` start).
        effective_lr: the learning rate Adam would need for the last step (lambda N).
        m, v, v_max: first and second moments (None where the options do not use them).
        s: the weighted sum of scaled gradients.
        x_avg, avg_ratio, avg_scale: the iterate average (``average=True``; else x_avg is
            None).
        z, sf_lr_max, sf_weight_sum, sf_beta1: the schedule-free iteration
            (``schedule_free=True``; else all None, so that the momentum step's state has
            the same leaves as before these fields): z, the largest effective lr so far,
            the sum of the averaging weights (that lr squared, per step) and beta1 (read by
            :func:`schedule_free_eval_params`). Then ``m`` is None: z replaces it.
    """

    count: jax.Array
    step: jax.Array
    skipped_steps: jax.Array
    d: jax.Array
    d_hat: jax.Array
    r: jax.Array
    grad_norm0: jax.Array
    alpha_norm: jax.Array
    sq_norm_ema: jax.Array
    live_count: jax.Array
    effective_lr: jax.Array
    m: Any
    v: Any
    v_max: Any
    s: Any
    x_avg: Any
    avg_ratio: jax.Array
    avg_scale: jax.Array
    # added with schedule_free (at the end, defaulted: states built without them still work)
    z: Any = None
    sf_lr_max: Any = None
    sf_weight_sum: Any = None
    sf_beta1: Any = None


def ps_dasgd(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decouple: bool = True,
    scaling: str = "adam",
    alpha_norm: str = "initial",
    d0: float | None = None,
    d_coef: float = 1.0,
    growth_rate: float = 1.5,
    average: bool = False,
    average_power: float = 8.0,
    d0_lr: float | None = None,
    *,
    schedule_free: bool = False,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
    r"""Learning-rate-free Adam: D-Adaptation SGD on the Adam-rescaled parameters.

    The optax port of :class:`lrfree.PSDASGD` (same options, defaults and trajectory,
    except ``schedule_free``, False here and "auto" in torch; see docs/jax.md). With
    ``a_k`` from the scaling (Adam: :math:`\sqrt{\hat v_k}+\epsilon`),
    the normaliser :math:`N = \mathrm{mean}(a_1)` over the elements with a non-zero first
    gradient (frozen), the scaled gradient :math:`g'_k = g_k\sqrt{N/a_k}` and
    :math:`\gamma_k` = ``learning_rate`` (a multiplier, or a schedule of the step count):

    .. math::
        G_0 = \lVert g'_1\rVert,\quad \lambda_k = d_k\gamma_k/G_0,\quad
        r_k = r_{k-1} + \lambda_k\langle g'_k, s_{k-1}\rangle,\quad
        s_k = s_{k-1} + \lambda_k g'_k,

        \hat d = 2r_k/\lVert s_k\rVert,\quad
        d_{k+1} = \max(d_k, \min(\mathrm{d\_coef}\cdot\hat d,\ \mathrm{growth\_rate}\cdot d_k)),

        u_k = -\lambda_k N\,(\hat m_k / a_k + \mathrm{wd}\cdot x_k) .

    The returned updates ``u_k`` are the whole step (estimate included): add them with
    ``optax.apply_updates``. ``state.d`` is the estimate and ``state.effective_lr``
    (:math:`\lambda_k N`) the learning rate Adam would need for the same step.

    Args:
        learning_rate: multiplier on the estimated step, a float or an optax schedule
            (default 1.0: the estimate alone). A cosine schedule is the recommended recipe.
            A step whose multiplier is 0 changes nothing (as a frozen torch param group).
        betas: (beta1, beta2) of Adam (0.9, 0.999). beta1 = 0 steps along the raw gradient.
        eps: added to ``sqrt(v_hat)`` as in Adam (1e-8).
        weight_decay: decoupled (AdamW-style, scaled by ``effective_lr``) unless
            ``decouple=False``, which adds ``weight_decay * x`` to the gradient (L2).
            Needs ``params`` in ``update``.
        scaling: the alpha rule: "adam", "amsgrad", "rmsprop", "adagrad" or "none" (then
            this is D-Adaptation SGD with Adam-style momentum).
        alpha_norm: "initial" (N frozen at the first step: the step of parameters still
            training cannot shrink when others converge), "running" (N every step, with G0
            replaced by a bias-corrected EMA of ||g'||^2), "none" (N = 1; not invariant to
            rescaling alpha: for ablations).
        d0_lr: where the estimate starts, as the first effective lr in Adam-lr units
            (default 1e-4, as :class:`lrfree.PSDASGD`): ``d_1 = d0_lr sqrt(n)``
            for the n elements with a non-zero first gradient, so the first effective lr
            is ``d0_lr`` for Adam's scaling (``a_1 = |g_1|``, eps aside), invariant to the
            scale of alpha. Taken at the first step with a non-zero gradient.
        d0: instead of ``d0_lr``, the initial distance estimate in scaled units (the
            published D-Adaptation parameter); it starts the effective lr near
            ``d0 / sqrt(n)``, a much longer warm-up on large models.
        d_coef: multiplier on the bound before it may raise ``d``; < 1 is more
            conservative (1.0).
        growth_rate: bound on the growth of ``d`` per step (default 1.5; ``inf``: the
            published rule; docs/algorithms.md §4g).
        average: keep a weighted average of the iterates in ``state.x_avg`` (weights
            (d_k/gamma_k)^2 k^p, gamma_k the lr multiplier; evaluate and export it, keep
            training from the params). Needs ``params`` in ``update``.
        average_power: p of the averaging weights (8).
        schedule_free: take the schedule-free iteration (Defazio et al. 2024) in the
            scaled space instead of the momentum step (:class:`lrfree.PSDASGD`'s option;
            docs/algorithms.md §4h): ``z`` takes plain SGD steps of
            ``effective_lr * (g / a + wd * y)`` (no momentum), ``x`` is their running
            average (weights: the largest effective lr so far, squared) and the gradient
            is taken at ``y = (1 - beta1) z + beta1 x``, which the params hold while
            training. The estimate is unchanged. No schedule is needed: leave
            ``learning_rate`` constant (a warm-up is fine). Evaluate and export
            :func:`schedule_free_eval_params` ``(state, params)``, the average x; keep
            training from the params. The state keeps ``z`` and no ``m``. Needs
            ``beta1 > 0`` and ``params`` in ``update``; not with ``average=True``.
        skip_nonfinite: a step whose gradient holds inf/NaN leaves the state unchanged,
            returns zero updates and counts ``state.skipped_steps`` (the torch default
            ``nonfinite="skip"``, without a host sync). False removes the check.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from lrfree.jax import ps_dasgd
        >>> def loss(w):
        ...     return jnp.sum((w - jnp.array([1.0, -2.0, 3.0])) ** 2)
        >>> opt = ps_dasgd(learning_rate=optax.cosine_decay_schedule(1.0, 300))
        >>> w = jnp.zeros(3)
        >>> state = opt.init(w)
        >>> @jax.jit
        ... def train_step(w, state):
        ...     updates, state = opt.update(jax.grad(loss)(w), state, w)
        ...     return optax.apply_updates(w, updates), state
        >>> for _ in range(300):
        ...     w, state = train_step(w, state)
        >>> bool(loss(w) < 1e-3), bool(state.d > 1e-6)
        (True, True)

    Failure modes: ``d`` grows over the first ~20-60 steps and never decreases; an
    overshoot stays, and without a schedule the step does not decay under gradient noise.
    Use a schedule, ``d_coef < 1`` or ``growth_rate`` (e.g. 1.02) when the estimate
    overshoots; with exactly zero gradients at the first step N is frozen at ``eps``
    (docs/failure_modes.md). Full-batch problems with Adam scaling oscillate at a constant
    ``effective_lr`` without a schedule: use one, or ``scaling="amsgrad"``.
    """
    opts = _scaled.check_options(learning_rate, betas, eps, weight_decay, decouple, scaling,
                                 alpha_norm, average, average_power, skip_nonfinite,
                                 "ps_dasgd")
    checked = [_scaled.checkable(name, value, 1.0, "ps_dasgd") for name, value in
               (("d0", d0), ("d0_lr", d0_lr), ("d_coef", d_coef), ("growth_rate", growth_rate))]
    start, start_lr = check_dadapt_start(*checked)
    # the resolved default start, or the option as given (a 0-d array stays one)
    d0 = start if d0 is None else d0
    d0_lr = start_lr if d0_lr is None else d0_lr
    check_schedule_free(schedule_free, average, opts.beta1)
    # a traced weight_decay (inject_hyperparams under jit) may be non-zero: params needed
    needs_params = average or _scaled.known(weight_decay) != 0

    def init_fn(params: Any) -> PSDASGDState:
        dtype = _scaled.scalar_dtype(params)
        zero = _scaled.scalar(0.0, dtype)
        fields = _scaled.init_fields(params, opts, ("s",))
        if schedule_free:  # z starts at the params (y = z = x), in the state dtype; no m
            fields.update(m=None, z=jax.tree.map(
                lambda p: jnp.array(p, _scaled.state_dtype(jnp.asarray(p).dtype), copy=True),
                params), sf_lr_max=zero, sf_weight_sum=zero,
                sf_beta1=_scaled.scalar(opts.beta1, dtype))
        return PSDASGDState(d=_scaled.scalar(d0, dtype), d_hat=zero, r=zero, grad_norm0=zero,
                            sq_norm_ema=zero, live_count=zero, **fields)

    def update_fn(updates: Any, state: PSDASGDState, params: Any = None,
                  **extra_args: Any) -> tuple[Any, PSDASGDState]:
        del extra_args  # accepted so ps_dasgd and ps_sps are called the same way
        if schedule_free and params is None:
            raise ValueError("params is required by ps_dasgd(schedule_free=True): the params "
                             "hold y, where the gradient is taken and z and the average "
                             "meet; call opt.update(grads, state, params)")
        if needs_params and params is None:
            raise ValueError("params is required by ps_dasgd with weight_decay or "
                             "average=True: call opt.update(grads, state, params). (Under "
                             "optax.inject_hyperparams and jit a weight_decay of 0 is not "
                             "known to be 0: pass params, or inject_hyperparams(ps_dasgd, "
                             "static_args='weight_decay').)")
        dtype = _scaled.scalar_dtype(updates)
        gamma = _scaled.learning_rate_at(opts, state.count, dtype)
        return _scaled.guarded(lambda: step(updates, state, params, gamma, dtype), updates,
                               state, gamma, opts)

    def step(grads: Any, state: PSDASGDState, params: Any, gamma: jax.Array,
             dtype: Any) -> tuple[Any, PSDASGDState]:
        opts_k = _scaled.options_at_dtype(opts, dtype)
        start_lr, coef, growth = (_scaled.at_dtype(v, dtype) for v in (d0_lr, d_coef,
                                                                       growth_rate))
        space, fields = _scaled.enter_scaled_space(grads, params, state, opts_k, dtype)
        sq_norm_loss = None
        if opts.decouple and _scaled.known(opts.weight_decay) != 0:  # None: traced
            # decoupled decay joins g' in every sum (G0, r, s) as u = wd sqrt(N a) x: the
            # decay moves the iterate, and a move s does not hold makes d_hat run away
            wd = opts_k.weight_decay
            # the loss gradient's ||g'||^2: the decay alone does not start the estimate
            sq_norm_loss = _scaled.tree_dot(space.scaled, space.scaled, dtype)
            denoms = space.denoms if space.denoms is not None else jax.tree.map(
                jnp.ones_like, space.scaled)  # scaling="none": a = 1 (and N = 1)
            space = space._replace(scaled=jax.tree.map(
                lambda g, p, a: g + (wd * jnp.sqrt(space.norm * a)).astype(g.dtype)
                * p.astype(g.dtype), space.scaled, params, denoms))
        sq_norm_g = _scaled.tree_dot(space.scaled, space.scaled, dtype)
        d, live_count = state.d, state.live_count
        if start_lr is not None:
            # d_1 = d0_lr sqrt(n): with Adam's a_1 = |g_1| over the n elements with a
            # non-zero gradient, G0 = N sqrt(n), so the first effective lr d N / G0 is d0_lr,
            # invariant to the scale of alpha. Set at the step that fixes G0 (the first
            # non-zero gradient), with n counted at the first step, as the torch class does.
            live = [jnp.sum(g != 0, dtype=dtype) for g in jax.tree.leaves(space.grads)]
            live_count = jnp.where(space.first, sum(live, _scaled.scalar(0.0, dtype)),
                                   live_count)
            d = jnp.where(state.grad_norm0 > 0, d,
                          start_lr * jnp.sqrt(jnp.maximum(live_count, 1)))
        # G0 waits for the first non-zero gradient; until then no step (not d / 0)
        g0_new = jnp.sqrt(sq_norm_g)
        if sq_norm_loss is not None:
            g0_new = jnp.where(sq_norm_loss > 0, g0_new, 0)
        g0 = jnp.where(state.grad_norm0 > 0, state.grad_norm0, g0_new)
        ema = state.sq_norm_ema
        if opts.alpha_norm == "running":
            ema = opts.beta2 * ema + (1 - opts.beta2) * sq_norm_g
            denominator = jnp.sqrt(ema / (1 - opts.beta2 ** space.k))
        else:
            denominator = g0
        lam = gamma * jnp.where(denominator > 0, d / jnp.where(denominator > 0, denominator, 1),
                                0)
        r = state.r + lam * _scaled.tree_dot(space.scaled, state.s, dtype)
        s = jax.tree.map(lambda s_, g: s_ + lam.astype(g.dtype) * g, state.s, space.scaled)
        sq_norm_s = _scaled.tree_dot(s, s, dtype)
        # ||s|| = 0 (no non-zero gradient yet) leaves the bound undefined: keep d
        d_hat = jnp.where(sq_norm_s > 0, 2 * r / jnp.sqrt(jnp.where(sq_norm_s > 0, sq_norm_s,
                                                                      1)), 0)
        bound = coef * d_hat
        if _scaled.known(growth) != float("inf"):  # None (traced): bounded, inf or not
            bound = jnp.minimum(bound, growth * d)
        if schedule_free:  # eta = lam N (lam includes gamma), as torch's effective_lr
            updates, step_fields = _scaled.take_schedule_free_step(
                space, grads, params, state, lam * space.norm, opts_k)
        else:
            updates, step_fields = _scaled.take_step(
                space, grads, params, state, fields["m"], lam * space.norm,
                _scaled.per_multiplier(d, gamma), opts_k)
        return updates, state._replace(
            d=jnp.maximum(d, bound), d_hat=d_hat, r=r, grad_norm0=g0, sq_norm_ema=ema,
            live_count=live_count, s=s, **fields, **step_fields)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def check_schedule_free(schedule_free: bool, average: bool, beta1: float) -> None:
    """The torch class's checks (``lrfree.optim.ps_dasgd.check_schedule_free``), with the
    JAX way to evaluate at the average."""
    check_choice("schedule_free", schedule_free, (True, False))
    if not schedule_free:
        return
    if average:
        raise ValueError("schedule_free=True and average=True both keep an average of the "
                         "iterates: use one (schedule_free=True evaluates at its own average, "
                         "lrfree.jax.schedule_free_eval_params(state, params))")
    if beta1 == 0:
        raise ValueError("schedule_free=True needs betas[0] > 0: beta1 is the interpolation "
                         "y = (1 - beta1) z + beta1 x (default 0.9); with 0 the average "
                         "cannot be recovered by schedule_free_eval_params")


def schedule_free_eval_params(state: Any, params: Any) -> Any:
    """The schedule-free average ``x``, the point to evaluate and export, from the state of
    :func:`ps_dasgd` with ``schedule_free=True`` and the params it trains (which hold
    ``y``): ``x = (y - (1 - beta1) z) / beta1``, computed as torch's ``opt.eval()`` does
    (``lerp(y, z, 1 - 1 / beta1)`` in the state dtype, rounded to each param's dtype).

    The signature is ``optax.contrib.schedule_free_eval_params``'s: beta1 is read from the
    state (``state.sf_beta1``). ``state`` may be the :class:`PSDASGDState` itself or any
    optax state that holds exactly one (``optax.chain``, ``optax.inject_hyperparams``,
    ``optax.MultiSteps``...). A pure function: jit it with the train step, or call it
    eagerly; training goes on from ``params`` (y), not from the result.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from lrfree.jax import ps_dasgd, schedule_free_eval_params
        >>> opt = ps_dasgd(schedule_free=True)
        >>> w = jnp.zeros(2)
        >>> state = opt.init(w)
        >>> updates, state = opt.update(jnp.array([1.0, -1.0]), state, w)
        >>> w = optax.apply_updates(w, updates)
        >>> x = schedule_free_eval_params(state, w)
        >>> bool(jnp.allclose(w, 0.1 * state.z + 0.9 * x))
        True
    """
    found = [leaf for leaf in jax.tree.leaves(
        state, is_leaf=lambda node: isinstance(node, PSDASGDState))
        if isinstance(leaf, PSDASGDState)]
    if len(found) != 1 or found[0].z is None:
        what = ("no ps_dasgd state" if not found else f"{len(found)} ps_dasgd states"
                if len(found) > 1 else "the state of ps_dasgd without schedule_free")
        raise ValueError("schedule_free_eval_params needs the state of "
                         f"ps_dasgd(schedule_free=True) (or an optax state holding exactly "
                         f"one); got {what}")
    return _scaled.schedule_free_average(params, found[0].z, found[0].sf_beta1)

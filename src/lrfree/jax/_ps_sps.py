"""PS-SPS for optax: the capped stochastic Polyak step in the parameter-scaled space of Adam."""
# No ``from __future__ import annotations``: optax reads the annotation of learning_rate
# (``optax.ScalarOrSchedule``) to know that a schedule is accepted; a string hides it.

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lrfree.jax import _scaled
from lrfree.optim._base import check_polyak_options


class PSSPSState(NamedTuple):
    """State of :func:`ps_sps`. Scalars are 0-d arrays; log ``polyak_step`` and
    ``effective_lr``.

    Attributes:
        count: updates seen, including skipped ones (indexes the learning-rate schedule).
        step: steps taken (k; indexes the bias corrections).
        skipped_steps: steps skipped for a non-finite gradient or loss.
        polyak_step: eta, the capped Polyak step of the last step.
        cap: the bound on the next step (0 until the first positive Polyak step).
        floor: the first cap; the cap never falls below it.
        alpha_norm: N, the normaliser of the scaling.
        effective_lr: the learning rate Adam would need for the last step (gamma eta N).
        m, v, v_max: first and second moments (None where the options do not use them).
        x_avg, avg_ratio, avg_scale: the iterate average (``average=True``; else x_avg is
            None).
    """

    count: jax.Array
    step: jax.Array
    skipped_steps: jax.Array
    polyak_step: jax.Array
    cap: jax.Array
    floor: jax.Array
    alpha_norm: jax.Array
    effective_lr: jax.Array
    m: Any
    v: Any
    v_max: Any
    x_avg: Any
    avg_ratio: jax.Array
    avg_scale: jax.Array


def ps_sps(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    c: float = 0.5,
    f_star: float = 0.0,
    delta: float = 1e-8,
    cap_start: float = 1e-2,
    cap_growth: float = 1.02,
    weight_decay: float = 0.0,
    decouple: bool = True,
    scaling: str = "adam",
    alpha_norm: str = "initial",
    average: bool = False,
    average_power: float = 8.0,
    *,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
    r"""Learning-rate-free Adam: the capped stochastic Polyak step on the Adam-rescaled
    parameters.

    The optax port of :class:`lrfree.PSSPS` (same options, defaults and trajectory; see
    docs/jax.md). With ``a_k`` from the scaling, :math:`N = \mathrm{mean}(a_1)` (frozen),
    :math:`g'_k = g_k\sqrt{N/a_k}`, the mini-batch loss :math:`\ell_k` (``value=``) and
    :math:`\gamma_k` = ``learning_rate``:

    .. math::
        \eta^P_k = \frac{\max(\ell_k - f^*, 0)}{c\lVert g'_k\rVert^2 + \delta},\quad
        \eta_k = \min(\eta^P_k, \mathrm{cap}_k),\quad
        \mathrm{cap}_{k+1} = \mathrm{cap\_growth}\cdot\max(\eta_k, \mathrm{floor}),

        u_k = -\gamma_k\eta_k N\,(\hat m_k / a_k + \mathrm{wd}\cdot x_k) .

    The first cap (and ``floor``) is ``cap_start`` times the first positive Polyak step, so
    training starts with small steps that grow by at most ``cap_growth`` per step. The
    returned updates are the whole step: add them with ``optax.apply_updates``.
    ``state.polyak_step`` is :math:`\eta_k`, ``state.effective_lr`` is
    :math:`\gamma_k\eta_k N`.

    The loss is required, as optax's extra argument ``value`` (as ``optax.polyak_sgd``):
    ``opt.update(grads, state, params, value=loss)``.

    Args:
        learning_rate: multiplier on the step, a float or an optax schedule (1.0). A step
            whose multiplier is 0 changes nothing (as a frozen torch param group).
        betas, eps: as Adam ((0.9, 0.999), 1e-8).
        c: the Polyak constant (0.5: the step that minimises a quadratic model's upper
            bound; smaller is more aggressive).
        f_star: a lower bound on the loss (0 for cross-entropy and squared errors).
        delta: added to the denominator so a tiny gradient gives a finite step (1e-8).
        cap_start, cap_growth: the smooth cap described above (1e-2, 1.02).
        weight_decay, decouple, scaling, alpha_norm, skip_nonfinite: as in
            :func:`lrfree.jax.ps_dasgd` (a non-finite ``value`` is skipped as well).
        average, average_power: iterate averaging in ``state.x_avg`` with weights k^p (the
            Polyak rule has no distance estimate to weight by).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from lrfree.jax import ps_sps
        >>> def loss(w):
        ...     return jnp.sum((w - jnp.array([1.0, -2.0, 3.0])) ** 2)
        >>> opt = ps_sps()
        >>> w = jnp.zeros(3)
        >>> state = opt.init(w)
        >>> @jax.jit
        ... def train_step(w, state):
        ...     value, grads = jax.value_and_grad(loss)(w)
        ...     updates, state = opt.update(grads, state, w, value=value)
        ...     return optax.apply_updates(w, updates), state
        >>> for _ in range(300):
        ...     w, state = train_step(w, state)
        >>> bool(loss(w) < 1e-3)
        True

    Failure modes: once the loss reaches ``f_star`` the step is 0 (the cap then restarts
    from its floor); ``f_star = 0`` is a loose bound for L2-regularised objectives whose
    optimum is far above 0 and overshoots (pass a better bound, or lower ``cap_growth``); a
    noisy mini-batch loss gives a noisy step, which momentum (beta1) smooths. The loss must
    be the loss at ``params`` of the same batch as ``grads``.
    """
    opts = _scaled.check_options(learning_rate, betas, eps, weight_decay, decouple, scaling,
                                 alpha_norm, average, average_power, skip_nonfinite,
                                 "ps_sps")
    check_polyak_options(*[_scaled.checkable(name, value, stand_in, "ps_sps")
                           for name, value, stand_in in (
                               ("c", c, 0.5), ("f_star", f_star, 0.0), ("delta", delta, 1e-8),
                               ("cap_start", cap_start, 1e-2), ("cap_growth", cap_growth, 1.02))])
    # a traced weight_decay (inject_hyperparams under jit) may be non-zero: params needed
    needs_params = average or _scaled.known(weight_decay) != 0

    def init_fn(params: Any) -> PSSPSState:
        zero = _scaled.scalar(0.0, _scaled.scalar_dtype(params))
        return PSSPSState(polyak_step=zero, cap=zero, floor=zero,
                          **_scaled.init_fields(params, opts, ()))

    def update_fn(updates: Any, state: PSSPSState, params: Any = None, *, value: Any = None,
                  **extra_args: Any) -> tuple[Any, PSSPSState]:
        del extra_args
        if value is None:
            raise ValueError("value is required by ps_sps: pass the mini-batch loss, "
                             "opt.update(grads, state, params, value=loss)")
        if jnp.ndim(value) != 0:
            raise ValueError(f"value must be a scalar loss; got shape {jnp.shape(value)}: "
                             "reduce it first (e.g. loss.mean())")
        if needs_params and params is None:
            raise ValueError("params is required by ps_sps with weight_decay or "
                             "average=True: call opt.update(grads, state, params, value=loss). "
                             "(Under optax.inject_hyperparams and jit a weight_decay of 0 is "
                             "not known to be 0: pass params, or inject_hyperparams(ps_sps, "
                             "static_args='weight_decay').)")
        dtype = _scaled.scalar_dtype(updates)
        loss = jnp.asarray(value).astype(dtype)
        gamma = _scaled.learning_rate_at(opts, state.count, dtype)
        return _scaled.guarded(lambda: step(updates, state, params, gamma, loss, dtype),
                               updates, state, gamma, opts, loss)

    def step(grads: Any, state: PSSPSState, params: Any, gamma: jax.Array, loss: jax.Array,
             dtype: Any) -> tuple[Any, PSSPSState]:
        opts_k = _scaled.options_at_dtype(opts, dtype)
        c_k, f_star_k, delta_k, cap_start_k, cap_growth_k = (
            _scaled.at_dtype(v, dtype) for v in (c, f_star, delta, cap_start, cap_growth))
        space, fields = _scaled.enter_scaled_space(grads, params, state, opts_k, dtype)
        sq_norm_g = _scaled.tree_dot(space.scaled, space.scaled, dtype)
        # a zero gradient says nothing about the step size: no step, and it must not become
        # the floor (loss / delta is ~1e8 times too large)
        eta_polyak = jnp.where(sq_norm_g > 0,
                               jnp.maximum(loss - f_star_k, 0) / (c_k * sq_norm_g + delta_k), 0)
        floor = jnp.where(state.floor > 0, state.floor, cap_start_k * eta_polyak)
        cap = jnp.where(state.cap > 0, state.cap, floor)
        eta = jnp.minimum(eta_polyak, cap)
        updates, step_fields = _scaled.take_step(space, grads, params, state, fields["m"],
                                                 gamma * eta * space.norm,
                                                 _scaled.per_multiplier(jnp.ones_like(eta), gamma), opts_k)
        return updates, state._replace(
            polyak_step=eta, cap=cap_growth_k * jnp.maximum(eta, floor), floor=floor,
            **fields, **step_fields)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

"""JAX/optax ports of PS-DA-SGD and PS-SPS (see docs/jax.md).

Not imported by ``import lrfree``: the library itself depends on torch only. Install the
extra to use it::

    pip install "lrfree[jax]"

    import optax
    from lrfree.jax import ps_dasgd

    opt = ps_dasgd(learning_rate=optax.cosine_decay_schedule(1.0, steps))
"""
try:
    import jax  # noqa: F401
    import optax  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised without jax installed
    raise ImportError(
        'lrfree.jax needs JAX and optax, which lrfree does not install by default: '
        'pip install "lrfree[jax]"'
    ) from error

from lrfree.jax._ps_dasgd import PSDASGDState, ps_dasgd, schedule_free_eval_params
from lrfree.jax._ps_sps import PSSPSState, ps_sps

__all__ = ["PSDASGDState", "PSSPSState", "ps_dasgd", "ps_sps", "schedule_free_eval_params"]

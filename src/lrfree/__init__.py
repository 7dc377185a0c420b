"""lrfree: learning-rate-free adaptive optimizers by parameter scaling (Suh & Seo 2024).

An adaptive method ``x -= lr * g / alpha**2`` is plain gradient descent on the network
with parameters rescaled by ``alpha``; a learning-rate-free rule for gradient descent run
in that scaled space gives a learning-rate-free adaptive method.

- :class:`PSDASGD`: D-Adaptation SGD in Adam's scaled space.
- :class:`PSSPS`: the stochastic Polyak step in Adam's scaled space.
- :class:`PSDoG`: DoG (distance over gradients) in Adam's scaled space.
- :class:`SPS`, :class:`DAdaptSGD`: the steepest-descent bases.
- :func:`ps`, :func:`create`: compose a scaling and a rule, or build one by name.
"""
from lrfree.fused import fused
from lrfree.optim import DAdaptSGD, NonFiniteError, PSDASGD, PSDoG, PSSPS, SPS
from lrfree.registry import available, create, ps
from lrfree.scaling import SCALINGS, Scaling

__version__ = "0.1.0"
__all__ = ["DAdaptSGD", "NonFiniteError", "PSDASGD", "PSDoG", "PSSPS", "SCALINGS", "SPS",
           "Scaling", "available", "create", "fused", "ps"]

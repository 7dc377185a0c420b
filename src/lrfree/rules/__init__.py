"""Step-size rules for plain gradient descent, run in the scaled space.

Each rule turns a few global sums over the (scaled) gradient into a step size, keeping
its scalars as 0-d tensors on the parameters' device so that no step needs the host.
"""
from lrfree.rules.dadapt import DAdaptEstimate
from lrfree.rules.polyak import PolyakStep

__all__ = ["DAdaptEstimate", "PolyakStep"]

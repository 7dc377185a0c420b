"""Slow, obviously-correct versions of every optimizer, in the notation of the spec.

One tensor at a time, scalars as Python floats, no fusion and no tricks: the tests run
the real optimizers against these step by step (params and state). Not for training.
"""
from lrfree.reference.dadapt_sgd import DAdaptSGDReference
from lrfree.reference.ps_dasgd import PSDASGDReference
from lrfree.reference.ps_dog import PSDoGReference
from lrfree.reference.ps_sps import PSSPSReference

__all__ = ["DAdaptSGDReference", "PSDASGDReference", "PSDoGReference", "PSSPSReference"]

"""The public optimizers: each a thin composition of a scaling and a step-size rule."""
from lrfree.optim._base import NonFiniteError
from lrfree.optim.dadapt_sgd import DAdaptSGD
from lrfree.optim.ps_dasgd import PSDASGD
from lrfree.optim.ps_dog import PSDoG
from lrfree.optim.ps_sps import PSSPS
from lrfree.optim.sps import SPS

__all__ = ["DAdaptSGD", "NonFiniteError", "PSDASGD", "PSDoG", "PSSPS", "SPS"]

"""The composition API and the name registry build the same optimizers as the classes."""
import pytest
import torch

import lrfree
from problems import flat, train


@pytest.mark.parametrize("name,cls", [("ps-dadapt", lrfree.PSDASGD), ("psdasgd", lrfree.PSDASGD),
                                      ("ps-sps", lrfree.PSSPS), ("ps-dog", lrfree.PSDoG),
                                      ("sps", lrfree.SPS), ("dadapt-sgd", lrfree.DAdaptSGD)])
def test_create_builds_the_class(name, cls):
    opt = lrfree.create(name, [torch.nn.Parameter(torch.zeros(2))])
    assert type(opt) is cls
    assert name in lrfree.available()


@pytest.mark.parametrize("rule,cls", [("dadapt", lrfree.PSDASGD), ("sps", lrfree.PSSPS),
                                      ("dog", lrfree.PSDoG)])
@pytest.mark.parametrize("scaling", ["adam", "adagrad"])
def test_ps_composition_equals_class(rule, cls, scaling):
    composed, _ = train(lambda g: lrfree.ps(g, rule=rule, scaling=scaling), 10)
    direct, _ = train(lambda g: cls(g, scaling=scaling), 10)
    assert torch.equal(flat(composed), flat(direct))


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="^name="):
        lrfree.create("adamw", [torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="^rule="):
        lrfree.ps([torch.nn.Parameter(torch.zeros(2))], rule="lbfgs")

"""The "adafactor" scaling (factored second moment, lrfree/scaling_factored.py).

Agreement with the slow reference is in test_reference_agreement.py and the torch.optim
contract in test_contract.py (both parametrised with it); here: the factored v_hat against
a direct computation from its definition, exactness on rank-one statistics (where it must
equal Adam), requirement 1, the convex battery, both code paths, checkpoints, the
non-finite skip, bad input, and the memory it saves.
"""
import io
import math

import pytest
import torch
from torch import nn

import lrfree
from lrfree.scaling import Scaling
from problems import TinyNet, batches, flat, param_groups, train

BETA2, EPS = 0.999, 1e-8
SHAPES = [(6, 5), (4, 3, 2, 2), (1, 7), (5,), ()]


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


def fresh_states(scaling, shapes, dtype=torch.float64):
    p = [torch.zeros(shape, dtype=dtype) for shape in shapes]
    return {name: [torch.zeros(scaling.state_shape(name, x.shape), dtype=dtype) for x in p]
            for name in scaling.state_names}


def run_scaling(name, grads_per_step):
    """a_k of every step from Scaling(name).denominators (multi-tensor call, per-tensor steps)."""
    scaling = Scaling(name)
    shapes = [g.shape for g in grads_per_step[0]]
    states = fresh_states(scaling, shapes)
    steps = [torch.zeros((), dtype=torch.float64) for _ in shapes]
    out = []
    for grads in grads_per_step:
        torch._foreach_add_(steps, 1.0)
        out.append(scaling.denominators(states, grads, steps, BETA2, EPS))
    return out


def direct_v_hat(history):
    """v_hat of one tensor from the whole gradient history, by the definition: EMAs written
    as explicit weighted sums, the matrix as (shape[0], rest)."""
    k = len(history)
    weights = [(1 - BETA2) * BETA2 ** (k - i) for i in range(1, k + 1)]
    if history[0].dim() < 2:
        return sum(w * g * g for w, g in zip(weights, history)) / (1 - BETA2 ** k)
    squares = [(g * g).reshape(g.shape[0], -1) for g in history]
    rows = sum(w * s.mean(1) for w, s in zip(weights, squares))
    cols = sum(w * s.mean(0) for w, s in zip(weights, squares))
    v_hat = torch.outer(rows, cols) / rows.mean() / (1 - BETA2 ** k)
    return v_hat.reshape(history[0].shape)


def test_v_hat_equals_direct_computation():
    g = torch.Generator().manual_seed(0)
    steps = [[torch.randn(s, generator=g, dtype=torch.float64) * 10.0 ** e
              for s, e in zip(SHAPES, (-2, 0, 1, 0, 2))] for _ in range(7)]
    for k, a_k in enumerate(run_scaling("adafactor", steps), start=1):
        for i, a in enumerate(a_k):
            expected = torch.sqrt(direct_v_hat([step[i] for step in steps[:k]])) + EPS
            assert a.shape == SHAPES[i]
            assert rel(a, expected) < 1e-12, (k, SHAPES[i])


def test_state_is_factored():
    scaling = Scaling("adafactor")
    assert scaling.state_shape("v_row", torch.Size((4, 3, 2, 2))) == (4,)
    assert scaling.state_shape("v_col", torch.Size((4, 3, 2, 2))) == (12,)
    assert scaling.state_shape("v", torch.Size((4, 3, 2, 2))) == ()
    assert scaling.state_shape("v", torch.Size((5,))) == (5,)
    assert scaling.state_shape("v_row", torch.Size((5,))) == ()
    assert scaling.state_shape("m", torch.Size((4, 3))) == (4, 3)


def rank_one_gradients(fixed):
    """g_k = outer(u_k, w) (fixed="cols") or outer(u, w_k) (fixed="rows"), so every EMA of
    g^2 is an outer product and the factorisation is exact."""
    g = torch.Generator().manual_seed(1)
    u = torch.randn(6, generator=g, dtype=torch.float64)
    w = torch.randn(12, generator=g, dtype=torch.float64)
    steps = []
    for _ in range(6):
        fresh_u, fresh_w = (torch.randn(n, generator=g, dtype=torch.float64) for n in (6, 12))
        left, right = (fresh_u, w) if fixed == "cols" else (u, fresh_w)
        outer = torch.outer(left, right)
        steps.append([outer, outer.reshape(6, 3, 2, 2), torch.randn(4, generator=g,
                                                                     dtype=torch.float64)])
    return steps


@pytest.mark.parametrize("fixed", ["cols", "rows"])
def test_rank_one_statistics_are_exact(fixed):
    steps = rank_one_gradients(fixed)
    for a_factored, a_adam in zip(run_scaling("adafactor", steps), run_scaling("adam", steps)):
        for x, y in zip(a_factored, a_adam):
            assert rel(x, y) < 1e-12


def test_general_statistics_are_not_adam():
    """The exactness test can fail: on full-rank gradients the two scalings differ."""
    g = torch.Generator().manual_seed(2)
    steps = [[torch.randn(6, 12, generator=g, dtype=torch.float64)] for _ in range(3)]
    assert rel(run_scaling("adafactor", steps)[-1][0], run_scaling("adam", steps)[-1][0]) > 0.1


@pytest.mark.parametrize("cls", [lrfree.PSDASGD, lrfree.PSSPS, lrfree.PSDoG])
@pytest.mark.parametrize("foreach", [True, False])
def test_rank_one_gradients_give_adams_trajectory(cls, foreach):
    """A linear loss <G_k, W> with rank-one G_k (sharing one factor): every PS optimizer
    takes the same steps with adafactor as with adam."""
    def trajectory(scaling):
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(6, 3, 2, 2, dtype=torch.float64))
        b = nn.Parameter(torch.randn(4, dtype=torch.float64))
        opt = cls([w, b], scaling=scaling, foreach=foreach)
        for grads in rank_one_gradients("cols"):
            w.grad, b.grad = grads[1].clone(), grads[2].clone()
            opt.step(loss=2.0 + float((w.detach() * grads[1]).sum().tanh()))
        return torch.cat([w.detach().reshape(-1), b.detach()])

    assert rel(trajectory("adafactor"), trajectory("adam")) < 1e-12


# Requirement 1 (alpha x c) and the loss x c symmetry for adafactor are parametrised in
# tests/test_reductions_and_invariance.py beside Adam's.


@pytest.mark.parametrize("scale", [1.0, 1e-2, 1e2])
@pytest.mark.parametrize("kind", ["least_squares", "logistic"])
@pytest.mark.parametrize("cls", [lrfree.PSDASGD, lrfree.PSSPS])
def test_convex_battery(cls, kind, scale):
    """The protocol of test_convex_battery.py (the logistic weight, 65 x 10, is factored;
    the least-squares one, 65 x 1, is exactly Adam)."""
    from test_convex_battery import TOL, suboptimality
    gap = suboptimality(lambda p: cls(p, scaling="adafactor"), kind, scale)
    assert -1e-12 <= gap <= TOL, f"relative suboptimality {gap:.3g}"


class MixedNet(nn.Module):
    """A conv kernel, a matrix, vectors and a matrix with a single row."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 5)
        self.row = nn.Parameter(torch.randn(1, 5) / 10)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1)) + self.row


def mixed_run(opt_fn, steps, net=None, opt=None, start=0):
    net = net or MixedNet().double()
    opt = opt or opt_fn(net)
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64)
        y = torch.randint(0, 5, (8,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step(loss=loss)
    return net, opt


@pytest.mark.parametrize("cls,kw", [(lrfree.PSDASGD, {"d0": 1e-2}), (lrfree.PSSPS, {}),
                                    (lrfree.PSDoG, {"reps_rel": 1e-2})])
def test_foreach_matches_per_tensor(cls, kw):
    a, opt_a = mixed_run(lambda n: cls(n.parameters(), scaling="adafactor", foreach=True,
                                       **kw), 8)
    b, opt_b = mixed_run(lambda n: cls(n.parameters(), scaling="adafactor", foreach=False,
                                       **kw), 8)
    assert rel(flat(a), flat(b)) < 1e-12 and rel(flat(a), flat(MixedNet().double())) > 1e-3
    for pa, pb in zip(a.parameters(), b.parameters()):
        for key, value in opt_b.state[pb].items():
            torch.testing.assert_close(opt_a.state[pa][key], value, rtol=1e-12, atol=0)


def test_bitwise_resume_across_shapes():
    def make(n):
        return lrfree.PSDASGD(n.parameters(), scaling="adafactor", weight_decay=0.1)

    straight, _ = mixed_run(make, 12)
    net, opt = mixed_run(make, 5)
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    net2 = MixedNet().double()
    net2.load_state_dict(saved["model"])
    opt2 = make(net2)
    opt2.load_state_dict(saved["opt"])
    assert opt2.state[net2.conv.weight]["v_col"].shape == (2 * 3 * 3,)
    resumed, _ = mixed_run(make, 7, net=net2, opt=opt2, start=5)
    assert torch.equal(flat(resumed), flat(straight))


def test_checkpoint_of_other_scaling_or_shape_is_a_clear_error():
    _, opt = mixed_run(lambda n: lrfree.PSDASGD(n.parameters(), scaling="adafactor"), 2)
    saved = opt.state_dict()
    with pytest.raises(ValueError, match="scaling='adafactor'"):
        lrfree.PSDASGD(MixedNet().double().parameters()).load_state_dict(saved)
    wrong = [nn.Parameter(torch.zeros(4, 1, 3, 3, dtype=torch.float64)),
             *list(MixedNet().double().parameters())[1:]]
    with pytest.raises(ValueError, match="shape"):
        lrfree.PSDASGD(wrong, scaling="adafactor").load_state_dict(saved)


@pytest.mark.parametrize("cls", [lrfree.PSDASGD, lrfree.PSSPS])
def test_nonfinite_step_leaves_state_bitwise_unchanged(cls):
    net = TinyNet()
    opt = cls(param_groups(net), scaling="adafactor")
    x, y = batches()
    for step in range(4):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x[:32], step), y[:32])
        loss.backward()
        opt.step(loss=loss)
    before = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in net.parameters()}
    params = flat(net).clone()
    opt.zero_grad()
    loss = nn.functional.cross_entropy(net(x[:32], 4), y[:32])
    loss.backward()
    net.w1.grad[2, 3] = float("nan")
    opt.step(loss=loss)
    assert torch.equal(flat(net), params) and opt.param_groups[0]["skipped_steps"] == 1
    for p in net.parameters():
        for key, value in opt.state[p].items():
            assert torch.equal(value, before[id(p)][key]), key


def test_unknown_scaling_names_the_valid_ones():
    with pytest.raises(ValueError, match="^scaling=.*adafactor"):
        lrfree.PSDASGD([nn.Parameter(torch.zeros(2, 2))], scaling="factored")
    assert "adafactor" in lrfree.SCALINGS
    for cls in (lrfree.PSDASGD, lrfree.PSSPS, lrfree.PSDoG):
        with pytest.raises(ValueError, match="eps=0"):  # a zero v_hat would divide by zero
            cls([nn.Parameter(torch.zeros(2, 2))], scaling="adafactor", eps=0.0)


@pytest.mark.parametrize("rule,cls", [("dadapt", lrfree.PSDASGD), ("sps", lrfree.PSSPS),
                                      ("dog", lrfree.PSDoG)])
def test_every_rule_composes_with_it(rule, cls):
    composed, _ = train(lambda g: lrfree.ps(g, rule=rule, scaling="adafactor"), 10)
    direct, _ = train(lambda g: cls(g, scaling="adafactor"), 10)
    adam, _ = train(lambda g: cls(g), 10)
    assert torch.equal(flat(composed), flat(direct)) and not torch.equal(flat(direct), flat(adam))


def test_zero_matrix_gradient_gives_adams_eps_not_nan():
    """Behind a zero-initialised head the first matrix's first gradient is exactly zero:
    mean(r) = 0, and v_hat must be 0 (a = eps, as Adam), not 0 / 0."""
    for foreach in (True, False):
        net = TinyNet(zero_head=True)
        opt = lrfree.PSDASGD(param_groups(net), scaling="adafactor", foreach=foreach)
        x, y = batches()
        for step in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[:16], step), y[:16]).backward()
            opt.step()
        assert torch.isfinite(flat(net)).all()
        assert float(opt.state[net.w1]["v_row"].abs().sum()) > 0


def state_bytes_per_param(opt, model):
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items()
                if k != "step")
    return state / sum(p.numel() for p in model.parameters())


def transformer_like():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(1000, 128),
                         nn.TransformerEncoder(nn.TransformerEncoderLayer(
                             128, 4, 512, batch_first=True, dropout=0.0), 2),
                         nn.Linear(128, 1000))


@pytest.mark.parametrize("cls,adam_bytes,factored_bytes", [(lrfree.PSDASGD, 12, 8.2),
                                                           (lrfree.PSSPS, 8, 4.2)])
def test_memory_per_parameter(cls, adam_bytes, factored_bytes):
    """Measured state bytes per parameter (float32, without the 0-d step count) on a
    two-layer transformer encoder with embedding and head (0.65M parameters): the second
    moment of every matrix shrinks to its row and column vectors."""
    measured = {}
    for scaling in ("adam", "adafactor"):
        model = transformer_like()
        opt = cls(model.parameters(), scaling=scaling)
        tokens = torch.randint(0, 1000, (2, 16))
        loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
        loss.backward()
        opt.step(loss=loss)
        measured[scaling] = state_bytes_per_param(opt, model)
    assert measured["adam"] == pytest.approx(adam_bytes, abs=1e-9)
    assert measured["adafactor"] < factored_bytes, measured
    assert math.isfinite(float(opt.param_groups[0]["effective_lr"]))


def test_one_host_sync_per_step_and_a_fullgraph_compiled_step():
    """The factored part loops over tensors but reads nothing back to the host: one sync
    (the non-finite check) per step, none unchecked, and ``lrfree.fused`` compiles it
    without a graph break to the eager result."""
    from test_speed_paths import MixedNet as SpeedNet
    from test_speed_paths import compiled_step, count_host_syncs, data
    for foreach in (True, False):
        net = SpeedNet()
        opt = lrfree.PSDASGD(net.parameters(), scaling="adafactor", foreach=foreach)
        for step in range(3):
            x, y = data(step)
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            with count_host_syncs() as calls:
                opt.step()
            assert len(calls) == 1, calls
    torch._dynamo.reset()
    net_c, net_e = SpeedNet(), SpeedNet()
    net_e.load_state_dict(net_c.state_dict())
    opt_c, opt_e = (lrfree.PSSPS(n.parameters(), nonfinite="unchecked", scaling="adafactor")
                    for n in (net_c, net_e))
    step, counter = compiled_step(opt_c)
    for k in range(4):
        for net, opt, fn in ((net_c, opt_c, step), (net_e, opt_e, opt_e.step)):
            x, y = data(k)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            fn(loss=loss.detach())
    assert counter.frame_count == 2
    assert max(rel(a, b) for a, b in zip(net_c.parameters(), net_e.parameters())) < 1e-6

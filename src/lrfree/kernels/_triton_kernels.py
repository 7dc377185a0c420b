"""The Triton kernels of :mod:`lrfree.kernels.triton_step` (imported only where triton is).

Every launch covers all tensors of a bucket: program ``pid`` reads which tensor it works on
(``block_tensor[pid]``) and where in it (``block_start[pid]``), then that tensor's data
pointers from ``table`` (rows x, g, m, v, s; one int64 address per tensor), as torch's
``multi_tensor_apply`` does. A full block takes the unmasked path (vector loads when the
host found every address 16-byte aligned: ``ALIGNED``), the last block of a tensor the
masked one.

The arithmetic mirrors the eager foreach step operation by operation (the same per-tensor
factors, lerp's two forms, ``addcdiv``'s division), with IEEE-rounded square roots and
divisions, so the two agree to float rounding (FMA contraction and summation order).
"""
import triton
import triton.language as tl

# rows of the pointer table (globals a kernel reads must be constexpr)
X, G, M, V, S = (tl.constexpr(i) for i in range(5))
# the group's options: gamma (lr), beta1, 1 - beta1, beta2, 1 - beta2, eps, weight_decay,
# in one small tensor of the parameters' dtype per bucket
GAMMA, BETA1, W1, BETA2, W2, EPS, WD = (tl.constexpr(i) for i in range(7))
N_OPTIONS = 7


@triton.jit
def _sqrt(x, IS64: tl.constexpr):
    if IS64:
        return tl.sqrt(x)  # float64: always the IEEE square root
    else:
        return tl.sqrt_rn(x)  # tl.sqrt may be the approximation in float32


@triton.jit
def _div(x, y, IS64: tl.constexpr):
    if IS64:
        return x / y  # float64: always IEEE division
    else:
        return tl.div_rn(x, y)  # "/" is the 2-ulp approximation in float32


@triton.jit
def _pointer(table, row, t, n_tensors, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    ptr = tl.load(table + row * n_tensors + t).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def _load(ptr, offs, n, MASKED: tl.constexpr):
    if MASKED:
        return tl.load(ptr + offs, mask=offs < n, other=0.0)
    else:
        return tl.load(ptr + offs)


@triton.jit
def _store(ptr, offs, n, value, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptr + offs, value, mask=offs < n)
    else:
        tl.store(ptr + offs, value)


@triton.jit
def _locate(block_tensor, block_start, numels, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    start = tl.multiple_of(tl.load(block_start + pid), BLOCK)
    n = tl.load(numels + t)
    return pid, t, start + tl.arange(0, BLOCK), n, start + BLOCK <= n


@triton.jit
def _moments(x, g, v, opt_ptr, rb2, COUPLED: tl.constexpr, IS64: tl.constexpr):
    """Coupled decay, v's update and the denominator d = sqrt(v) + eps sqrt(1 - beta2^k)
    (a = d / sqrt(1 - beta2^k), as Scaling.factored_denominators)."""
    if COUPLED:
        g = g + tl.load(opt_ptr + WD) * x
    v = v * tl.load(opt_ptr + BETA2) + tl.load(opt_ptr + W2) * g * g
    d = _sqrt(v, IS64) + tl.load(opt_ptr + EPS) * rb2
    return g, v, d


@triton.jit
def _iterate(x, g, m, d, opt_ptr, lr, rb2, bc1, MOMENTUM: tl.constexpr,
             DECOUPLED: tl.constexpr, IS64: tl.constexpr):
    """m's update and x <- x (1 - lr wd) - lr m_hat / a, as the eager apply_step."""
    if MOMENTUM:
        w = tl.load(opt_ptr + W1)
        diff = g - m
        m = tl.where(w < 0.5, m + w * diff, g - diff * (1.0 - w))  # torch.lerp's two forms
        direction = m
    else:
        direction = g
    scale = -lr
    if MOMENTUM:
        scale = _div(scale, bc1, IS64)
    scale = _div(scale, _div(1.0, rb2, IS64), IS64)
    if DECOUPLED:
        x = x * (1.0 - lr * tl.load(opt_ptr + WD))
    x = x + _div(direction, _div(d, scale, IS64), IS64)
    return x, m


@triton.jit
def _psdasgd_block(table, n_tensors, t, offs, n, pid, opt_ptr, lam, norm, rb2, bc1,
                   partial_ptr, DTYPE: tl.constexpr, IS64: tl.constexpr,
                   MOMENTUM: tl.constexpr, DECOUPLED: tl.constexpr, COUPLED: tl.constexpr,
                   ALIGNED: tl.constexpr, MASKED: tl.constexpr):
    x_ptr = _pointer(table, X, t, n_tensors, DTYPE, ALIGNED)
    g_ptr = _pointer(table, G, t, n_tensors, DTYPE, ALIGNED)
    v_ptr = _pointer(table, V, t, n_tensors, DTYPE, ALIGNED)
    s_ptr = _pointer(table, S, t, n_tensors, DTYPE, ALIGNED)
    x = _load(x_ptr, offs, n, MASKED)
    g = _load(g_ptr, offs, n, MASKED)
    v = _load(v_ptr, offs, n, MASKED)
    s = _load(s_ptr, offs, n, MASKED)
    g, v, d = _moments(x, g, v, opt_ptr, rb2, COUPLED, IS64)
    # g' = coef * scaled, coef = sqrt(N / factor), factor = 1 / sqrt(1 - beta2^k)
    factor = _div(1.0, rb2, IS64)
    coef = _sqrt(_div(norm, factor, IS64), IS64)
    scaled = _div(1.0, _sqrt(d, IS64), IS64) * g
    if MASKED:  # masked lanes loaded zeros; keep them out of the sums all the same
        scaled = tl.where(offs < n, scaled, 0.0)
    # the loss gradient's ||g'||^2 (G0 waits for it to be non-zero)
    sq_loss = tl.sum(scaled * scaled, axis=0) * coef * coef
    if DECOUPLED:  # + u = wd sqrt(N a) x, see ps_dasgd.add_decoupled_decay
        scaled = scaled + _sqrt(d, IS64) * (factor * tl.load(opt_ptr + WD)) * x
        sq = tl.sum(scaled * scaled, axis=0) * coef * coef
    else:
        sq = sq_loss
    gamma = tl.load(opt_ptr + GAMMA)
    # the estimate's sums, before s moves: gamma <g', s>, ||g'||^2, gamma^2 ||g'||^2,
    # ||s||^2, and the loss gradient's ||g'||^2
    tl.store(partial_ptr + pid * 5, tl.sum(scaled * s, axis=0) * coef * gamma)
    tl.store(partial_ptr + pid * 5 + 1, sq)
    tl.store(partial_ptr + pid * 5 + 2, gamma * gamma * sq)
    tl.store(partial_ptr + pid * 5 + 3, tl.sum(s * s, axis=0))
    tl.store(partial_ptr + pid * 5 + 4, sq_loss)
    step = lam * gamma
    s = s + (step * coef) * scaled
    if MOMENTUM:
        m_ptr = _pointer(table, M, t, n_tensors, DTYPE, ALIGNED)
        m = _load(m_ptr, offs, n, MASKED)
    else:
        m = g
    x, m = _iterate(x, g, m, d, opt_ptr, step * norm, rb2, bc1, MOMENTUM, DECOUPLED, IS64)
    if MOMENTUM:
        _store(m_ptr, offs, n, m, MASKED)
    _store(x_ptr, offs, n, x, MASKED)
    _store(v_ptr, offs, n, v, MASKED)
    _store(s_ptr, offs, n, s, MASKED)


@triton.jit
def psdasgd_kernel(table, block_tensor, block_start, numels, powers, opt_ptr, d_ptr, g0_ptr,
                   norm_ptr, partial_ptr, n_tensors, DTYPE: tl.constexpr, IS64: tl.constexpr,
                   MOMENTUM: tl.constexpr, DECOUPLED: tl.constexpr, COUPLED: tl.constexpr,
                   ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """PS-DA-SGD's whole element pass: reads x, g, m, v, s once, writes x, m, v, s, and
    this block's five partial sums of the estimate (``partial_ptr``: [blocks, 5])."""
    pid, t, offs, n, full = _locate(block_tensor, block_start, numels, BLOCK)
    # powers: [beta1^k; beta2^k] for each tensor's own step count k
    bc1 = 1.0 - tl.load(powers + t)
    rb2 = _sqrt(1.0 - tl.load(powers + n_tensors + t), IS64)
    lam = base_step(tl.load(d_ptr), tl.load(g0_ptr), IS64)  # d_k / G0, known before the pass
    norm = tl.load(norm_ptr)
    if full:
        _psdasgd_block(table, n_tensors, t, offs, n, pid, opt_ptr, lam, norm, rb2, bc1,
                       partial_ptr, DTYPE, IS64, MOMENTUM, DECOUPLED, COUPLED, ALIGNED, False)
    else:
        _psdasgd_block(table, n_tensors, t, offs, n, pid, opt_ptr, lam, norm, rb2, bc1,
                       partial_ptr, DTYPE, IS64, MOMENTUM, DECOUPLED, COUPLED, ALIGNED, True)


@triton.jit
def _pssps_norm_block(table, n_tensors, t, offs, n, pid, opt_ptr, norm, rb2, partial_ptr,
                      DTYPE: tl.constexpr, IS64: tl.constexpr, COUPLED: tl.constexpr,
                      ALIGNED: tl.constexpr, MASKED: tl.constexpr):
    g = _load(_pointer(table, G, t, n_tensors, DTYPE, ALIGNED), offs, n, MASKED)
    if COUPLED:
        x = _load(_pointer(table, X, t, n_tensors, DTYPE, ALIGNED), offs, n, MASKED)
    else:
        x = g
    v_ptr = _pointer(table, V, t, n_tensors, DTYPE, ALIGNED)
    v = _load(v_ptr, offs, n, MASKED)
    g, v, d = _moments(x, g, v, opt_ptr, rb2, COUPLED, IS64)
    quotient = _div(g, d, IS64) * g
    if MASKED:
        quotient = tl.where(offs < n, quotient, 0.0)
    # ||g'||^2 = (N / factor) <g / d, g>, as _scaled.sq_norm_scaled
    weight = _div(norm, _div(1.0, rb2, IS64), IS64)
    tl.store(partial_ptr + pid, tl.sum(quotient, axis=0) * weight)
    _store(v_ptr, offs, n, v, MASKED)


@triton.jit
def pssps_norm_kernel(table, block_tensor, block_start, numels, powers, opt_ptr, norm_ptr,
                      partial_ptr, n_tensors, DTYPE: tl.constexpr, IS64: tl.constexpr,
                      COUPLED: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """PS-SPS's first pass: v's update and this block's part of ||g'||^2 (reads g, v and,
    with coupled decay, x; writes v)."""
    pid, t, offs, n, full = _locate(block_tensor, block_start, numels, BLOCK)
    rb2 = _sqrt(1.0 - tl.load(powers + n_tensors + t), IS64)
    norm = tl.load(norm_ptr)
    if full:
        _pssps_norm_block(table, n_tensors, t, offs, n, pid, opt_ptr, norm, rb2, partial_ptr,
                          DTYPE, IS64, COUPLED, ALIGNED, False)
    else:
        _pssps_norm_block(table, n_tensors, t, offs, n, pid, opt_ptr, norm, rb2, partial_ptr,
                          DTYPE, IS64, COUPLED, ALIGNED, True)


@triton.jit
def _pssps_step_block(table, n_tensors, t, offs, n, opt_ptr, lr, rb2, bc1,
                      DTYPE: tl.constexpr, IS64: tl.constexpr, MOMENTUM: tl.constexpr,
                      DECOUPLED: tl.constexpr, COUPLED: tl.constexpr, ALIGNED: tl.constexpr,
                      MASKED: tl.constexpr):
    x_ptr = _pointer(table, X, t, n_tensors, DTYPE, ALIGNED)
    x = _load(x_ptr, offs, n, MASKED)
    g = _load(_pointer(table, G, t, n_tensors, DTYPE, ALIGNED), offs, n, MASKED)
    v = _load(_pointer(table, V, t, n_tensors, DTYPE, ALIGNED), offs, n, MASKED)
    if COUPLED:
        g = g + tl.load(opt_ptr + WD) * x
    d = _sqrt(v, IS64) + tl.load(opt_ptr + EPS) * rb2  # v is this step's (first pass)
    if MOMENTUM:
        m_ptr = _pointer(table, M, t, n_tensors, DTYPE, ALIGNED)
        m = _load(m_ptr, offs, n, MASKED)
    else:
        m = g
    x, m = _iterate(x, g, m, d, opt_ptr, lr, rb2, bc1, MOMENTUM, DECOUPLED, IS64)
    if MOMENTUM:
        _store(m_ptr, offs, n, m, MASKED)
    _store(x_ptr, offs, n, x, MASKED)


@triton.jit
def pssps_step_kernel(table, block_tensor, block_start, numels, powers, opt_ptr, eta_ptr,
                      norm_ptr, n_tensors, DTYPE: tl.constexpr, IS64: tl.constexpr,
                      MOMENTUM: tl.constexpr, DECOUPLED: tl.constexpr, COUPLED: tl.constexpr,
                      ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """PS-SPS's second pass, once the Polyak step eta is known: m's update and the step
    with lr = eta gamma N (reads x, g, m, v; writes x, m)."""
    pid, t, offs, n, full = _locate(block_tensor, block_start, numels, BLOCK)
    bc1 = 1.0 - tl.load(powers + t)
    rb2 = _sqrt(1.0 - tl.load(powers + n_tensors + t), IS64)
    lr = tl.load(eta_ptr) * tl.load(opt_ptr + GAMMA) * tl.load(norm_ptr)
    if full:
        _pssps_step_block(table, n_tensors, t, offs, n, opt_ptr, lr, rb2, bc1, DTYPE, IS64,
                          MOMENTUM, DECOUPLED, COUPLED, ALIGNED, False)
    else:
        _pssps_step_block(table, n_tensors, t, offs, n, opt_ptr, lr, rb2, bc1, DTYPE, IS64,
                          MOMENTUM, DECOUPLED, COUPLED, ALIGNED, True)


# ------------------------------------------------------------------ scalar rules
# One program each, on 0-d tensors: the estimate's update in one launch where the eager
# step takes ~30 small ones. Constants (d0_lr, d_coef, ...) come in a small tensor of the
# state dtype (a Python float argument would be a float32 scalar and round float64 runs).
# Outputs are fresh tensors, as the eager step's are.
D0_LR, D_COEF, GROWTH = (tl.constexpr(i) for i in range(3))
F_STAR, C, DELTA, CAP_START, CAP_GROWTH = (tl.constexpr(i) for i in range(5))


@triton.jit
def base_step(d, g0, IS64: tl.constexpr):
    """lambda / gamma = d / G0 (0 before G0 is fixed), as DAdaptEstimate.base_step."""
    return tl.where(g0 > 0, _div(d, tl.where(g0 > 0, g0, 1.0), IS64), 0.0)


@triton.jit
def dadapt_kernel(sums, rule_ptr, d_ptr, g0_ptr, r_ptr, step_ptr, count_ptr, d_out, d_hat_out,
                  r_out, g0_out, step_out, lam_out, d_used_out, IS64: tl.constexpr,
                  START: tl.constexpr, DECAYED: tl.constexpr, GROWTH_BOUND: tl.constexpr):
    """PS-DA-SGD's scalars after the pass, from the five sums (gamma <g', s>, ||g'||^2,
    gamma^2 ||g'||^2, ||s||^2, the loss gradient's ||g'||^2): the start of d, G0, then
    DAdaptEstimate.update, in the eager step's order of operations."""
    dot = tl.load(sums)
    sq = tl.load(sums + 1)
    sq_weighted = tl.load(sums + 2)
    sq_s = tl.load(sums + 3)
    d = tl.load(d_ptr)
    g0 = tl.load(g0_ptr)
    lam = base_step(d, g0, IS64)  # the pass's lambda: taken before G0 may be fixed
    if START:  # d_1 = d0_lr sqrt(n) at the step that fixes G0
        start = tl.load(rule_ptr + D0_LR) * _sqrt(tl.maximum(tl.load(count_ptr), 1.0), IS64)
        d = tl.where(g0 > 0, d, start)
    fresh = _sqrt(sq, IS64)
    if DECAYED:  # the decay alone does not fix G0
        fresh = tl.where(tl.load(sums + 4) > 0, fresh, 0.0)
    g0 = tl.where(g0 > 0, g0, fresh)
    r = tl.load(r_ptr) + lam * dot
    sq_s_new = sq_s + 2.0 * lam * dot + lam * lam * sq_weighted
    positive = sq_s_new > 0
    d_hat = tl.where(positive, _div(2.0 * r, _sqrt(tl.where(positive, sq_s_new, 1.0), IS64),
                                    IS64), 0.0)
    bound = tl.load(rule_ptr + D_COEF) * d_hat
    if GROWTH_BOUND:
        bound = tl.minimum(bound, tl.load(rule_ptr + GROWTH) * d)
    tl.store(d_out, tl.maximum(d, bound))
    tl.store(d_hat_out, d_hat)
    tl.store(r_out, r)
    tl.store(g0_out, g0)
    tl.store(step_out, tl.load(step_ptr) + 1.0)
    tl.store(lam_out, lam)
    tl.store(d_used_out, d)


@triton.jit
def polyak_kernel(sq_ptr, loss_ptr, rule_ptr, cap_ptr, floor_ptr, step_ptr, eta_out, cap_out,
                  floor_out, step_out, IS64: tl.constexpr):
    """PS-SPS's step from ||g'||^2 and the loss, as PolyakStep.update."""
    sq = tl.load(sq_ptr)
    excess = tl.maximum(tl.load(loss_ptr) - tl.load(rule_ptr + F_STAR), 0.0)
    eta_polyak = tl.where(sq > 0, _div(excess, tl.load(rule_ptr + C) * sq
                                       + tl.load(rule_ptr + DELTA), IS64), 0.0)
    floor = tl.load(floor_ptr)
    floor = tl.where(floor > 0, floor, tl.load(rule_ptr + CAP_START) * eta_polyak)
    cap = tl.load(cap_ptr)
    cap = tl.where(cap > 0, cap, floor)
    eta = tl.minimum(eta_polyak, cap)
    tl.store(eta_out, eta)
    tl.store(cap_out, tl.load(rule_ptr + CAP_GROWTH) * tl.maximum(eta, floor))
    tl.store(floor_out, floor)
    tl.store(step_out, tl.load(step_ptr) + 1.0)

// One-pass CPU step of lrfree.PSDASGD and two-pass step of lrfree.PSSPS (steady state:
// scaling="adam", alpha_norm="initial", no averaging). Built on first use by
// lrfree/kernels/cpu.py with torch.utils.cpp_extension.load_inline.
//
// Per element (T = float or double), with the per-tensor constants of the step count k:
//   g    <- g + wd p                       (coupled weight decay only)
//   v    <- beta2 v + (1 - beta2) g^2
//   m    <- lerp(m, g, 1 - beta1)          (beta1 = 0: no m, the direction is g)
//   d    =  sqrt(v) + eps sqrt(1 - beta2^k)        a = d / sqrt(1 - beta2^k)
//   q    =  g / sqrt(d)                    g' = sqrt(N sqrt(1 - beta2^k)) q
//   p    <- p (1 - lr wd) - lr / ((1 - beta1^k) factor) m / d
// PSDASGD also reduces <g', s>, ||g'||^2, ||s||^2 (s before its update) and updates
// s <- s + lambda gamma g' in the same pass; with decoupled decay g' is g' + u there,
// u = wd sqrt(N a) p = coef (wd factor sqrt(d) p) (p before its decay). Sums are
// accumulated in double per lane and added per chunk in a fixed order, so they do not
// depend on the number of threads.
// Only the headers it needs (torch/extension.h takes ~4x longer to compile); the pybind11
// module is appended by load_inline.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>

#include <cmath>
#include <vector>

using at::vec::Vectorized;

namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per parallel task
enum Hyper { kGamma, kBeta1, kBeta2, kEps, kWd, kDecouple, kHyperSize };

template <typename T>
struct Consts {  // per tensor
  T beta2, one_minus_beta2, lerp_w, eps_d, wd_coupled, decay, p_scale, s_scale, q_weight,
      wd_scaled;
  bool momentum, lerp_low, coupled, decoupled;
};

// Per-tensor constants, computed in T as the eager path computes them (so float32 steps
// round their bias corrections the same way). `lam` multiplies gamma (PSDASGD: d / G0,
// PSSPS: eta), `norm` is N.
template <typename T>
Consts<T> consts(const double* h, T step, double lam, double norm, T lr_t) {
  Consts<T> c;
  const double beta1 = h[kBeta1], beta2 = h[kBeta2], wd = h[kWd], gamma = h[kGamma];
  const bool decouple = h[kDecouple] != 0.0;
  c.beta2 = T(beta2);
  c.one_minus_beta2 = T(1.0 - beta2);
  c.momentum = beta1 > 0.0;
  c.lerp_w = T(1.0 - beta1);
  c.lerp_low = (1.0 - beta1) < 0.5;
  const T root_bias2 = std::sqrt(T(1) - std::pow(T(beta2), step));
  c.eps_d = T(h[kEps]) * root_bias2;
  const T factor = T(1) / root_bias2;
  c.coupled = wd != 0.0 && !decouple;
  c.wd_coupled = T(wd);
  c.decay = (wd != 0.0 && decouple) ? T(1) - lr_t * T(wd) : T(1);
  c.decoupled = wd != 0.0 && decouple;
  c.wd_scaled = T(wd) * factor;  // u = coef * wd_scaled * sqrt(d) * p
  T scale = lr_t;
  if (c.momentum) scale = scale / (T(1) - std::pow(T(beta1), step));
  c.p_scale = scale / factor;
  const T coef = std::sqrt(T(norm) / factor);  // g' = coef * q
  c.q_weight = coef;
  c.s_scale = T(lam) * T(gamma) * coef;
  return c;
}

// Double accumulators, one per vector lane: float lanes are widened and added in double.
template <typename T>
struct LaneSum {  // generic: through a buffer (the compiler vectorises the loop)
  static constexpr int W = Vectorized<T>::size();
  double a[W] = {};
  inline void add(const Vectorized<T>& x) {
    alignas(64) T buf[W];
    x.store(buf);
    for (int j = 0; j < W; ++j) a[j] += static_cast<double>(buf[j]);
  }
  double total() const {
    double t = 0;
    for (int j = 0; j < W; ++j) t += a[j];
    return t;
  }
};

template <>
struct LaneSum<double> {
  Vectorized<double> a = Vectorized<double>(0.0);
  inline void add(const Vectorized<double>& x) { a = a + x; }
  double total() const {
    alignas(64) double buf[Vectorized<double>::size()];
    a.store(buf);
    double t = 0;
    for (int j = 0; j < Vectorized<double>::size(); ++j) t += buf[j];
    return t;
  }
};

#if defined(CPU_CAPABILITY_AVX512)
template <>
struct LaneSum<float> {  // 16 float lanes -> two vectors of 8 doubles
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  inline void add(const Vectorized<float>& x) {
    const __m512 f = x;
    lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(f)));
    hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(
                               _mm512_extractf64x4_pd(_mm512_castps_pd(f), 1))));
  }
  double total() const { return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi)); }
};
#elif defined(CPU_CAPABILITY_AVX2)
template <>
struct LaneSum<float> {  // 8 float lanes -> two vectors of 4 doubles
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  inline void add(const Vectorized<float>& x) {
    const __m256 f = x;
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
  }
  double total() const {
    alignas(32) double b[4];
    _mm256_store_pd(b, _mm256_add_pd(lo, hi));
    return (b[0] + b[1]) + (b[2] + b[3]);
  }
};
#endif

struct Chunk {
  int64_t tensor, begin, end;
};

std::vector<Chunk> chunks_of(const std::vector<at::Tensor>& ts) {
  std::vector<Chunk> out;
  for (int64_t i = 0; i < static_cast<int64_t>(ts.size()); ++i) {
    const int64_t n = ts[i].numel();
    for (int64_t b = 0; b < n; b += kChunk) out.push_back({i, b, std::min(n, b + kChunk)});
  }
  return out;
}

void check(const std::vector<std::vector<at::Tensor>>& lists, const at::Tensor& hyper,
           const std::vector<at::Tensor>& steps) {
  const auto dtype = lists[0][0].scalar_type();
  TORCH_CHECK(hyper.scalar_type() == at::kDouble && hyper.is_contiguous() &&
                  hyper.size(0) == static_cast<int64_t>(steps.size()) &&
                  hyper.size(1) == kHyperSize,
              "lrfree kernel: bad hyper-parameter table");
  for (const auto& list : lists) {
    TORCH_CHECK(list.size() == steps.size(), "lrfree kernel: tensor lists differ in length");
    for (size_t i = 0; i < list.size(); ++i) {
      const auto& t = list[i];
      TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == dtype &&
                      t.numel() == lists[0][i].numel(),
                  "lrfree kernel: every tensor must be a contiguous CPU tensor of one dtype "
                  "and of its parameter's size");
    }
  }
  for (const auto& s : steps)
    TORCH_CHECK(s.device().is_cpu() && s.numel() == 1 && s.scalar_type() == dtype,
                "lrfree kernel: bad step tensor");
}

// lr of each tensor as the eager path rounds it: (lam * gamma) * norm in T.
template <typename T>
T lr_of(double lam, double gamma, double norm) {
  return T(T(lam) * T(gamma)) * T(norm);
}

enum StepCount { kAdvance, kPeek };  // count this step (k += 1), or use k + 1 unchanged

template <typename T>
std::vector<Consts<T>> all_consts(const std::vector<at::Tensor>& steps, const at::Tensor& hyper,
                                  double lam, double norm, StepCount count) {
  const double* h = hyper.data_ptr<double>();
  std::vector<Consts<T>> cs;
  cs.reserve(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    T* k = steps[i].data_ptr<T>();
    if (count == kAdvance) *k += T(1);
    const T step = count == kAdvance ? *k : *k + T(1);
    const double* row = h + i * kHyperSize;
    cs.push_back(consts<T>(row, step, lam, norm, lr_of<T>(lam, row[kGamma], norm)));
  }
  return cs;
}

template <typename T>
inline Vectorized<T> lerp(const Vectorized<T>& m, const Vectorized<T>& g, const Consts<T>& c) {
  // torch.lerp's two forms (exact at both ends)
  if (c.lerp_low) return m + Vectorized<T>(c.lerp_w) * (g - m);
  return g - (g - m) * Vectorized<T>(T(1) - c.lerp_w);
}

// ---------------------------------------------------------------- PSDASGD, one pass
template <typename T>
at::Tensor dasgd(std::vector<at::Tensor> p, std::vector<at::Tensor> g, std::vector<at::Tensor> m,
                 std::vector<at::Tensor> v, std::vector<at::Tensor> s,
                 std::vector<at::Tensor> steps, at::Tensor hyper, double lam, double norm) {
  using V = Vectorized<T>;
  constexpr int W = V::size();
  const auto cs = all_consts<T>(steps, hyper, lam, norm, kAdvance);
  const auto chunks = chunks_of(p);
  std::vector<double> partial(chunks.size() * 3, 0.0);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t ci = lo; ci < hi; ++ci) {
      const Chunk ch = chunks[ci];
      const Consts<T>& c = cs[ch.tensor];
      T* pp = p[ch.tensor].data_ptr<T>();
      T* gp = g[ch.tensor].data_ptr<T>();
      T* mp = c.momentum ? m[ch.tensor].data_ptr<T>() : nullptr;
      T* vp = v[ch.tensor].data_ptr<T>();
      T* sp = s[ch.tensor].data_ptr<T>();
      LaneSum<T> dot, sq, ss;
      const V beta2(c.beta2), omb2(c.one_minus_beta2), eps_d(c.eps_d), wd(c.wd_coupled),
          decay(c.decay), p_scale(c.p_scale), s_scale(c.s_scale), one(T(1));
      for (int64_t i = ch.begin; i < ch.end; i += W) {
        const int n = static_cast<int>(std::min<int64_t>(W, ch.end - i));
        V gv = V::loadu(gp + i, n), pv = V::loadu(pp + i, n), vv = V::loadu(vp + i, n),
          sv = V::loadu(sp + i, n);
        if (c.coupled) gv = gv + wd * pv;
        vv = beta2 * vv + omb2 * (gv * gv);
        V dir = gv;
        if (c.momentum) {
          dir = lerp(V::loadu(mp + i, n), gv, c);
          dir.store(mp + i, n);
        }
        const V d = vv.sqrt() + eps_d;
        const V isd = one / d.sqrt();
        V q = gv * isd;
        if (c.decoupled) q = q + Vectorized<T>(c.wd_scaled) * d.sqrt() * pv;
        dot.add(q * sv);
        sq.add(q * q);
        ss.add(sv * sv);
        sv = sv + s_scale * q;
        pv = pv * decay - p_scale * (dir * (isd * isd));
        vv.store(vp + i, n);
        sv.store(sp + i, n);
        pv.store(pp + i, n);
      }
      partial[3 * ci] = dot.total();
      partial[3 * ci + 1] = sq.total();
      partial[3 * ci + 2] = ss.total();
    }
  });
  // per tensor, then weighted by gamma: sum gamma <g', s>, sum gamma^2 ||g'||^2, ||s||^2,
  // ||g'||^2
  const double* h = hyper.data_ptr<double>();
  std::vector<double> t_dot(p.size(), 0.0), t_sq(p.size(), 0.0), t_ss(p.size(), 0.0);
  for (size_t ci = 0; ci < chunks.size(); ++ci) {
    t_dot[chunks[ci].tensor] += partial[3 * ci];
    t_sq[chunks[ci].tensor] += partial[3 * ci + 1];
    t_ss[chunks[ci].tensor] += partial[3 * ci + 2];
  }
  auto out = at::zeros({4}, at::kDouble);
  double* o = out.data_ptr<double>();
  for (size_t i = 0; i < p.size(); ++i) {
    const double gamma = h[i * kHyperSize + kGamma], w = static_cast<double>(cs[i].q_weight);
    o[0] += gamma * w * t_dot[i];
    o[1] += gamma * gamma * w * w * t_sq[i];
    o[2] += t_ss[i];
    o[3] += w * w * t_sq[i];
  }
  return out;
}

// ------------------------------------------- PSSPS, pass 1: ||g'||^2 and the check
// Reads g and v (and p with coupled weight decay), writes nothing: v_k is recomputed in
// pass 2, so the step can still be skipped after this pass. Returns (||g'||^2, the number
// of chunks whose gradient holds an inf or NaN).
template <typename T>
at::Tensor sps_norm(std::vector<at::Tensor> p, std::vector<at::Tensor> g,
                    std::vector<at::Tensor> v, std::vector<at::Tensor> steps, at::Tensor hyper,
                    double norm) {
  using V = Vectorized<T>;
  constexpr int W = V::size();
  const auto cs = all_consts<T>(steps, hyper, 0.0, norm, kPeek);
  const auto chunks = chunks_of(p);
  std::vector<double> partial(chunks.size(), 0.0);
  std::vector<char> bad(chunks.size(), 0);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t ci = lo; ci < hi; ++ci) {
      const Chunk ch = chunks[ci];
      const Consts<T>& c = cs[ch.tensor];
      T* pp = p[ch.tensor].data_ptr<T>();
      T* gp = g[ch.tensor].data_ptr<T>();
      T* vp = v[ch.tensor].data_ptr<T>();
      LaneSum<T> sq;
      V finite(T(0));  // stays 0 unless a gradient is inf or NaN (x - x)
      const V beta2(c.beta2), omb2(c.one_minus_beta2), eps_d(c.eps_d), wd(c.wd_coupled);
      for (int64_t i = ch.begin; i < ch.end; i += W) {
        const int n = static_cast<int>(std::min<int64_t>(W, ch.end - i));
        V gv = V::loadu(gp + i, n);
        finite = finite + (gv - gv);
        if (c.coupled) gv = gv + wd * V::loadu(pp + i, n);
        const V vv = beta2 * V::loadu(vp + i, n) + omb2 * (gv * gv);
        const V d = vv.sqrt() + eps_d;
        sq.add(gv * gv / d);
      }
      partial[ci] = sq.total();
      alignas(64) T buf[W];
      finite.store(buf);
      for (int j = 0; j < W; ++j) bad[ci] |= !std::isfinite(buf[j]);
    }
  });
  std::vector<double> t_sq(p.size(), 0.0);
  for (size_t ci = 0; ci < chunks.size(); ++ci) t_sq[chunks[ci].tensor] += partial[ci];
  auto out = at::zeros({2}, at::kDouble);
  double* o = out.data_ptr<double>();
  for (size_t i = 0; i < p.size(); ++i) {
    const double w = static_cast<double>(cs[i].q_weight);
    o[0] += w * w * t_sq[i];
  }
  for (char b : bad) o[1] += b;
  return out;
}

// ------------------------------------------------------- PSSPS, pass 2: the step
// Counts the step and updates v, m and p (reads g, m, v, p; writes m, v, p).
template <typename T>
void sps_step(std::vector<at::Tensor> p, std::vector<at::Tensor> g, std::vector<at::Tensor> m,
              std::vector<at::Tensor> v, std::vector<at::Tensor> steps, at::Tensor hyper,
              double eta, double norm) {
  using V = Vectorized<T>;
  constexpr int W = V::size();
  const auto cs = all_consts<T>(steps, hyper, eta, norm, kAdvance);
  const auto chunks = chunks_of(p);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t ci = lo; ci < hi; ++ci) {
      const Chunk ch = chunks[ci];
      const Consts<T>& c = cs[ch.tensor];
      T* pp = p[ch.tensor].data_ptr<T>();
      T* gp = g[ch.tensor].data_ptr<T>();
      T* mp = c.momentum ? m[ch.tensor].data_ptr<T>() : nullptr;
      T* vp = v[ch.tensor].data_ptr<T>();
      const V beta2(c.beta2), omb2(c.one_minus_beta2), eps_d(c.eps_d), wd(c.wd_coupled),
          decay(c.decay), p_scale(c.p_scale);
      for (int64_t i = ch.begin; i < ch.end; i += W) {
        const int n = static_cast<int>(std::min<int64_t>(W, ch.end - i));
        V gv = V::loadu(gp + i, n), pv = V::loadu(pp + i, n);
        if (c.coupled) gv = gv + wd * pv;
        const V vv = beta2 * V::loadu(vp + i, n) + omb2 * (gv * gv);
        vv.store(vp + i, n);
        V dir = gv;
        if (c.momentum) {
          dir = lerp(V::loadu(mp + i, n), gv, c);
          dir.store(mp + i, n);
        }
        const V d = vv.sqrt() + eps_d;
        pv = pv * decay - p_scale * (dir / d);
        pv.store(pp + i, n);
      }
    }
  });
}

std::vector<std::vector<at::Tensor>> L(std::initializer_list<std::vector<at::Tensor>> x) {
  return x;
}

}  // namespace

at::Tensor psdasgd_step(std::vector<at::Tensor> p, std::vector<at::Tensor> g,
                        std::vector<at::Tensor> m, std::vector<at::Tensor> v,
                        std::vector<at::Tensor> s, std::vector<at::Tensor> steps,
                        at::Tensor hyper, at::Tensor lam, at::Tensor norm) {
  check(L({p, g, m, v, s}), hyper, steps);
  const double lam_d = lam.item<double>(), norm_d = norm.item<double>();
  if (p[0].scalar_type() == at::kFloat)
    return dasgd<float>(p, g, m, v, s, steps, hyper, lam_d, norm_d);
  TORCH_CHECK(p[0].scalar_type() == at::kDouble, "lrfree kernel: float32 or float64 only");
  return dasgd<double>(p, g, m, v, s, steps, hyper, lam_d, norm_d);
}

at::Tensor pssps_norm(std::vector<at::Tensor> p, std::vector<at::Tensor> g,
                      std::vector<at::Tensor> v, std::vector<at::Tensor> steps, at::Tensor hyper,
                      at::Tensor norm) {
  check(L({p, g, v}), hyper, steps);
  const double norm_d = norm.item<double>();
  if (p[0].scalar_type() == at::kFloat) return sps_norm<float>(p, g, v, steps, hyper, norm_d);
  TORCH_CHECK(p[0].scalar_type() == at::kDouble, "lrfree kernel: float32 or float64 only");
  return sps_norm<double>(p, g, v, steps, hyper, norm_d);
}

void pssps_step(std::vector<at::Tensor> p, std::vector<at::Tensor> g, std::vector<at::Tensor> m,
                std::vector<at::Tensor> v, std::vector<at::Tensor> steps, at::Tensor hyper,
                at::Tensor eta, at::Tensor norm) {
  check(L({p, g, m, v}), hyper, steps);
  const double eta_d = eta.item<double>(), norm_d = norm.item<double>();
  if (p[0].scalar_type() == at::kFloat)
    return sps_step<float>(p, g, m, v, steps, hyper, eta_d, norm_d);
  TORCH_CHECK(p[0].scalar_type() == at::kDouble, "lrfree kernel: float32 or float64 only");
  sps_step<double>(p, g, m, v, steps, hyper, eta_d, norm_d);
}

// Whether a 0-d CPU tensor is > 0, read here: on a CPU this is a memory read, not a device
// synchronisation (and it keeps the Python-level host-sync count of the step unchanged).
bool is_positive(at::Tensor x) {
  TORCH_CHECK(x.device().is_cpu() && x.numel() == 1, "lrfree kernel: a 0-d CPU tensor");
  return x.item<double>() > 0.0;
}

// The number of chunks of `xs` holding an inf or NaN (0: all finite), as a float32 0-d
// tensor: x - x is 0 for a finite x and NaN otherwise, so one read and no overflow.
at::Tensor nonfinite(std::vector<at::Tensor> xs) {
  for (const auto& x : xs)
    TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() &&
                    (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
                "lrfree kernel: contiguous float32/float64 CPU tensors");
  const auto chunks = chunks_of(xs);
  std::vector<char> bad(chunks.size(), 0);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t ci = lo; ci < hi; ++ci) {
      const Chunk ch = chunks[ci];
      AT_DISPATCH_FLOATING_TYPES(xs[ch.tensor].scalar_type(), "lrfree_nonfinite", [&] {
        using V = Vectorized<scalar_t>;
        const scalar_t* x = xs[ch.tensor].data_ptr<scalar_t>();
        constexpr int64_t W = V::size();
        V acc(scalar_t(0)), acc1(scalar_t(0)), acc2(scalar_t(0)), acc3(scalar_t(0));
        int64_t i = ch.begin;
        for (; i + 4 * W <= ch.end; i += 4 * W) {  // four independent chains
          const V v0 = V::loadu(x + i), v1 = V::loadu(x + i + W), v2 = V::loadu(x + i + 2 * W),
                  v3 = V::loadu(x + i + 3 * W);
          acc = acc + (v0 - v0);
          acc1 = acc1 + (v1 - v1);
          acc2 = acc2 + (v2 - v2);
          acc3 = acc3 + (v3 - v3);
        }
        for (; i < ch.end; i += W) {
          const V v = V::loadu(x + i, static_cast<int>(std::min<int64_t>(W, ch.end - i)));
          acc = acc + (v - v);
        }
        acc = (acc + acc1) + (acc2 + acc3);
        alignas(64) scalar_t buf[V::size()];
        acc.store(buf);
        for (int j = 0; j < V::size(); ++j) bad[ci] |= !std::isfinite(buf[j]);
      });
    }
  });
  int64_t count = 0;
  for (char b : bad) count += b;
  return at::full({}, static_cast<double>(count), at::kFloat);
}

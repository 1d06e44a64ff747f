// A multi-tensor Adam/AdamW step for the CPU: one call, one parallel region per group.
//
// The update is the one of adamw_ref.functional.adam_update, element by element, with
// the operations in the order (and the roundings) of torch's own per-op CPU kernels:
// each scalar is rounded to the tensor's dtype first, as torch does with Python floats,
// and the lerp of m and the addcmul of v are the fused multiply-adds of torch's
// vectorised kernels, so m and v come out bit for bit as torch's. The parameter can
// differ in the last bit: torch's sqrt may go through MKL's vector maths, which is not
// always correctly rounded, where std::sqrt is. All of a
// group's tensors are laid end to end as one index space [0, total) that at::parallel_for
// splits between the intra-op threads, so 100 small tensors cost one parallel region,
// not 100 (torch's fused CPU kernel opens one per tensor).
//
// Python (adamw_ref/cpp_impl.py) checks dtypes, devices, shapes and contiguity before
// calling; the TORCH_CHECKs here are the last line of defence.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Per-tensor scalars, computed in double exactly as the Python paths compute them.
struct StepScalars {
  double neg_step_size;          // -lr / (1 - beta1^t)
  double bias_correction2_sqrt;  // (1 - beta2^t) ** 0.5
};

struct Hyper {
  double lr, beta1, beta2, eps, weight_decay;
};

template <typename T, bool MAXIMIZE, bool WEIGHT_DECAY, bool DECOUPLED, bool AMSGRAD>
void update_span(T* __restrict__ p, const T* __restrict__ grad, T* __restrict__ m,
                 T* __restrict__ v, T* __restrict__ v_max, int64_t n, const Hyper& h,
                 const StepScalars& s) {
  // Scalars rounded to T once, like torch's Python-float arguments.
  const T decay = static_cast<T>(1 - h.lr * h.weight_decay);  // AdamW: theta *= decay
  const T lambda = static_cast<T>(h.weight_decay);            // Adam + L2: g += lambda theta
  const T w = static_cast<T>(1 - h.beta1);                    // lerp weight of m towards g
  const bool w_small = std::abs(w) < static_cast<T>(0.5);     // torch's lerp branch
  const T lerp_coeff = w_small ? w : w - static_cast<T>(1);
  const T beta2 = static_cast<T>(h.beta2);
  const T one_minus_beta2 = static_cast<T>(1 - h.beta2);
  const T bc2_sqrt = static_cast<T>(s.bias_correction2_sqrt);
  const T eps = static_cast<T>(h.eps);
  const T neg_step = static_cast<T>(s.neg_step_size);
  for (int64_t i = 0; i < n; ++i) {
    T g = MAXIMIZE ? -grad[i] : grad[i];  // g_t (maximising f = minimising -f)
    T theta = p[i];
    if (WEIGHT_DECAY) {
      if (DECOUPLED) {
        theta = theta * decay;  // theta <- theta (1 - lr lambda), outside m and v
      } else {
        g = g + lambda * theta;  // g <- g + lambda theta: the L2 penalty's gradient
      }
    }
    // m_t = lerp(m, g, 1 - beta1) = m + w (g - m), as torch's fmadd(coeff, g - m, base)
    const T m_new = std::fma(lerp_coeff, g - m[i], w_small ? m[i] : g);
    // v_t = beta2 v + (1 - beta2) g^2: mul_, then addcmul_ as torch's vectorised kernel,
    // fmadd(value * g, g, v)
    const T v_new = std::fma(one_minus_beta2 * g, g, v[i] * beta2);
    T second = v_new;
    if (AMSGRAD) {
      second = std::max(v_max[i], v_new);  // the denominator never shrinks
      v_max[i] = second;
    }
    const T denom = std::sqrt(second) / bc2_sqrt + eps;  // sqrt(v_hat) + eps
    p[i] = theta + neg_step * m_new / denom;             // addcdiv_: value * m / denom
    m[i] = m_new;
    v[i] = v_new;
  }
}

template <typename T>
using SpanFn = void (*)(T*, const T*, T*, T*, T*, int64_t, const Hyper&, const StepScalars&);

template <typename T>
SpanFn<T> pick(bool maximize, bool weight_decay, bool decoupled, bool amsgrad) {
  // 16 instantiations: the flags are compile-time, so the inner loop has no branches.
#define ADAMW_REF_CASE(MX, WD, DC, AG) \
  if (maximize == MX && weight_decay == WD && decoupled == DC && amsgrad == AG) \
    return &update_span<T, MX, WD, DC, AG>;
#define ADAMW_REF_CASES_AG(MX, WD, DC) ADAMW_REF_CASE(MX, WD, DC, false) ADAMW_REF_CASE(MX, WD, DC, true)
#define ADAMW_REF_CASES_DC(MX, WD) ADAMW_REF_CASES_AG(MX, WD, false) ADAMW_REF_CASES_AG(MX, WD, true)
#define ADAMW_REF_CASES_WD(MX) ADAMW_REF_CASES_DC(MX, false) ADAMW_REF_CASES_DC(MX, true)
  ADAMW_REF_CASES_WD(false)
  ADAMW_REF_CASES_WD(true)
#undef ADAMW_REF_CASES_WD
#undef ADAMW_REF_CASES_DC
#undef ADAMW_REF_CASES_AG
#undef ADAMW_REF_CASE
  TORCH_CHECK(false, "unreachable flag combination");
}

template <typename T>
void step_group(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                at::TensorList steps, const Hyper& h, bool decoupled, bool amsgrad,
                bool maximize) {
  const size_t count = params.size();
  std::vector<StepScalars> scalars(count);
  std::vector<int64_t> offsets(count + 1, 0);  // tensor k covers [offsets[k], offsets[k+1])
  for (size_t k = 0; k < count; ++k) {
    // state["step"] += 1, in the step tensor's own dtype (float32 or float64).
    double t;
    if (steps[k].scalar_type() == at::kFloat) {
      float* sp = steps[k].data_ptr<float>();
      *sp += 1.0f;
      t = *sp;
    } else {
      double* sp = steps[k].data_ptr<double>();
      *sp += 1.0;
      t = *sp;
    }
    // The same double arithmetic as Python's `lr / (1 - beta1**t)`, `(1 - beta2**t)**0.5`.
    scalars[k].neg_step_size = -(h.lr / (1 - std::pow(h.beta1, t)));
    scalars[k].bias_correction2_sqrt = std::pow(1 - std::pow(h.beta2, t), 0.5);
    offsets[k + 1] = offsets[k] + params[k].numel();
  }
  const SpanFn<T> span = pick<T>(maximize, h.weight_decay != 0, decoupled, amsgrad);
  // A grain of 32k elements: ~900 KB of traffic per task for float32, enough to hide the
  // cost of the split, small enough that two threads share a 1M-parameter model.
  constexpr int64_t kGrain = 32768;
  at::parallel_for(0, offsets[count], kGrain, [&](int64_t begin, int64_t end) {
    // The first tensor that overlaps [begin, end), then walk forward.
    size_t k = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    for (; k < count && offsets[k] < end; ++k) {
      const int64_t lo = std::max(begin, offsets[k]) - offsets[k];
      const int64_t hi = std::min(end, offsets[k + 1]) - offsets[k];
      if (hi <= lo) continue;
      T* vmax = amsgrad ? max_exp_avg_sqs[k].data_ptr<T>() + lo : nullptr;
      span(params[k].data_ptr<T>() + lo, grads[k].data_ptr<T>() + lo,
           exp_avgs[k].data_ptr<T>() + lo, exp_avg_sqs[k].data_ptr<T>() + lo, vmax, hi - lo,
           h, scalars[k]);
    }
  });
}

void check_list(at::TensorList list, at::TensorList params, const char* name) {
  TORCH_CHECK(list.size() == params.size(), name, " must have one tensor per parameter, got ",
              list.size(), " for ", params.size());
  for (size_t k = 0; k < list.size(); ++k) {
    const at::Tensor& t = list[k];
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && !t.is_sparse(), name, "[", k,
                "] must be a dense contiguous CPU tensor");
    TORCH_CHECK(t.scalar_type() == params[0].scalar_type(), name, "[", k, "] has dtype ",
                t.scalar_type(), ", expected ", params[0].scalar_type());
    TORCH_CHECK(t.sizes() == params[k].sizes(), name, "[", k, "] has shape ", t.sizes(),
                ", expected ", params[k].sizes());
  }
}

void adam_step_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                at::TensorList steps, double lr, double beta1, double beta2, double eps,
                double weight_decay, bool decoupled, bool amsgrad, bool maximize) {
  if (params.empty()) return;
  const auto dtype = params[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "params must be float32 or float64, got ", dtype);
  check_list(params, params, "params");
  check_list(grads, params, "grads");
  check_list(exp_avgs, params, "exp_avgs");
  check_list(exp_avg_sqs, params, "exp_avg_sqs");
  if (amsgrad) check_list(max_exp_avg_sqs, params, "max_exp_avg_sqs");
  TORCH_CHECK(steps.size() == params.size(), "steps must have one tensor per parameter");
  for (size_t k = 0; k < steps.size(); ++k) {
    TORCH_CHECK(steps[k].device().is_cpu() && steps[k].numel() == 1 &&
                    (steps[k].scalar_type() == at::kFloat ||
                     steps[k].scalar_type() == at::kDouble),
                "steps[", k, "] must be a float32/float64 CPU scalar");
  }
  const Hyper h{lr, beta1, beta2, eps, weight_decay};
  if (dtype == at::kFloat) {
    step_group<float>(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, h,
                      decoupled, amsgrad, maximize);
  } else {
    step_group<double>(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, h,
                       decoupled, amsgrad, maximize);
  }
  // Writes through raw pointers bypass autograd's version counters; bump them as
  // torch's in-place ops do, so a tensor saved for a backward is detected as modified.
  for (at::TensorList list : {params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps}) {
    for (const at::Tensor& t : list) t.unsafeGetTensorImpl()->bump_version();
  }
}

}  // namespace

TORCH_LIBRARY(adamw_ref, m) {
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, "
      "float lr, float beta1, float beta2, float eps, float weight_decay, bool decoupled, "
      "bool amsgrad, bool maximize) -> ()");
}

TORCH_LIBRARY_IMPL(adamw_ref, CPU, m) { m.impl("adam_step_", &adam_step_); }

// safeops fused CPU kernels for softmax, log_softmax and reduce_logsumexp of float32
// rows, forward and backward.
//
// Method (as the pure-TF path, safeops/softmax.py): per row, m = max x (NaN
// anywhere: the row is NaN); x_i - m = hi + lo exactly (TwoSum in float32);
// e_i = exp(hi) (1 + lo) with a 16-lane float32 exp (Cody-Waite reduction,
// Cephes' degree-6 polynomial, ~1 ulp), where hi < -80 is evaluated as
// exp(hi + 64) e^-64 in double so that terms flushed by FTZ still count; s =
// the double sum of e over every entry but the first max one (so 1 + s is the
// softmax denominator and log1p(s) keeps its accuracy when s is tiny). A double
// exp was tried first: 0 ulp, but 2.7x tf.nn.softmax. Then, rounded once to
// float32:
//   softmax_i = e_i / (1 + s),  logsumexp = m + log1p(s),
//   log_softmax_i = (x_i - m) - log1p(s)   (two terms <= 0 in double: no cancellation).
// Masked rows (m = -inf): softmax 0, log_softmax -inf, logsumexp -inf; a row
// holding +inf: its +inf entries count as exp(0) = 1, the others as 0.
//
// SafeopsSoftplus: softplus(x) = log(e^x + e^0), the log-sum-exp of the pair (x, 0),
// elementwise for float32: max(x, 0) + log1p(exp(-|x|)) evaluated in double (libm's exp
// and log1p) and rounded once; one kernel launch where TF's ops need three for the same
// accuracy (cast, softplus in float64, cast back). Scalar libm calls: meant for small
// tensors, where the launch cost dominates.
//
// SafeopsLogistic / SafeopsLogisticGrad: softplus and log_sigmoid of float32 or float64 in
// the input precision, element-wise, for graphs and eager log_sigmoid (where the pure-TF
// formula of safeops/logexp.py is six element-wise kernels forward and five backward):
//   softplus(x) = max(x, 0) + log1p(e),   log_sigmoid(x) = min(x, 0) - log1p(e),
//   dx = g sigmoid(x) (softplus) or g sigmoid(-x) (log_sigmoid), e = exp(-|x|),
// sigmoid(+-|x|) formed as 1/(1 + e) or e/(1 + e) (no cancellation), one vectorised pass
// each way. exp is Eigen's packet exp (the one TF's Exp kernel vectorises with: Cody-Waite
// reduction and a minimax polynomial in float32, a Pade form in float64; ~1 ulp). log1p:
// float32 by Log1pUnit below (~0.6 ulp; Eigen's generic log1p, which TF's Log1p kernel
// uses, measures up to 4 ulp), float64 Eigen's. Both terms of the sum have one sign, so
// the float32 value is within 3 ulp: measured max 2 ulp (mean 0.05 bits) over every 31st
// float32 in [-104, 89], the gradient max 2 ulp. The backward recomputes e from x rather
// than reading a copy saved by the forward (one output fewer to write and read back).
// Every element is computed inside a full packet (the tail padded), so the bits do not
// depend on the thread count or the alignment. Log1pUnit's residual is exact with an FMA
// (-march=native on a CPU that has one; without, pmadd rounds twice and the residual
// carries ~1/4 ulp more error). NaN in, NaN out; softplus(+inf) = +inf, softplus(-inf) =
// 0, log_sigmoid(-inf) = -inf, gradients exactly 0 or 1 at +-inf. Subnormal results
// follow the thread's flush-to-zero mode, as TF's kernels do.
//
// SafeopsLogExpm1 / SafeopsLogExpm1Grad: softplus_inverse and log1mexp of float32,
// element-wise, evaluated in double and rounded once (graphs and eager on the CPU, where the
// pure-TF formulas of safeops/logexp.py are a float64 cast and five to seven element-wise
// kernels each way):
//   softplus_inverse(x) = log(expm1(x)) (x itself for x >= 40, where the rest is below
//     2^-57 relative),  dx = g (1 + 1/expm1(min(x, 40)));
//   log1mexp(x) = log(-expm1(-a)) for a = |x| <= log 2, log1p(-exp(-a)) above (Maechler's
//     switch; condition <= 1.5),  dx = g sign(x) / expm1(a), 0 at x = 0.
// exp and log are Eigen's double packet functions (~1 ulp of double); expm1(t) for |t| <=
// log 2 its Taylor series (exp(t) - 1 above), log1p(-u) Kahan's log(w) (-u / (w - 1)) with
// w = 1 - u (a few ulp of double; one exp, one log and one division per element each way
// at most): the double value is within ~2^-50
// relative (near softplus_inverse's zero at log 2 within ~1e-16 absolute, while a float32
// x is at least 2^-25 from log 2), so the one rounding to float32 gives <= 1 ulp. The
// derivative is rounded once to float32, saturated at +-the largest float32, and multiplied
// by g in float32 (the one product TF's gradients form). NaN in, NaN out; x = 0 gives -inf
// (both), x < 0 NaN (softplus_inverse); slopes: +-the largest float32 at 0 (softplus_inverse),
// 0 at 0 (log1mexp), 1 and 0 at +inf. Every element is computed inside a full packet (the
// tail padded), so the bits depend neither on the thread count nor on the position.
//
// Compile without -ffast-math (see compensated.cc). The softmax kernels check every
// input's rank and shape and the kind attribute before reading anything.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

#include "common.h"

namespace safeops_softmax {
namespace {

using ::safeops_native::ParallelFor;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
namespace shape_inference = ::tensorflow::shape_inference;

constexpr int kW = 8;
typedef double VD __attribute__((vector_size(8 * kW)));
typedef float VF __attribute__((vector_size(4 * kW)));

constexpr double kInf = std::numeric_limits<double>::infinity();

enum Kind { kSoftmax = 0, kLogSumExp = 1, kLogSoftmax = 2 };

inline VD Splat(double v) {
  VD r;
  for (int l = 0; l < kW; ++l) r[l] = v;
  return r;
}

typedef float VF16 __attribute__((vector_size(64)));
typedef int32_t VI16 __attribute__((vector_size(64)));

inline VF16 SplatF(float v) {
  VF16 r;
  for (int l = 0; l < 16; ++l) r[l] = v;
  return r;
}

// exp(t) for t in [-80, 0] (float32, Cephes expf: Cody-Waite with ln 2 in two parts).
__attribute__((always_inline)) inline VF16 ExpF(VF16 t) {
  const VF16 magic = SplatF(12582912.0f);  // 1.5 * 2^23: round to nearest integer
  const VF16 k = t * SplatF(1.44269504088896341f) + magic;
  const VF16 n = k - magic;
  const VF16 r = (t - n * SplatF(0.693359375f)) - n * SplatF(-2.12194440e-4f);
  VF16 p = SplatF(1.9875691500e-4f);
  p = p * r + SplatF(1.3981999507e-3f);
  p = p * r + SplatF(8.3334519073e-3f);
  p = p * r + SplatF(4.1665795894e-2f);
  p = p * r + SplatF(1.6666665459e-1f);
  p = p * r + SplatF(5.0000001201e-1f);
  p = (p * (r * r) + r) + SplatF(1.0f);
  VI16 bits;
  std::memcpy(&bits, &k, sizeof(bits));
  bits = (bits - 0x4B400000 + 127) << 23;  // 2^n
  VF16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// e for 16 entries of a finite row (see the header): doubles into out[0..16).
// Forced inline: as a call (vectors passed through the stack) the row pass was 3x slower.
__attribute__((always_inline)) inline void Exp16(const float* x16, float m, double* out) {
  VF16 xv;
  std::memcpy(&xv, x16, sizeof(xv));
  const VF16 nm = SplatF(-m);
  const VF16 hi = xv + nm;  // TwoSum(x, -m)
  const VF16 bb = hi - xv;
  VF16 lo = (xv - (hi - bb)) + (nm - bb);
  lo = lo == lo ? lo : SplatF(0.0f);  // x = -inf: inf - inf
  const VF16 low = hi < SplatF(-80.0f) ? SplatF(1.0f) : SplatF(0.0f);
  const VF16 hc = hi < SplatF(-128.0f) ? SplatF(-128.0f) : hi;
  const VF16 t = low > SplatF(0.0f) ? hc + SplatF(64.0f) : hi;  // exact (Sterbenz)
  const VF16 e = ExpF(t) * (SplatF(1.0f) + lo);
  for (int h = 0; h < 2; ++h) {
    VF e8, low8, hi8;  // the h-th half of each
    std::memcpy(&e8, reinterpret_cast<const char*>(&e) + 32 * h, 32);
    std::memcpy(&low8, reinterpret_cast<const char*>(&low) + 32 * h, 32);
    std::memcpy(&hi8, reinterpret_cast<const char*>(&hi) + 32 * h, 32);
    VD d = __builtin_convertvector(e8, VD);
    const VD lowd = __builtin_convertvector(low8, VD);
    const VD hid = __builtin_convertvector(hi8, VD);
    d = lowd > 0.0 ? d * 1.6038108905486379e-28 : d;  // e^-64
    d = hid < -128.0 ? 0.0 * d : d;
    std::memcpy(out + 8 * h, &d, sizeof(d));
  }
}

// Row state shared by the forward and backward passes.
struct Row {
  int mode;     // 0 finite max, 1 masked (max -inf or empty), 2 +inf present, 3 NaN present
  double m;     // the max (finite mode)
  int64_t top;  // index of the first max entry
};

Row Inspect(const float* x, int64_t n) {
  Row r{1, -kInf, -1};
  const float ninf = -std::numeric_limits<float>::infinity();
  VF16 mv[4] = {SplatF(ninf), SplatF(ninf), SplatF(ninf), SplatF(ninf)};
  VF16 nanv = SplatF(0.0f);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {  // 4 x 16 lanes: four short dependency chains
    for (int k = 0; k < 4; ++k) {
      VF16 v;
      std::memcpy(&v, x + i + 16 * k, sizeof(v));
      nanv += v != v ? SplatF(1.0f) : SplatF(0.0f);
      mv[k] = v > mv[k] ? v : mv[k];
    }
  }
  float m = ninf;
  bool nan = false;
  for (int k = 0; k < 4; ++k) {
    for (int l = 0; l < 16; ++l) m = mv[k][l] > m ? mv[k][l] : m;
  }
  for (int l = 0; l < 16; ++l) nan |= nanv[l] != 0.0f;
  for (; i < n; ++i) {
    const float v = x[i];
    nan |= v != v;
    m = v > m ? v : m;
  }
  if (nan) return Row{3, std::nan(""), -1};
  if (n == 0 || m == -std::numeric_limits<float>::infinity()) return r;
  int64_t top = 0;
  const VF16 mv16 = SplatF(m);
  for (; top + 16 <= n; top += 16) {  // 16 at a time to the chunk holding the first max
    VF16 v;
    std::memcpy(&v, x + top, sizeof(v));
    const VF16 hit = v == mv16 ? SplatF(1.0f) : SplatF(0.0f);
    float any = 0.0f;
    for (int l = 0; l < 16; ++l) any += hit[l];
    if (any > 0.0f) break;
  }
  while (x[top] != m) ++top;
  if (m == std::numeric_limits<float>::infinity()) return Row{2, kInf, top};
  return Row{0, static_cast<double>(m), top};
}

// e_i into e[0..n) for a finite or +inf row; returns s (all but the first top entry).
double Exps(const float* x, int64_t n, const Row& row, double* e) {
  if (row.mode == 2) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      e[i] = x[i] == std::numeric_limits<float>::infinity() ? 1.0 : 0.0;
      if (i != row.top) s += e[i];
    }
    return s;
  }
  const float m = static_cast<float>(row.m);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) Exp16(x + i, m, e + i);
  if (i < n) {  // the tail, padded with -inf (e = 0)
    float buf[16];
    double out[16];
    const float ninf = -std::numeric_limits<float>::infinity();
    for (int l = 0; l < 16; ++l) buf[l] = i + l < n ? x[i + l] : ninf;
    Exp16(buf, m, out);
    for (int64_t l = 0; i + l < n; ++l) e[i + l] = out[l];
  }
  // s leaves out the first max entry (e == 1 exactly) instead of subtracting it later,
  // which would cancel when s is tiny
  e[row.top] = 0.0;
  VD acc = Splat(0.0);
  for (i = 0; i + kW <= n; i += kW) {
    VD v;
    std::memcpy(&v, e + i, sizeof(v));
    acc += v;
  }
  double s = 0.0;
  for (int l = 0; l < kW; ++l) s += acc[l];
  for (; i < n; ++i) s += e[i];
  e[row.top] = 1.0;
  return s;
}

int ParseKind(OpKernelConstruction* ctx, const char* op) {
  std::string kind;
  const ::tensorflow::Status st = ctx->GetAttr("kind", &kind);
  if (!st.ok()) {
    ctx->CtxFailure(st);
    return -1;
  }
  if (kind == "softmax") return kSoftmax;
  if (kind == "logsumexp") return kLogSumExp;
  if (kind == "log_softmax") return kLogSoftmax;
  ctx->CtxFailure(::tensorflow::errors::InvalidArgument(
      op, ": attribute 'kind' must be 'softmax', 'log_softmax' or 'logsumexp'; got '", kind,
      "'"));
  return -1;
}

// shape == {d0, d1}, else InvalidArgument naming the op and the input.
::tensorflow::Status CheckShape(const char* op, const char* arg, const Tensor& t, int64_t d0,
                                int64_t d1) {
  if (t.dims() == 2 && t.dim_size(0) == d0 && t.dim_size(1) == d1) {
    return ::tensorflow::OkStatus();
  }
  return ::tensorflow::errors::InvalidArgument(op, ": input '", arg, "' must have shape [", d0,
                                               ", ", d1, "]; got ", t.shape().DebugString());
}

class SoftmaxOp : public OpKernel {
 public:
  explicit SoftmaxOp(OpKernelConstruction* ctx)
      : OpKernel(ctx), kind_(ParseKind(ctx, "SafeopsSoftmax")) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& in = ctx->input(0);
    OP_REQUIRES(ctx, in.dims() == 2,
                ::tensorflow::errors::InvalidArgument(
                    "SafeopsSoftmax: input 'x' must be rank 2 [rows, n]; got shape ",
                    in.shape().DebugString()));
    const int64_t rows = in.dim_size(0), n = in.dim_size(1);
    // [rows, 1] and [rows, 2] can overflow where n == 0 (an empty input of huge dimensions)
    TensorShape out_shape, stats_shape;
    const int64_t out_dims[2] = {rows, kind_ == kLogSumExp ? 1 : n}, stats_dims[2] = {rows, 2};
    OP_REQUIRES_OK(ctx, ::tensorflow::TensorShapeUtils::MakeShape(out_dims, 2, &out_shape));
    OP_REQUIRES_OK(ctx, ::tensorflow::TensorShapeUtils::MakeShape(stats_dims, 2, &stats_shape));
    Tensor* out = nullptr;
    Tensor* stats = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, stats_shape, &stats));
    if (rows == 0) return;
    const float* x = in.flat<float>().data();
    float* y = out->flat<float>().data();
    double* st = stats->flat<double>().data();
    const float nanf = std::numeric_limits<float>::quiet_NaN();
    ParallelFor(ctx, rows, n * 40 + 100, [&](int64_t lo, int64_t hi) {
      std::vector<double> e(n);
      for (int64_t r = lo; r < hi; ++r) {
        const float* xr = x + r * n;
        const Row row = Inspect(xr, n);
        double s = 0.0;
        if (row.mode == 0 || row.mode == 2) s = Exps(xr, n, row, e.data());
        st[2 * r] = row.m;  // for the backward: the row max and s (NaN row: both NaN)
        st[2 * r + 1] = row.mode == 3 ? row.m : s;
        if (kind_ == kLogSumExp) {
          y[r] = row.mode == 0 ? static_cast<float>(row.m + std::log1p(s))
                               : static_cast<float>(row.m);
          continue;
        }
        float* yr = y + r * n;
        if (kind_ == kLogSoftmax) {
          const float ninf = -std::numeric_limits<float>::infinity();
          if (row.mode == 3) {
            for (int64_t i = 0; i < n; ++i) yr[i] = nanf;
          } else if (row.mode == 1) {
            for (int64_t i = 0; i < n; ++i) yr[i] = ninf;
          } else {
            // x_i - m is exact in double for |x_i - m| < 2^29 ulp(m), else rounded once at
            // 2^-53: far below the final rounding; (x_i - m) <= 0 and -log1p(s) <= 0 add
            // without cancellation. A +inf row: 0 on its +inf entries, -inf on the rest.
            const double l = std::log1p(s);
            if (row.mode == 2) {
              for (int64_t i = 0; i < n; ++i) yr[i] = e[i] == 1.0 ? static_cast<float>(-l) : ninf;
            } else {
              for (int64_t i = 0; i < n; ++i) {
                yr[i] = static_cast<float>((static_cast<double>(xr[i]) - row.m) - l);
              }
            }
          }
          continue;
        }
        if (row.mode == 3) {
          for (int64_t i = 0; i < n; ++i) yr[i] = nanf;
        } else if (row.mode == 1) {
          for (int64_t i = 0; i < n; ++i) yr[i] = 0.0f;
        } else {
          const double inv = 1.0 / (1.0 + s);
          for (int64_t i = 0; i < n; ++i) yr[i] = static_cast<float>(e[i] * inv);
        }
      }
    });
  }

 private:
  int kind_;
};

// sum of x[0..n) in double, 8 lanes (the order is fixed: bits do not depend on threads).
double SumD(const float* x, int64_t n) {
  VD acc = Splat(0.0);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    VF v;
    std::memcpy(&v, x + i, sizeof(v));
    acc += __builtin_convertvector(v, VD);
  }
  double s = 0.0;
  for (int l = 0; l < kW; ++l) s += acc[l];
  for (; i < n; ++i) s += x[i];
  return s;
}

// The first index of x[0..n) equal to v (n if none), 16 at a time to the chunk holding it.
int64_t First(const float* x, int64_t n, float v) {
  int64_t i = 0;
  const VF16 vv = SplatF(v);
  for (; i + 16 <= n; i += 16) {
    VF16 c;
    std::memcpy(&c, x + i, sizeof(c));
    const VF16 hit = c == vv ? SplatF(1.0f) : SplatF(0.0f);
    float any = 0.0f;
    for (int l = 0; l < 16; ++l) any += hit[l];
    if (any > 0.0f) break;
  }
  while (i < n && x[i] != v) ++i;
  return i;
}

// The log_softmax backward of one row: g_i - p_i sum(g), p_i = e_i / (1 + s) with e
// recomputed from x and the forward's row max m and s. The first max entry (e == 1, the
// one s leaves out) takes (g_top s - sum_{j != top} g_j) / (1 + s), so its 1 - p = s / (1 + s)
// does not cancel when s is tiny. Masked row (m = -inf): p = 0, the gradient is g; NaN row:
// NaN; a row holding +inf: p = 1 / (1 + s) on its +inf entries (s + 1 of them), 0 elsewhere.
void LogSoftmaxRowGrad(const float* gr, const float* xr, int64_t n, double m, double s,
                       float* dr) {
  if (m != m) {
    for (int64_t i = 0; i < n; ++i) dr[i] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  if (m == -kInf) {
    for (int64_t i = 0; i < n; ++i) dr[i] = gr[i];
    return;
  }
  const float mf = static_cast<float>(m);
  const float pinf = std::numeric_limits<float>::infinity();
  const int64_t top = First(xr, n, mf);  // the first max entry, as Inspect finds it
  // A row max that is not in the row (statistics that do not belong to x: only a crafted
  // call gives them) has no top entry: every entry takes the plain g_i - p_i sum(g).
  const bool has_top = top < n;
  const double rest = has_top ? SumD(gr, top) + SumD(gr + top + 1, n - top - 1)
                              : SumD(gr, n);  // all but top
  const double gt = has_top ? static_cast<double>(gr[top]) : 0.0;
  const double inv = 1.0 / (1.0 + s);
  const double scale = (gt + rest) * inv;  // sum(g) / (1 + s)
  if (m == kInf) {
    for (int64_t i = 0; i < n; ++i) {
      dr[i] = xr[i] == pinf ? static_cast<float>(gr[i] - scale) : gr[i];
    }
  } else {
    double buf[16];
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      Exp16(xr + i, mf, buf);
      for (int l = 0; l < 16; ++l) dr[i + l] = static_cast<float>(gr[i + l] - buf[l] * scale);
    }
    if (i < n) {
      float pad[16];
      for (int l = 0; l < 16; ++l) pad[l] = i + l < n ? xr[i + l] : -pinf;
      Exp16(pad, mf, buf);
      for (int64_t l = 0; i + l < n; ++l) {
        dr[i + l] = static_cast<float>(gr[i + l] - buf[l] * scale);
      }
    }
  }
  if (has_top) dr[top] = static_cast<float>((gt * s - rest) * inv);
}

class SoftmaxGradOp : public OpKernel {
 public:
  explicit SoftmaxGradOp(OpKernelConstruction* ctx)
      : OpKernel(ctx), kind_(ParseKind(ctx, "SafeopsSoftmaxGrad")) {}

  void Compute(OpKernelContext* ctx) override {
    constexpr const char* kOp = "SafeopsSoftmaxGrad";
    const Tensor& gt = ctx->input(0);
    const Tensor& in = ctx->input(1);
    const Tensor& yt = ctx->input(2);
    const Tensor& stt = ctx->input(3);
    OP_REQUIRES(ctx, in.dims() == 2,
                ::tensorflow::errors::InvalidArgument(
                    kOp, ": input 'x' must be rank 2 [rows, n]; got shape ",
                    in.shape().DebugString()));
    const int64_t rows = in.dim_size(0), n = in.dim_size(1);
    const int64_t out_n = kind_ == kLogSumExp ? 1 : n;  // the forward output's row length
    OP_REQUIRES_OK(ctx, CheckShape(kOp, "g", gt, rows, out_n));
    OP_REQUIRES_OK(ctx, CheckShape(kOp, "y", yt, rows, out_n));
    OP_REQUIRES_OK(ctx, CheckShape(kOp, "stats", stt, rows, 2));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, in.shape(), &out));
    if (rows == 0) return;
    const float* g = gt.flat<float>().data();
    const float* x = in.flat<float>().data();
    const float* y = yt.flat<float>().data();
    const double* st = stt.flat<double>().data();
    float* dx = out->flat<float>().data();
    const float nanf = std::numeric_limits<float>::quiet_NaN();
    ParallelFor(ctx, rows, n * 50 + 100, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const float* xr = x + r * n;
        float* dr = dx + r * n;
        if (kind_ == kSoftmax) {
          // from the output p (rounded once from the double quotient): no exp here.
          // p (d - sum(d p)), d = g - c, c = g at the first largest p: the dominant
          // entry's derivative p (1 - p) does not cancel
          const float* pr = y + r * n;
          const float* gr = g + r * n;
          const Row top = Inspect(pr, n);
          if (top.mode == 3) {
            for (int64_t i = 0; i < n; ++i) dr[i] = nanf;
            continue;
          }
          const double c = top.top >= 0 ? static_cast<double>(gr[top.top]) : 0.0;
          double t = 0.0;
          for (int64_t i = 0; i < n; ++i) t += (static_cast<double>(gr[i]) - c) * pr[i];
          for (int64_t i = 0; i < n; ++i) {
            dr[i] = static_cast<float>(pr[i] * ((static_cast<double>(gr[i]) - c) - t));
          }
          continue;
        }
        if (kind_ == kLogSoftmax) {
          LogSoftmaxRowGrad(g + r * n, xr, n, st[2 * r], st[2 * r + 1], dr);
          continue;
        }
        // logsumexp: g e_i / (1 + s) with the forward's row max and s, in one pass
        const double m = st[2 * r], s = st[2 * r + 1];
        const double scale = static_cast<double>(g[r]) / (1.0 + s);
        if (m != m) {
          for (int64_t i = 0; i < n; ++i) dr[i] = nanf;
        } else if (m == -kInf) {
          for (int64_t i = 0; i < n; ++i) dr[i] = 0.0f;
        } else if (m == kInf) {
          for (int64_t i = 0; i < n; ++i) {
            dr[i] = xr[i] == std::numeric_limits<float>::infinity() ? static_cast<float>(scale)
                                                                      : 0.0f;
          }
        } else {
          const float mf = static_cast<float>(m);
          double buf[16];
          int64_t i = 0;
          for (; i + 16 <= n; i += 16) {
            Exp16(xr + i, mf, buf);
            for (int l = 0; l < 16; ++l) dr[i + l] = static_cast<float>(buf[l] * scale);
          }
          if (i < n) {
            float pad[16];
            for (int l = 0; l < 16; ++l) {
              pad[l] = i + l < n ? xr[i + l] : -std::numeric_limits<float>::infinity();
            }
            Exp16(pad, mf, buf);
            for (int64_t l = 0; i + l < n; ++l) dr[i + l] = static_cast<float>(buf[l] * scale);
          }
        }
      }
    });
  }

 private:
  int kind_;
};

class SoftplusOp : public OpKernel {
 public:
  explicit SoftplusOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& in = ctx->input(0);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, in.shape(), &out));
    const int64_t n = in.NumElements();
    if (n == 0) return;
    const float* x = in.flat<float>().data();
    float* y = out->flat<float>().data();
    ParallelFor(ctx, n, 60, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const double d = x[i];
        // NaN: fabs, exp and log1p propagate it (the 0 of the max is added to NaN)
        y[i] = static_cast<float>((d > 0.0 ? d : 0.0) + std::log1p(std::exp(-std::fabs(d))));
      }
    });
  }
};

// log1p(e) for e in [0, 1] (NaN propagates). float: 2 atanh(s), s = e / (2 + e), as
// u + ulo + u s^2 (1/3 + s^2/5 + ... + s^14/17) with u + ulo = 2s (the rounding errors of
// 2 + e and of the quotient recovered by Fast2Sum and an FMA residual); s <= 1/3, so the
// series' tail is below 2^-31 of the result, and all but u is a correction below 1/10 of
// it: within ~0.6 ulp, where Eigen's generic log1p, x log(1 + x) / ((1 + x) - 1), measures
// up to 4. double: Eigen's.
template <typename Packet>
inline Packet Log1pUnit(const Packet& e) {
  return Eigen::internal::plog1p(e);
}

template <>
inline Eigen::internal::packet_traits<float>::type Log1pUnit(
    const Eigen::internal::packet_traits<float>::type& e) {
  using namespace Eigen::internal;  // NOLINT: the packet functions
  typedef packet_traits<float>::type Packet;
  const Packet two = pset1<Packet>(2.0f);
  const Packet t = padd(two, e);
  const Packet terr = padd(psub(two, t), e);  // (2 + e) - t exactly (2 >= e)
  const Packet e2 = padd(e, e);
  const Packet u = pdiv(e2, t);                 // 2s, not s: s underflows for e < 2^-125
  const Packet r = pnmadd(u, t, e2);            // 2e - u t exactly (FMA)
  const Packet ulo = pdiv(psub(r, pmul(u, terr)), t);  // 2e / (2 + e) - u, to first order
  const Packet z = pmul(pmul(u, u), pset1<Packet>(0.25f));  // s^2
  Packet p = pset1<Packet>(1.0f / 17);
  p = pmadd(p, z, pset1<Packet>(1.0f / 15));
  p = pmadd(p, z, pset1<Packet>(1.0f / 13));
  p = pmadd(p, z, pset1<Packet>(1.0f / 11));
  p = pmadd(p, z, pset1<Packet>(1.0f / 9));
  p = pmadd(p, z, pset1<Packet>(1.0f / 7));
  p = pmadd(p, z, pset1<Packet>(1.0f / 5));
  p = pmadd(p, z, pset1<Packet>(1.0f / 3));
  return padd(u, pmadd(pmul(u, z), p, ulo));
}

// softplus / log_sigmoid (kind: 0 / 1) and their gradients, one Eigen packet at a time.
template <typename T>
struct Logistic {
  static constexpr const char* kSecondKind = "log_sigmoid";
  typedef typename Eigen::internal::packet_traits<T>::type Packet;
  static constexpr int kSize = Eigen::internal::unpacket_traits<Packet>::size;

  static inline Packet Forward(const Packet& x, bool log_sigmoid) {
    using namespace Eigen::internal;  // NOLINT: the packet functions
    const Packet zero = pset1<Packet>(T(0));
    const Packet l = Log1pUnit(pexp(pnegate(pabs(x))));
    const Packet y = log_sigmoid ? psub(pmin(x, zero), l) : padd(pmax(x, zero), l);
    return pselect(pcmp_eq(x, x), y, x);  // NaN in, NaN out (whatever pmin/pmax do)
  }

  static inline Packet Backward(const Packet& g, const Packet& x, bool log_sigmoid) {
    using namespace Eigen::internal;  // NOLINT
    const Packet zero = pset1<Packet>(T(0));
    const Packet one = pset1<Packet>(T(1));
    const Packet e = pexp(pnegate(pabs(x)));
    const Packet den = padd(one, e);
    // sigmoid(t) = 1/(1 + e) for t >= 0, e/(1 + e) below; t = x or -x
    const Packet big = log_sigmoid ? pcmp_le(x, zero) : pcmp_le(zero, x);
    const Packet s = pselect(big, pdiv(one, den), pdiv(e, den));
    return pmul(g, pselect(pcmp_eq(x, x), s, x));
  }

  // out[i] = Forward(x[i]) (g == nullptr) or Backward(g[i], x[i]) for i < n, in packets
  static void Run(OpKernelContext* ctx, int64_t n, const T* g, const T* x, T* out,
                  bool log_sigmoid) {
    const int64_t packets = (n + kSize - 1) / kSize;
    ParallelFor(ctx, packets, 40 * kSize, [&](int64_t lo, int64_t hi) {
      using namespace Eigen::internal;  // NOLINT
      for (int64_t p = lo; p < hi; ++p) {
        const int64_t i = p * kSize;
        if (i + kSize <= n) {
          const Packet xv = ploadu<Packet>(x + i);
          pstoreu(out + i, g ? Backward(ploadu<Packet>(g + i), xv, log_sigmoid)
                             : Forward(xv, log_sigmoid));
          continue;
        }
        T xb[kSize], gb[kSize], ob[kSize];  // the tail, padded with zeros
        for (int l = 0; l < kSize; ++l) {
          xb[l] = i + l < n ? x[i + l] : T(0);
          gb[l] = g && i + l < n ? g[i + l] : T(0);
        }
        const Packet xv = ploadu<Packet>(xb);
        pstoreu(ob, g ? Backward(ploadu<Packet>(gb), xv, log_sigmoid)
                      : Forward(xv, log_sigmoid));
        for (int64_t l = 0; i + l < n; ++l) out[i + l] = ob[l];
      }
    });
  }
};

// softplus_inverse / log1mexp (log1mexp: false / true) of float32 in double, value or slope.
struct LogExpm1 {
  static constexpr const char* kSecondKind = "log1mexp";
  typedef Eigen::internal::packet_traits<double>::type Packet;
  static constexpr int kSize = Eigen::internal::unpacket_traits<Packet>::size;
  static constexpr double kLn2 = 0.69314718055994530942;
  // 1 / k! for k = 0..16 (k! exact in double, one rounding each)
  static constexpr double kInvFactorial[17] = {
      1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
      1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0,
      1.0 / 87178291200.0, 1.0 / 1307674368000.0, 1.0 / 20922789888000.0};

  // expm1(t) / t for |t| <= log 2: its Taylor series sum_k t^(k-1) / k!, k = 1..16, by
  // Horner (the first term left out, (log 2)^16 / 17!, is below 2^-56 of the sum)
  static inline Packet Expm1OverT(const Packet& t) {
    using namespace Eigen::internal;  // NOLINT: the packet functions
    Packet p = pset1<Packet>(kInvFactorial[16]);
    for (int k = 15; k >= 1; --k) p = pmadd(p, t, pset1<Packet>(kInvFactorial[k]));
    return p;
  }

  // expm1(t): t (expm1(t) / t) for |t| <= log 2, exp(t) - 1 above (exp(t) >= 2 there: the
  // subtraction at most doubles exp's relative error); -1 at -inf, +inf at +inf
  static inline Packet Expm1(const Packet& t) {
    using namespace Eigen::internal;  // NOLINT
    const Packet near = pcmp_le(pabs(t), pset1<Packet>(kLn2));
    return pselect(near, pmul(t, Expm1OverT(t)), psub(pexp(t), pset1<Packet>(1.0)));
  }

  static inline Packet Value(const Packet& c, bool log1mexp) {
    using namespace Eigen::internal;  // NOLINT
    const Packet one = pset1<Packet>(1.0);
    Packet y;
    if (log1mexp) {
      // a <= log 2: log(-expm1(-a)), -expm1(-a) = a (expm1(-a) / -a); above: log1p(-u), u =
      // exp(-a) <= 1/2, by Kahan's log(w) (-u / (w - 1)), w = 1 - u (-u where w rounds to 1)
      const Packet a = pabs(c);
      const Packet near = pcmp_le(a, pset1<Packet>(kLn2));
      const Packet nu = pnegate(pexp(pnegate(a)));
      const Packet w = pselect(near, pmul(a, Expm1OverT(pnegate(a))), padd(one, nu));
      const Packet l = plog(w);
      const Packet wm1 = psub(w, one);
      const Packet far = pselect(pcmp_eq(wm1, pset1<Packet>(0.0)), nu, pmul(l, pdiv(nu, wm1)));
      y = pselect(near, l, far);
    } else {
      const Packet top = pset1<Packet>(40.0);
      y = pselect(pcmp_lt(c, top), plog(Expm1(pmin(c, top))), c);
    }
    return pselect(pcmp_eq(c, c), y, c);  // NaN in, NaN out
  }

  static inline Packet Slope(const Packet& c, bool log1mexp) {
    using namespace Eigen::internal;  // NOLINT
    const Packet zero = pset1<Packet>(0.0);
    const Packet one = pset1<Packet>(1.0);
    Packet d;
    if (log1mexp) {
      const Packet em = Expm1(pabs(c));
      const Packet sign = pselect(pcmp_lt(c, zero), pset1<Packet>(-1.0), one);
      d = pselect(pcmp_eq(em, zero), zero, pdiv(sign, em));
    } else {
      d = padd(one, pdiv(one, Expm1(pmin(c, pset1<Packet>(40.0)))));
    }
    const Packet big = pset1<Packet>(static_cast<double>(std::numeric_limits<float>::max()));
    d = pselect(pcmp_lt(big, d), big, pselect(pcmp_lt(d, pnegate(big)), pnegate(big), d));
    return pselect(pcmp_eq(c, c), d, c);
  }

  // kSize floats from p, widened (one conversion instruction where Eigen's double packet is
  // an AVX or AVX-512 register: a widening through a double buffer stalls on store
  // forwarding and measured twice the time of the whole element's arithmetic)
  static inline Packet LoadWidened(const float* p) {
#if defined(EIGEN_VECTORIZE_AVX512)
    return _mm512_cvtps_pd(_mm256_loadu_ps(p));
#elif defined(EIGEN_VECTORIZE_AVX)
    return _mm256_cvtps_pd(_mm_loadu_ps(p));
#else
    double b[kSize];
    for (int l = 0; l < kSize; ++l) b[l] = static_cast<double>(p[l]);
    return Eigen::internal::ploadu<Packet>(b);
#endif
  }

  // p[l] = float(y[l]), times g[l] in float32 where g is given, l < kSize
  static inline void StoreNarrowed(float* p, const Packet& y, const float* g) {
#if defined(EIGEN_VECTORIZE_AVX512)
    const __m256 v = _mm512_cvtpd_ps(y);
    _mm256_storeu_ps(p, g ? _mm256_mul_ps(_mm256_loadu_ps(g), v) : v);
#elif defined(EIGEN_VECTORIZE_AVX)
    const __m128 v = _mm256_cvtpd_ps(y);
    _mm_storeu_ps(p, g ? _mm_mul_ps(_mm_loadu_ps(g), v) : v);
#else
    double b[kSize];
    Eigen::internal::pstoreu(b, y);
    for (int l = 0; l < kSize; ++l) {
      p[l] = g ? g[l] * static_cast<float>(b[l]) : static_cast<float>(b[l]);
    }
#endif
  }

  // out[i] = Value(x[i]) (g == nullptr) or g[i] * Slope(x[i]) for i < n, kSize at a time
  static void Run(OpKernelContext* ctx, int64_t n, const float* g, const float* x, float* out,
                  bool log1mexp) {
    const int64_t packets = (n + kSize - 1) / kSize;
    ParallelFor(ctx, packets, 100 * kSize, [&](int64_t lo, int64_t hi) {
      using namespace Eigen::internal;  // NOLINT
      double xb[kSize], yb[kSize];
      for (int64_t p = lo; p < hi; ++p) {
        const int64_t i = p * kSize;
        if (i + kSize <= n) {
          const Packet c = LoadWidened(x + i);
          StoreNarrowed(out + i, g ? Slope(c, log1mexp) : Value(c, log1mexp), g ? g + i : g);
          continue;
        }
        const int64_t m = n - i;  // the tail, padded with ones
        for (int l = 0; l < kSize; ++l) xb[l] = l < m ? static_cast<double>(x[i + l]) : 1.0;
        const Packet c = ploadu<Packet>(xb);
        pstoreu(yb, g ? Slope(c, log1mexp) : Value(c, log1mexp));
        for (int64_t l = 0; l < m; ++l) {
          out[i + l] = g ? g[i + l] * static_cast<float>(yb[l]) : static_cast<float>(yb[l]);
        }
      }
    });
  }
};

// Whether the op's `kind` attribute is `second` (the op's attribute constraint admits two
// names; the kernels below take the other as false).
bool KindIs(OpKernelConstruction* ctx, const char* second) {
  std::string kind;
  ::tensorflow::Status status = ctx->GetAttr("kind", &kind);
  if (!status.ok()) ctx->CtxFailure(__FILE__, __LINE__, status);
  return kind == second;
}

// The forward (inputs x) or backward (inputs g, x of one shape) of an element-wise pair of
// functions F (Logistic<T>, LogExpm1) chosen by the `kind` attribute.
template <typename T, typename F, bool kBackward>
class KindElementwiseOp : public OpKernel {
 public:
  explicit KindElementwiseOp(OpKernelConstruction* ctx)
      : OpKernel(ctx), second_(KindIs(ctx, F::kSecondKind)) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(kBackward ? 1 : 0);
    const T* g = nullptr;
    if (kBackward) {
      const Tensor& gt = ctx->input(0);
      OP_REQUIRES(ctx, gt.shape() == x.shape(),
                  ::tensorflow::errors::InvalidArgument(
                      type_string(), ": g and x must have one shape, got ",
                      gt.shape().DebugString(), " and ", x.shape().DebugString()));
      g = gt.flat<T>().data();
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &out));
    const int64_t n = x.NumElements();
    if (n == 0) return;
    F::Run(ctx, n, g, x.flat<T>().data(), out->flat<T>().data(), second_);
  }

 private:
  const bool second_;
};

// outputs: the shape of g and x, merged (the kernels check it again at run time)
::tensorflow::Status GradShape(shape_inference::InferenceContext* c) {
  shape_inference::ShapeHandle out;
  TF_RETURN_IF_ERROR(c->Merge(c->input(0), c->input(1), &out));
  c->set_output(0, out);
  return ::tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("SafeopsLogistic")
    .Input("x: T")
    .Output("y: T")
    .Attr("T: {float, double}")
    .Attr("kind: {'softplus', 'log_sigmoid'}")
    .SetShapeFn(shape_inference::UnchangedShape);

REGISTER_OP("SafeopsLogisticGrad")
    .Input("g: T")
    .Input("x: T")
    .Output("dx: T")
    .Attr("T: {float, double}")
    .Attr("kind: {'softplus', 'log_sigmoid'}")
    .SetShapeFn(GradShape);

REGISTER_OP("SafeopsLogExpm1")
    .Input("x: float")
    .Output("y: float")
    .Attr("kind: {'softplus_inverse', 'log1mexp'}")
    .SetShapeFn(shape_inference::UnchangedShape);

REGISTER_OP("SafeopsLogExpm1Grad")
    .Input("g: float")
    .Input("x: float")
    .Output("dx: float")
    .Attr("kind: {'softplus_inverse', 'log1mexp'}")
    .SetShapeFn(GradShape);

REGISTER_OP("SafeopsSoftplus")
    .Input("x: float")
    .Output("y: float")
    .SetShapeFn(shape_inference::UnchangedShape);

REGISTER_OP("SafeopsSoftmax")
    .Input("x: float")
    .Output("y: float")
    .Output("stats: double")
    .Attr("kind: {'softmax', 'log_softmax', 'logsumexp'}")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
      std::string kind;
      TF_RETURN_IF_ERROR(c->GetAttr("kind", &kind));
      c->set_output(0, kind == "logsumexp" ? c->MakeShape({c->Dim(x, 0), 1}) : x);
      c->set_output(1, c->MakeShape({c->Dim(x, 0), 2}));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("SafeopsSoftmaxGrad")
    .Input("g: float")
    .Input("x: float")
    .Input("y: float")
    .Input("stats: double")
    .Output("dx: float")
    .Attr("kind: {'softmax', 'log_softmax', 'logsumexp'}")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle x, g, y, st, out_rows;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &x));
      std::string kind;
      TF_RETURN_IF_ERROR(c->GetAttr("kind", &kind));
      out_rows = kind == "logsumexp" ? c->MakeShape({c->Dim(x, 0), 1}) : x;
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), out_rows, &g));
      TF_RETURN_IF_ERROR(c->Merge(c->input(2), out_rows, &y));
      TF_RETURN_IF_ERROR(c->Merge(c->input(3), c->MakeShape({c->Dim(x, 0), 2}), &st));
      c->set_output(0, x);
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("SafeopsSoftplus").Device(::tensorflow::DEVICE_CPU), SoftplusOp);
#define SAFEOPS_REGISTER_LOGISTIC(T)                                                       \
  REGISTER_KERNEL_BUILDER(                                                                   \
      Name("SafeopsLogistic").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),       \
      KindElementwiseOp<T, Logistic<T>, false>);                                             \
  REGISTER_KERNEL_BUILDER(                                                                   \
      Name("SafeopsLogisticGrad").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),   \
      KindElementwiseOp<T, Logistic<T>, true>);
SAFEOPS_REGISTER_LOGISTIC(float)
SAFEOPS_REGISTER_LOGISTIC(double)
#undef SAFEOPS_REGISTER_LOGISTIC
REGISTER_KERNEL_BUILDER(Name("SafeopsLogExpm1").Device(::tensorflow::DEVICE_CPU),
                        KindElementwiseOp<float, LogExpm1, false>);
REGISTER_KERNEL_BUILDER(Name("SafeopsLogExpm1Grad").Device(::tensorflow::DEVICE_CPU),
                        KindElementwiseOp<float, LogExpm1, true>);
REGISTER_KERNEL_BUILDER(Name("SafeopsSoftmax").Device(::tensorflow::DEVICE_CPU), SoftmaxOp);
REGISTER_KERNEL_BUILDER(Name("SafeopsSoftmaxGrad").Device(::tensorflow::DEVICE_CPU),
                        SoftmaxGradOp);

}  // namespace safeops_softmax

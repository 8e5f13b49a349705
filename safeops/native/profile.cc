// SafeopsProfileSweep: the precision profiler's statistics of one float64 reference r and the
// tensors ys compared with it, in two passes over the data (safeops/doctor/_stats.py, `sweep`).
//
// Inputs: r float64 [n]; ys, a list of K tensors of n elements (half, bfloat16, float or
// double, each its own dtype); scalars down = 2^-p, tiny, divisor (float64; divisor a power
// of two or 1). Output: float64 [3 K + 4]:
//   per y k: S_k = sum log(clip(t, 1, 2^p)), T_k = sum t, M_k = max t, with
//            t = |y / divisor - r| / (max(|r|, rms) * down), rms = sqrt(sum r^2 / n);
//   then max |r|, the count of r != 0, the count of |r| < tiny, and sum r^2.
// t is the relative error of `_bits.rel_errors` times 2^p (scaling by powers of two is
// exact), formed with the reciprocal of its denominator (computed once for all ys): within
// 2^-52 relative of the quotient. Only finite references and finite t are meaningful: the caller checks that sum r^2
// and every T_k are finite, and recomputes everything with masks otherwise (NaN or inf in an
// input reaches a T_k or sum r^2; the clipped logs and maxima of such an input are not used).
//
// The logs: sum log c over a block is the sum of the logs of products of `group` consecutive
// clipped values (group: the largest power of two with group * p <= 1000, so no product
// overflows), each product rounded group - 1 times (relative 2^-53 each): the sum is within
// (group - 1) 2^-53 per product of the sum of one log per value, as in `_stats._log_sum`.
//
// Arithmetic order: the data is cut into blocks of kBlock elements (a function of n only);
// each block's sums are taken in element order, and the blocks' partial results are added in
// block order after the parallel pass. The bits depend on the shape and values only, never on
// the thread count.
//
// Every input's rank, size and dtype is checked before any is read.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "Eigen/Core"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

#include "common.h"

namespace safeops_profile {
namespace {

using ::safeops_native::ParallelFor;
using ::tensorflow::DataType;
using ::tensorflow::OpInputList;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
namespace errors = ::tensorflow::errors;

constexpr int64_t kBlock = 1 << 14;  // elements per unit of work (shape-only partition)
constexpr int kMaxLists = 8;         // most tensors compared with one reference

// The largest power of two g with g * p <= 1000 (at least 1).
int64_t Group(double p) {
  int64_t g = 1;
  while (static_cast<double>(2 * g) * p <= 1000.0 && g < (int64_t{1} << 20)) g *= 2;
  return g;
}

inline double AsDouble(double v) { return v; }
inline double AsDouble(float v) { return static_cast<double>(v); }
inline double AsDouble(Eigen::half v) { return static_cast<double>(static_cast<float>(v)); }
inline double AsDouble(Eigen::bfloat16 v) { return static_cast<double>(static_cast<float>(v)); }

struct Consts {
  double down, top, inv, rms;
  int64_t steps;  // vector steps per product: kW * steps values per lane group
};

constexpr int kW = 8;
typedef double VD __attribute__((vector_size(8 * kW)));
typedef float VF __attribute__((vector_size(4 * kW)));

inline VD Splat(double v) { return VD{} + v; }
inline VD AbsV(VD v) { return v < 0.0 ? -v : v; }
inline VD MaxV(VD a, VD b) { return a > b ? a : b; }
inline VD MinV(VD a, VD b) { return a < b ? a : b; }

template <typename T>
inline VD Load(const T* p) {
  VD v;
  for (int l = 0; l < kW; ++l) v[l] = AsDouble(p[l]);
  return v;
}
template <>
inline VD Load<double>(const double* p) {
  VD v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <>
inline VD Load<float>(const float* p) {
  VF f;
  std::memcpy(&f, p, sizeof(f));
  return __builtin_convertvector(f, VD);
}
typedef uint16_t VU16 __attribute__((vector_size(2 * kW)));
typedef uint32_t VU32 __attribute__((vector_size(4 * kW)));
template <>
inline VD Load<Eigen::bfloat16>(const Eigen::bfloat16* p) {  // the top half of a float
  VU16 h;
  std::memcpy(&h, p, sizeof(h));
  const VU32 w = __builtin_convertvector(h, VU32) << 16;
  VF f;
  std::memcpy(&f, &w, sizeof(f));
  return __builtin_convertvector(f, VD);
}
#if defined(__F16C__)
template <>
inline VD Load<Eigen::half>(const Eigen::half* p) {
  const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  VF v;
  std::memcpy(&v, &f, sizeof(v));
  return __builtin_convertvector(v, VD);
}
#endif

// S, T, M of y against r over [0, len): `dinv` holds 1 / (max(|r|, rms) down) per element
// (one rounding more than a division: t within 2^-52 relative of the quotient).
template <typename T>
void CompareBlock(const double* r, const double* dinv, const T* y, int64_t len,
                  const Consts& k, double* out) {
  const VD one = Splat(1.0), top = Splat(k.top), inv = Splat(k.inv);
  VD sum = VD{}, mx = VD{}, prod = one, logs = VD{};
  int64_t i = 0, step = 0;
  for (; i + kW <= len; i += kW) {
    const VD t = AbsV(Load<T>(y + i) * inv - Load<double>(r + i)) * Load<double>(dinv + i);
    sum += t;
    mx = MaxV(mx, t);
    prod *= MinV(MaxV(t, one), top);
    if (++step == k.steps) {
      for (int l = 0; l < kW; ++l) logs[l] += std::log(prod[l]);
      prod = one;
      step = 0;
    }
  }
  double s = 0.0, m = 0.0, lg = 0.0, pr = 1.0;
  for (; i < len; ++i) {  // the tail: one product of at most kW - 1 values
    const double t = std::fabs(AsDouble(y[i]) * k.inv - r[i]) * dinv[i];
    s += t;
    m = std::max(m, t);
    pr *= std::min(std::max(t, 1.0), k.top);
  }
  lg = std::log(pr);
  for (int l = 0; l < kW; ++l) {
    if (step) lg += std::log(prod[l]);
    lg += logs[l];
    s += sum[l];
    m = std::max(m, mx[l]);
  }
  out[0] = lg;
  out[1] = s;
  out[2] = m;
}

// sum x^2 over [0, len) in kW lanes (added lane by lane at the end).
double SumSquares(const double* x, int64_t len) {
  VD acc = VD{};
  int64_t i = 0;
  for (; i + kW <= len; i += kW) {
    const VD v = Load<double>(x + i);
    acc += v * v;
  }
  double s = 0.0;
  for (; i < len; ++i) s += x[i] * x[i];
  for (int l = 0; l < kW; ++l) s += acc[l];
  return s;
}

// dinv[i] = 1 / (max(|r_i|, rms) down); out: max |r|, the count of r != 0, of |r| < tiny.
void Reciprocals(const double* r, int64_t len, const Consts& k, double tiny, double* dinv,
                 double* out) {
  const VD rms = Splat(k.rms), down = Splat(k.down), one = Splat(1.0), zero = VD{},
           small = Splat(tiny);
  VD amax = VD{}, nz = VD{}, under = VD{};
  int64_t i = 0;
  for (; i + kW <= len; i += kW) {
    const VD a = AbsV(Load<double>(r + i));
    const VD d = one / (MaxV(a, rms) * down);
    std::memcpy(dinv + i, &d, sizeof(d));
    amax = MaxV(amax, a);
    nz += a != 0.0 ? one : zero;
    under += a < small ? one : zero;
  }
  double m = 0.0, z = 0.0, u = 0.0;
  for (; i < len; ++i) {
    const double a = std::fabs(r[i]);
    dinv[i] = 1.0 / (std::max(a, k.rms) * k.down);
    m = std::max(m, a);
    z += a != 0.0 ? 1.0 : 0.0;
    u += a < tiny ? 1.0 : 0.0;
  }
  for (int l = 0; l < kW; ++l) {
    m = std::max(m, amax[l]);
    z += nz[l];
    u += under[l];
  }
  out[0] = m;
  out[1] = z;
  out[2] = u;
}

template <typename T>
void CompareBlockOf(const Tensor& y, int64_t lo, const double* r, const double* dinv,
                    int64_t len, const Consts& k, double* out) {
  CompareBlock<T>(r, dinv, y.flat<T>().data() + lo, len, k, out);
}

class ProfileSweepOp : public OpKernel {
 public:
  explicit ProfileSweepOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& r = ctx->input(0);
    OP_REQUIRES(ctx, r.dims() == 1,
                errors::InvalidArgument("SafeopsProfileSweep: input 'r' must be rank 1; got "
                                        "shape ", r.shape().DebugString()));
    OpInputList ys;
    OP_REQUIRES_OK(ctx, ctx->input_list("ys", &ys));
    const int nys = ys.size();
    OP_REQUIRES(ctx, nys <= kMaxLists,
                errors::InvalidArgument("SafeopsProfileSweep: at most ", kMaxLists,
                                        " tensors in 'ys'; got ", nys));
    const int64_t n = r.dim_size(0);
    for (int j = 0; j < nys; ++j) {
      OP_REQUIRES(ctx, ys[j].NumElements() == n,
                  errors::InvalidArgument("SafeopsProfileSweep: ys[", j, "] has ",
                                          ys[j].NumElements(), " elements; 'r' has ", n));
      const DataType d = ys[j].dtype();
      OP_REQUIRES(ctx, d == ::tensorflow::DT_DOUBLE || d == ::tensorflow::DT_FLOAT ||
                           d == ::tensorflow::DT_HALF || d == ::tensorflow::DT_BFLOAT16,
                  errors::InvalidArgument("SafeopsProfileSweep: ys[", j, "] must be a float "
                                          "tensor"));
    }
    double scalars[3];
    const char* names[3] = {"down", "tiny", "divisor"};
    for (int s = 0; s < 3; ++s) {
      const Tensor& v = ctx->input(1 + s);
      OP_REQUIRES(ctx, v.dims() == 0,
                  errors::InvalidArgument("SafeopsProfileSweep: input '", names[s],
                                          "' must be a scalar; got shape ",
                                          v.shape().DebugString()));
      scalars[s] = v.scalar<double>()();
    }
    const double down = scalars[0], tiny = scalars[1], divisor = scalars[2];
    OP_REQUIRES(ctx, down > 0.0 && down <= 1.0 && std::isfinite(1.0 / down),
                errors::InvalidArgument("SafeopsProfileSweep: 'down' must be in (0, 1]; got ",
                                        down));
    OP_REQUIRES(ctx, std::isfinite(divisor) && divisor > 0.0,
                errors::InvalidArgument("SafeopsProfileSweep: 'divisor' must be finite and "
                                        "positive; got ", divisor));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({3 * nys + 4}), &out));
    double* res = out->flat<double>().data();

    const double* x = r.flat<double>().data();
    const int64_t nb = (n + kBlock - 1) / kBlock;
    // pass 1: sum r^2 per block, added in block order
    std::vector<double> sq(nb, 0.0);
    ParallelFor(ctx, nb, kBlock * 2, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
        sq[b] = SumSquares(x + lo, hi - lo);
      }
    });
    double sum_sq = 0.0;
    for (int64_t b = 0; b < nb; ++b) sum_sq += sq[b];
    Consts k;
    k.down = down;
    k.top = 1.0 / down;
    k.inv = 1.0 / divisor;
    k.rms = n > 0 ? std::sqrt(sum_sq / static_cast<double>(n)) : 0.0;
    k.steps = Group(-std::log2(down));
    // pass 2: per block, per y (S, T, M), then (max |r|, non-zero, |r| < tiny)
    const int width = 3 * nys + 3;
    std::vector<double> part(nb * width, 0.0);
    ParallelFor(ctx, nb, kBlock * (4 + 4 * nys), [&](int64_t b0, int64_t b1) {
      std::vector<double> dinv(kBlock);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t lo = b * kBlock, len = std::min(n, lo + kBlock) - lo;
        double* p = &part[b * width];
        Reciprocals(x + lo, len, k, tiny, dinv.data(), p + 3 * nys);
        for (int j = 0; j < nys; ++j) {
          double* o = p + 3 * j;
          switch (ys[j].dtype()) {
            case ::tensorflow::DT_DOUBLE:
              CompareBlockOf<double>(ys[j], lo, x + lo, dinv.data(), len, k, o);
              break;
            case ::tensorflow::DT_FLOAT:
              CompareBlockOf<float>(ys[j], lo, x + lo, dinv.data(), len, k, o);
              break;
            case ::tensorflow::DT_HALF:
              CompareBlockOf<Eigen::half>(ys[j], lo, x + lo, dinv.data(), len, k, o);
              break;
            default:
              CompareBlockOf<Eigen::bfloat16>(ys[j], lo, x + lo, dinv.data(), len, k, o);
              break;
          }
        }
      }
    });
    for (int c = 0; c < width; ++c) res[c] = 0.0;
    for (int64_t b = 0; b < nb; ++b) {
      const double* p = &part[b * width];
      for (int j = 0; j < nys; ++j) {
        res[3 * j] += p[3 * j];
        res[3 * j + 1] += p[3 * j + 1];
        res[3 * j + 2] = std::max(res[3 * j + 2], p[3 * j + 2]);
      }
      res[3 * nys] = std::max(res[3 * nys], p[3 * nys]);
      res[3 * nys + 1] += p[3 * nys + 1];
      res[3 * nys + 2] += p[3 * nys + 2];
    }
    res[3 * nys + 3] = sum_sq;
  }
};

}  // namespace

REGISTER_OP("SafeopsProfileSweep")
    .Input("r: double")
    .Input("down: double")
    .Input("tiny: double")
    .Input("divisor: double")
    .Input("ys: T")
    .Output("figures: double")
    .Attr("T: list({half, bfloat16, float, double}) >= 1")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      std::vector<::tensorflow::DataType> types;
      TF_RETURN_IF_ERROR(c->GetAttr("T", &types));
      c->set_output(0, c->MakeShape({static_cast<int64_t>(3 * types.size() + 4)}));
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("SafeopsProfileSweep").Device(::tensorflow::DEVICE_CPU),
                        ProfileSweepOp);

}  // namespace safeops_profile

// safeops fused CPU kernels for the compensated reductions.
//
// Built from the installed package by safeops/native/__init__.py with the
// compiler flags TensorFlow reports (tf.sysconfig); loaded with
// tf.load_op_library. Where it cannot be built or loaded, or the op runs under
// XLA or on a GPU, safeops uses its pure-TF path instead (same error bounds).
//
// Arithmetic: every element is converted exactly to double and added with
// TwoSum (Knuth) into one of kLanes independent (sum, compensation) pairs;
// lanes, then fixed-size blocks, then at most kMaxSplit segments of blocks
// are combined with TwoSum in a fixed order. The partition depends only on
// the shape, never on the thread count, so a result is reproducible run to
// run. This is Ogita-Rump-Oishi Sum2 in double:
//   |S - sum x| <= u64 |sum x| + gamma64_{n-1}^2 sum |x|,
// then one rounding to the output dtype. Compile with -ffp-contract=off and
// without -ffast-math: TwoSum must run exactly as written.
//
// Memory: besides its output a reduction holds at most kSplitBudget (s, c)
// pairs of partial sums (1 MiB) plus a few KiB of stack per thread, whatever
// the axis layout; a scan holds two pairs per 32768-element block.
//
// Every kernel checks the ranks, shapes and dtypes of its inputs before it
// reads them (a crafted graph or SavedModel reaches these ops directly).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

#include "common.h"

namespace safeops {
namespace {

using ::safeops_native::ParallelFor;
using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
namespace shape_inference = ::tensorflow::shape_inference;

constexpr int kLanes = 32;             // independent accumulators (latency, SIMD)
constexpr int64_t kBlock = 1 << 15;    // elements per work unit
constexpr int64_t kCols = 512;         // columns per unit when reducing a non-last axis
constexpr int64_t kMaxSplit = 64;      // most segments one output's blocks are cut into
constexpr int64_t kSplitBudget = 1 << 16;  // most partial (s, c) pairs held at once (1 MiB)

struct DW {
  double s;
  double c;
};

// TwoSum: s + e == a + b exactly (round to nearest, no FMA involved).
inline void TwoSum(double a, double b, double* s, double* e) {
  const double x = a + b;
  const double z = x - a;
  *e = (a - (x - z)) + (b - z);
  *s = x;
}

inline void Add(DW* acc, double v) {
  double e;
  TwoSum(acc->s, v, &acc->s, &e);
  acc->c += e;
}

inline void Merge(DW* acc, const DW& o) {
  double e;
  TwoSum(acc->s, o.s, &acc->s, &e);
  acc->c += e + o.c;
}

// The compensation is dropped where an EFT overflowed (inf - inf = NaN) while
// the sum did not: NaN/inf then propagate exactly as in IEEE summation.
inline double Finish(const DW& a) { return std::isfinite(a.c) ? a.s + a.c : a.s; }

template <typename T>
T Round(const DW& a, bool mean, double n);

template <>
float Round<float>(const DW& a, bool mean, double n) {
  const double s = Finish(a);
  return static_cast<float>(mean ? s / n : s);
}

template <>
double Round<double>(const DW& a, bool mean, double n) {
  if (!mean) return Finish(a);
  // (s + c) / n as q + r: q = fl(s / n), s - q n exactly by FMA.
  const double q = a.s / n;
  if (!std::isfinite(q) || !std::isfinite(a.c)) return q;
  const double rem = std::fma(-q, n, a.s);
  const double r = (rem + a.c) / n;
  return std::isfinite(r) ? q + r : q;
}

// kW doubles as one vector (GCC/Clang vector extensions): one AVX-512
// register where the build enables it, split into AVX2/SSE2 parts otherwise;
// TwoSum stays exact either way.
constexpr int kW = 8;
typedef double VD __attribute__((vector_size(8 * kW)));
typedef float VF __attribute__((vector_size(4 * kW)));

inline VD LoadW(const float* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<VD>(_mm512_cvtps_pd(_mm256_loadu_ps(p)));  // one widening load
#else
  VF f;
  std::memcpy(&f, p, sizeof(f));
  return __builtin_convertvector(f, VD);
#endif
}

inline VD LoadW(const double* p) {
  VD d;
  std::memcpy(&d, p, sizeof(d));
  return d;
}

inline void TwoSumW(VD* s, VD* c, VD b) {
  const VD a = *s;
  const VD t = a + b;
  const VD z = t - a;
  *c += (a - (t - z)) + (b - z);
  *s = t;
}

// Sum of a contiguous span in kLanes (kLanes / kW vectors) interleaved lanes.
template <typename T>
DW SumSpan(const T* x, int64_t n) {
  constexpr int kVec = kLanes / kW;
  VD s[kVec], c[kVec];
  for (int k = 0; k < kVec; ++k) s[k] = c[k] = VD{};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kVec; ++k) TwoSumW(&s[k], &c[k], LoadW(x + i + kW * k));
  }
  DW r{0.0, 0.0};
  for (; i < n; ++i) Add(&r, static_cast<double>(x[i]));
  for (int k = 0; k < kVec; ++k) {
    for (int l = 0; l < kW; ++l) Merge(&r, DW{s[k][l], c[k][l]});
  }
  return r;
}

// Column sums of rows [r0, r1) of a [rows, inner] row-major slab, for
// columns [j0, j0 + m): (s, c) into out_s/out_c (length m).
template <typename T>
void SumColumns(const T* x, int64_t inner, int64_t r0, int64_t r1, int64_t j0, int64_t m,
                double* out_s, double* out_c) {
  VD s[kCols / kW], c[kCols / kW];
  const int64_t m4 = m / kW;
  for (int64_t k = 0; k < m4; ++k) s[k] = c[k] = VD{};
  DW tail[kW] = {};
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = x + r * inner + j0;
    for (int64_t k = 0; k < m4; ++k) TwoSumW(&s[k], &c[k], LoadW(row + kW * k));
    for (int64_t j = kW * m4; j < m; ++j) Add(&tail[j - kW * m4], static_cast<double>(row[j]));
  }
  for (int64_t k = 0; k < m4; ++k) {
    for (int l = 0; l < kW; ++l) {
      out_s[kW * k + l] = s[k][l];
      out_c[kW * k + l] = c[k][l];
    }
  }
  for (int64_t j = kW * m4; j < m; ++j) {
    out_s[j] = tail[j - kW * m4].s;
    out_c[j] = tail[j - kW * m4].c;
  }
}

// x as [outer, n, inner]: rank 3 as it is, rank 1 [n] as [1, n, 1] (a vector's sum or scan
// without the two reshapes around it, which cost more than the kernel on small tensors).
Status View3(const char* op, const Tensor& x, int64_t* outer, int64_t* n, int64_t* inner) {
  if (x.dims() == 1) {
    *outer = *inner = 1;
    *n = x.dim_size(0);
    return ::tensorflow::OkStatus();
  }
  if (x.dims() != 3) {
    return ::tensorflow::errors::InvalidArgument(op, ": input 'x' must be rank 3 [outer, n, "
                                                 "inner] or rank 1 [n]; got shape ",
                                                 x.shape().DebugString());
  }
  *outer = x.dim_size(0);
  *n = x.dim_size(1);
  *inner = x.dim_size(2);
  return ::tensorflow::OkStatus();
}

// The shape functions' side of View3: rank 1 or 3 (or unknown).
Status RankOneOrThree(shape_inference::InferenceContext* c, const char* op) {
  if (c->RankKnown(c->input(0)) && c->Rank(c->input(0)) != 1 && c->Rank(c->input(0)) != 3) {
    return ::tensorflow::errors::InvalidArgument(op, ": input 'x' must be rank 3 [outer, n, "
                                                 "inner] or rank 1 [n]");
  }
  return ::tensorflow::OkStatus();
}

// How many segments the nb blocks of each of `outputs` sums are cut into (segments run
// in parallel; their partial sums are merged in order). A function of the shape only,
// and above 1 only where outputs x segments partial sums fit in kSplitBudget.
int64_t Segments(int64_t outputs, int64_t nb) {
  const int64_t fit = kSplitBudget / std::max<int64_t>(1, outputs);
  return std::max<int64_t>(1, std::min(std::min(nb, kMaxSplit), fit));
}

// ---------------------------------------------------------------------------
// SafeopsCompensatedSum: [outer, n, inner] -> [outer, inner] (or [n] -> []), sum (or
// mean) over n, compensated, rounded once.

template <typename T>
class CompensatedSumOp : public OpKernel {
 public:
  explicit CompensatedSumOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("mean", &mean_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& in = ctx->input(0);
    int64_t outer, n, inner;
    OP_REQUIRES_OK(ctx, View3("SafeopsCompensatedSum", in, &outer, &n, &inner));
    // [outer, inner] can overflow where n == 0 (an empty input of huge dimensions); a
    // vector's sum is a scalar
    TensorShape out_shape;
    const int64_t dims[2] = {outer, inner};
    if (in.dims() == 3) {
      OP_REQUIRES_OK(ctx, ::tensorflow::TensorShapeUtils::MakeShape(dims, 2, &out_shape));
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    if (outer * inner == 0) return;
    const T* x = in.flat<T>().data();
    T* y = out->flat<T>().data();
    const double dn = static_cast<double>(n);
    if (inner == 1) {
      SumRows(ctx, x, outer, n, y, dn);
    } else {
      SumCols(ctx, x, outer, n, inner, y, dn);
    }
  }

 private:
  // inner == 1: each output is the sum of one contiguous row of n elements.
  void SumRows(OpKernelContext* ctx, const T* x, int64_t outer, int64_t n, T* y, double dn) {
    const int64_t nb = n == 0 ? 1 : (n + kBlock - 1) / kBlock;
    const int64_t segs = Segments(outer, nb);
    auto segment = [&](int64_t o, int64_t k) {
      DW acc{0.0, 0.0};
      for (int64_t b = k * nb / segs; b < (k + 1) * nb / segs; ++b) {
        const int64_t start = b * kBlock, len = std::min(kBlock, n - start);
        if (len > 0) Merge(&acc, SumSpan(x + o * n + start, len));
      }
      return acc;
    };
    const int64_t seg_cost = std::max<int64_t>(1, std::min(n, (nb / segs + 1) * kBlock)) * 6;
    if (segs == 1) {  // no partial sums held: each output straight from its row
      ParallelFor(ctx, outer, seg_cost, [&](int64_t lo, int64_t hi) {
        for (int64_t o = lo; o < hi; ++o) y[o] = Round<T>(segment(o, 0), mean_, dn);
      });
      return;
    }
    std::vector<DW> part(outer * segs);  // <= kSplitBudget pairs (Segments)
    ParallelFor(ctx, outer * segs, seg_cost, [&](int64_t lo, int64_t hi) {
      for (int64_t u = lo; u < hi; ++u) part[u] = segment(u / segs, u % segs);
    });
    for (int64_t o = 0; o < outer; ++o) {
      DW acc{0.0, 0.0};
      for (int64_t k = 0; k < segs; ++k) Merge(&acc, part[o * segs + k]);
      y[o] = Round<T>(acc, mean_, dn);
    }
  }

  // inner > 1: outputs are column sums of [n, inner] slabs, kCols columns per unit and
  // blocks of `rows` rows; a unit's state is on the stack of the thread running it.
  void SumCols(OpKernelContext* ctx, const T* x, int64_t outer, int64_t n, int64_t inner, T* y,
               double dn) {
    const int64_t ncc = (inner + kCols - 1) / kCols;  // column chunks
    const int64_t width = std::min(inner, kCols);
    const int64_t rows = std::max<int64_t>(1, kBlock / width);
    const int64_t nb = n == 0 ? 1 : (n + rows - 1) / rows;  // row blocks
    const int64_t segs = Segments(outer * inner, nb);
    // (s, c) of columns [j0, j0 + m) of slab o over segment k's blocks into as/ac
    auto segment = [&](int64_t o, int64_t j0, int64_t m, int64_t k, double* as, double* ac) {
      double bs[kCols], bc[kCols];
      for (int64_t j = 0; j < m; ++j) as[j] = ac[j] = 0.0;
      for (int64_t b = k * nb / segs; b < (k + 1) * nb / segs; ++b) {
        const int64_t r0 = b * rows, r1 = std::min(n, r0 + rows);
        if (r0 >= r1) continue;
        SumColumns(x + o * n * inner, inner, r0, r1, j0, m, bs, bc);
        for (int64_t j = 0; j < m; ++j) {
          DW acc{as[j], ac[j]};
          Merge(&acc, DW{bs[j], bc[j]});
          as[j] = acc.s;
          ac[j] = acc.c;
        }
      }
    };
    const int64_t seg_cost =
        std::max<int64_t>(1, std::min(n, (nb / segs + 1) * rows)) * width * 6;
    if (segs == 1) {
      ParallelFor(ctx, outer * ncc, seg_cost, [&](int64_t lo, int64_t hi) {
        double as[kCols], ac[kCols];
        for (int64_t v = lo; v < hi; ++v) {
          const int64_t o = v / ncc, j0 = (v % ncc) * kCols, m = std::min(kCols, inner - j0);
          segment(o, j0, m, 0, as, ac);
          for (int64_t j = 0; j < m; ++j) {
            y[o * inner + j0 + j] = Round<T>(DW{as[j], ac[j]}, mean_, dn);
          }
        }
      });
      return;
    }
    // partial sums [outer][segs][inner]: <= kSplitBudget pairs (Segments)
    std::vector<double> ps(outer * segs * inner), pc(outer * segs * inner);
    ParallelFor(ctx, outer * ncc * segs, seg_cost, [&](int64_t lo, int64_t hi) {
      for (int64_t u = lo; u < hi; ++u) {
        const int64_t k = u % segs, cc = (u / segs) % ncc, o = u / (segs * ncc);
        const int64_t j0 = cc * kCols, m = std::min(kCols, inner - j0);
        const int64_t at = (o * segs + k) * inner + j0;
        segment(o, j0, m, k, &ps[at], &pc[at]);
      }
    });
    ParallelFor(ctx, outer * inner, segs * 8, [&](int64_t lo, int64_t hi) {
      for (int64_t v = lo; v < hi; ++v) {
        const int64_t o = v / inner, j = v % inner;
        DW acc{0.0, 0.0};
        for (int64_t k = 0; k < segs; ++k) {
          const int64_t at = (o * segs + k) * inner + j;
          Merge(&acc, DW{ps[at], pc[at]});
        }
        y[v] = Round<T>(acc, mean_, dn);
      }
    });
  }

  bool mean_;
};

// ---------------------------------------------------------------------------
// SafeopsCompensatedCumsum: scan over n of [outer, n, inner] (or of [n]); every prefix
// is (s + c) of a running TwoSum, rounded once.

template <typename T>
inline T Out(const DW& a) {
  return static_cast<T>(Finish(a));
}

// Scan x[start .. start + len) (logical order; reverse walks backwards) from acc.
template <typename T>
void ScanSpan(const T* x, T* y, int64_t len, bool exclusive, bool reverse, DW acc) {
  const int64_t step = reverse ? -1 : 1;
  int64_t i = reverse ? len - 1 : 0;
  for (int64_t k = 0; k < len; ++k, i += step) {
    const double b = static_cast<double>(x[i]);
    if (exclusive) y[i] = Out<T>(acc);
    const double a = acc.s;
    const double t = a + b;
    const double z = t - a;
    acc.c += (a - (t - z)) + (b - z);
    acc.s = t;
    if (!exclusive) y[i] = Out<T>(acc);
  }
}

template <typename T>
class CompensatedCumsumOp : public OpKernel {
 public:
  explicit CompensatedCumsumOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("exclusive", &exclusive_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reverse", &reverse_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& in = ctx->input(0);
    int64_t outer, n, inner;
    OP_REQUIRES_OK(ctx, View3("SafeopsCompensatedCumsum", in, &outer, &n, &inner));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, in.shape(), &out));
    if (in.NumElements() == 0) return;
    const T* x = in.flat<T>().data();
    T* y = out->flat<T>().data();
    if (inner == 1) {
      const int64_t nb = (n + kBlock - 1) / kBlock;
      if (nb == 1) {  // one block a row: each row scanned from zero, nothing held
        ParallelFor(ctx, outer, n * 10, [&](int64_t lo, int64_t hi) {
          for (int64_t o = lo; o < hi; ++o) {
            ScanSpan(x + o * n, y + o * n, n, exclusive_, reverse_, DW{0.0, 0.0});
          }
        });
        return;
      }
      // Pass 1: block totals; pass 2: block offsets in scan order; pass 3: scans.
      // (Two pairs per block of 32768 elements: 1/512 of the output's elements.)
      std::vector<DW> tot(outer * nb), off(outer * nb);
      ParallelFor(ctx, outer * nb, kBlock * 6, [&](int64_t lo, int64_t hi) {
        for (int64_t u = lo; u < hi; ++u) {
          const int64_t o = u / nb, b = u % nb;
          const int64_t start = b * kBlock, len = std::min(kBlock, n - start);
          tot[u] = SumSpan(x + o * n + start, len);
        }
      });
      for (int64_t o = 0; o < outer; ++o) {
        DW acc{0.0, 0.0};
        for (int64_t k = 0; k < nb; ++k) {
          const int64_t b = reverse_ ? nb - 1 - k : k;
          off[o * nb + b] = acc;
          Merge(&acc, tot[o * nb + b]);
        }
      }
      ParallelFor(ctx, outer * nb, std::min(n, kBlock) * 10, [&](int64_t lo, int64_t hi) {
        for (int64_t u = lo; u < hi; ++u) {
          const int64_t o = u / nb, b = u % nb;
          const int64_t start = b * kBlock, len = std::min(kBlock, n - start);
          ScanSpan(x + o * n + start, y + o * n + start, len, exclusive_, reverse_, off[u]);
        }
      });
      return;
    }
    const int64_t ncc = (inner + kCols - 1) / kCols;
    ParallelFor(ctx, outer * ncc, n * std::min(inner, kCols) * 10, [&](int64_t lo, int64_t hi) {
      double s[kCols];
      double c[kCols];
      for (int64_t v = lo; v < hi; ++v) {
        const int64_t o = v / ncc, j0 = (v % ncc) * kCols, m = std::min(kCols, inner - j0);
        for (int64_t j = 0; j < m; ++j) s[j] = c[j] = 0.0;
        const T* xs = x + o * n * inner + j0;
        T* ys = y + o * n * inner + j0;
        for (int64_t k = 0; k < n; ++k) {
          const int64_t r = reverse_ ? n - 1 - k : k;
          const T* xr = xs + r * inner;
          T* yr = ys + r * inner;
          for (int64_t j = 0; j < m; ++j) {
            const double b = static_cast<double>(xr[j]);
            if (exclusive_) yr[j] = Out<T>(DW{s[j], c[j]});
            const double a = s[j];
            const double t = a + b;
            const double z = t - a;
            c[j] += (a - (t - z)) + (b - z);
            s[j] = t;
            if (!exclusive_) yr[j] = Out<T>(DW{s[j], c[j]});
          }
        }
      }
    });
  }

 private:
  bool exclusive_;
  bool reverse_;
};

// The variable's buffer, copied first when a reader still holds it (copy on write).
template <typename T>
Status Writable(OpKernelContext* ctx, ::tensorflow::Var* var, T** data) {
  Tensor* t = var->tensor();
  if (!t->RefCountIsOne()) {
    Tensor fresh;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(t->dtype(), t->shape(), &fresh));
    std::memcpy(fresh.flat<T>().data(), t->flat<T>().data(), t->NumElements() * sizeof(T));
    *t = fresh;
  }
  *data = t->flat<T>().data();
  return ::tensorflow::OkStatus();
}

// ---------------------------------------------------------------------------
// SafeopsWidenAssignAdd: var (float64 resource) += float64(values), in place:
// KahanAccumulator.add for float16/bfloat16/float32 without materialising the
// widened increment. Same arithmetic as assign_add(cast(values, float64)).

template <typename T>
class WidenAssignAddOp : public OpKernel {
 public:
  explicit WidenAssignAddOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    OP_REQUIRES(ctx, ctx->input(0).NumElements() == 1,
                ::tensorflow::errors::InvalidArgument(
                    "SafeopsWidenAssignAdd: 'resource' must be one variable handle; got shape ",
                    ctx->input(0).shape().DebugString()));
    ::tensorflow::core::RefCountPtr<::tensorflow::Var> var;
    OP_REQUIRES_OK(ctx, ::tensorflow::LookupResource(ctx, ::tensorflow::HandleFromInput(ctx, 0),
                                                     &var));
    const Tensor& v = ctx->input(1);
    ::tensorflow::mutex_lock lock(*var->mu());
    Tensor* t = var->tensor();
    OP_REQUIRES(ctx, var->is_initialized && t->dtype() == ::tensorflow::DT_DOUBLE,
                ::tensorflow::errors::InvalidArgument(
                    "SafeopsWidenAssignAdd: 'resource' must be an initialized float64 "
                    "variable; got dtype ", ::tensorflow::DataTypeString(t->dtype())));
    OP_REQUIRES(ctx, t->shape() == v.shape(),
                ::tensorflow::errors::InvalidArgument(
                    "SafeopsWidenAssignAdd: 'values' shape ", v.shape().DebugString(),
                    " != variable shape ", t->shape().DebugString()));
    double* acc = nullptr;
    OP_REQUIRES_OK(ctx, Writable<double>(ctx, var.get(), &acc));
    const T* inc = v.flat<T>().data();
    const int64_t n = v.NumElements();
    ParallelFor(ctx, (n + kBlock - 1) / kBlock, kBlock * 2, [&](int64_t lo, int64_t hi) {
      const int64_t e = std::min(n, hi * kBlock);
      for (int64_t i = lo * kBlock; i < e; ++i) acc[i] += static_cast<double>(inc[i]);
    });
  }
};


// ---------------------------------------------------------------------------
// SafeopsKahanAssignAdd: the compensated optimizer update of a float32/float64
// variable, in place: with y = delta - comp (delta negated first if `negate`),
// var <- var + y and comp <- ((var + y) - var) - y, each operation rounded in T,
// exactly as the unfused ops compute it (no FMA: -ffp-contract=off). One pass
// that reads three arrays and writes two into the variables' own buffers.

// Locks two resource variables in address order (the same variable twice is one lock).
class TwoLocks {
 public:
  TwoLocks(::tensorflow::Var* a, ::tensorflow::Var* b) {
    first_ = a < b ? a : b;
    second_ = a < b ? b : a;
    first_->mu()->lock();
    if (second_ != first_) second_->mu()->lock();
  }
  ~TwoLocks() {
    if (second_ != first_) second_->mu()->unlock();
    first_->mu()->unlock();
  }

 private:
  ::tensorflow::Var* first_;
  ::tensorflow::Var* second_;
};

template <typename T>
class KahanAssignAddOp : public OpKernel {
 public:
  explicit KahanAssignAddOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("negate", &negate_));
  }

  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "SafeopsKahanAssignAdd";
    for (int i = 0; i < 2; ++i) {
      OP_REQUIRES(ctx, ctx->input(i).NumElements() == 1,
                  ::tensorflow::errors::InvalidArgument(
                      kOp, ": '", i == 0 ? "resource" : "compensation",
                      "' must be one variable handle; got shape ",
                      ctx->input(i).shape().DebugString()));
    }
    ::tensorflow::core::RefCountPtr<::tensorflow::Var> var, comp;
    OP_REQUIRES_OK(ctx, ::tensorflow::LookupResource(ctx, ::tensorflow::HandleFromInput(ctx, 0),
                                                     &var));
    OP_REQUIRES_OK(ctx, ::tensorflow::LookupResource(ctx, ::tensorflow::HandleFromInput(ctx, 1),
                                                     &comp));
    OP_REQUIRES(ctx, var.get() != comp.get(),
                ::tensorflow::errors::InvalidArgument(
                    kOp, ": 'resource' and 'compensation' must be two variables"));
    const Tensor& delta = ctx->input(2);
    const auto dtype = ::tensorflow::DataTypeToEnum<T>::value;
    TwoLocks lock(var.get(), comp.get());
    for (::tensorflow::Var* v : {var.get(), comp.get()}) {
      const Tensor* t = v->tensor();
      OP_REQUIRES(ctx, v->is_initialized && t->dtype() == dtype,
                  ::tensorflow::errors::InvalidArgument(
                      kOp, ": variables must be initialized and of dtype ",
                      ::tensorflow::DataTypeString(dtype), "; got ",
                      ::tensorflow::DataTypeString(t->dtype())));
      OP_REQUIRES(ctx, t->shape() == delta.shape(),
                  ::tensorflow::errors::InvalidArgument(
                      kOp, ": 'delta' shape ", delta.shape().DebugString(),
                      " != variable shape ", t->shape().DebugString()));
    }
    T* w = nullptr;
    T* c = nullptr;
    OP_REQUIRES_OK(ctx, Writable<T>(ctx, var.get(), &w));
    OP_REQUIRES_OK(ctx, Writable<T>(ctx, comp.get(), &c));
    const T* d = delta.flat<T>().data();
    const int64_t n = delta.NumElements();
    const bool negate = negate_;
    ParallelFor(ctx, (n + kBlock - 1) / kBlock, kBlock * 4, [&](int64_t lo, int64_t hi) {
      const int64_t e = std::min(n, hi * kBlock);
      for (int64_t i = lo * kBlock; i < e; ++i) {
        const T y = (negate ? -d[i] : d[i]) - c[i];
        const T t = w[i] + y;
        c[i] = (t - w[i]) - y;
        w[i] = t;
      }
    });
  }

 private:
  bool negate_;
};

}  // namespace

REGISTER_OP("SafeopsCompensatedSum")
    .Input("x: T")
    .Output("y: T")
    .Attr("T: {float, double}")
    .Attr("mean: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      TF_RETURN_IF_ERROR(RankOneOrThree(c, "SafeopsCompensatedSum"));
      shape_inference::ShapeHandle x = c->input(0);
      if (!c->RankKnown(x)) {
        c->set_output(0, c->UnknownShape());
      } else if (c->Rank(x) == 1) {
        c->set_output(0, c->Scalar());
      } else {
        c->set_output(0, c->MakeShape({c->Dim(x, 0), c->Dim(x, 2)}));
      }
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("SafeopsCompensatedCumsum")
    .Input("x: T")
    .Output("y: T")
    .Attr("T: {float, double}")
    .Attr("exclusive: bool = false")
    .Attr("reverse: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      TF_RETURN_IF_ERROR(RankOneOrThree(c, "SafeopsCompensatedCumsum"));
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("SafeopsWidenAssignAdd")
    .Input("resource: resource")
    .Input("values: T")
    .Attr("T: {half, bfloat16, float}")
    .SetIsStateful()
    .SetShapeFn(shape_inference::NoOutputs);

REGISTER_OP("SafeopsKahanAssignAdd")
    .Input("resource: resource")
    .Input("compensation: resource")
    .Input("delta: T")
    .Attr("T: {float, double}")
    .Attr("negate: bool = false")
    .SetIsStateful()
    .SetShapeFn(shape_inference::NoOutputs);

#define SAFEOPS_REGISTER(T)                                                          \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name("SafeopsCompensatedSum").Device(DEVICE_CPU).TypeConstraint<T>("T"),       \
      CompensatedSumOp<T>);                                                          \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name("SafeopsCompensatedCumsum").Device(DEVICE_CPU).TypeConstraint<T>("T"),    \
      CompensatedCumsumOp<T>);
SAFEOPS_REGISTER(float)
SAFEOPS_REGISTER(double)
#undef SAFEOPS_REGISTER

#define SAFEOPS_REGISTER_KAHAN(T)                                                    \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name("SafeopsKahanAssignAdd").Device(DEVICE_CPU).TypeConstraint<T>("T"),       \
      KahanAssignAddOp<T>);
SAFEOPS_REGISTER_KAHAN(float)
SAFEOPS_REGISTER_KAHAN(double)
#undef SAFEOPS_REGISTER_KAHAN

#define SAFEOPS_REGISTER_WIDEN(T)                                                    \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name("SafeopsWidenAssignAdd").Device(DEVICE_CPU).TypeConstraint<T>("T"),       \
      WidenAssignAddOp<T>);
SAFEOPS_REGISTER_WIDEN(Eigen::half)
SAFEOPS_REGISTER_WIDEN(Eigen::bfloat16)
SAFEOPS_REGISTER_WIDEN(float)
#undef SAFEOPS_REGISTER_WIDEN

}  // namespace safeops

// Float64 CPU kernels for the precision profiler's float64 copies (safeops/doctor/_kernels.py):
// a 2-D convolution (NHWC, stride 1, no dilation, explicit padding), its filter gradient, and
// the gradient of max pooling.
//
// TensorFlow's float64 CPU kernels for these ops are built for the lowest common x86 CPU;
// these are compiled for the CPU they run on (-march=native: AVX-512 and FMA where present).
//
// SafeopsConv2DFloat64: out[n, i, j, o] = sum_{a, b, c} xp[n, i + a, j + b, c] w[a, b, c, o],
// xp the input padded with zeros by (top, bottom, left, right), each pad in [0, k - 1] for the
// kernel size k of its axis. Each output is one sum of its K = k_h k_w c_in products in a
// fixed order (a, b, c), with FMA where the CPU has it: within gamma_K sum |x| |w| of the
// exact sum (gamma_K = K u / (1 - K u), u = 2^-53); padding terms are skipped (they are 0).
// The output is cut into rows (n, i); each row is computed by one thread in that order, so
// no bit depends on the thread count. Register blocking: up to 8 output pixels x up to four
// vectors of 8 output channels per block, the filter packed with its channels padded to 8.
//
// SafeopsConv2DFilterGradFloat64: dw[a, b, c, o] = sum_{n, i, j} xp[n, i + a, j + b, c]
// g[n, i, j, o], the filter size (k_h, k_w) given by the shapes (k = in + pads - out + 1).
// The batch is cut into groups whose count depends on the shape only (at most 16, and few
// enough that the groups' partial filters fit 32 MiB); each group sums its images' products
// in order (n, i, j) from zero, and the groups' sums are added in group order: each element
// within gamma_K sum |x| |g| of the exact sum, K = n out_h out_w products, reproducible bit
// for bit whatever the thread count.
//
// SafeopsMaxPoolGradFloat64: TensorFlow's MaxPoolGrad (NHWC, VALID or SAME padding, any
// window and stride) for float64: each output's gradient goes to the first maximum of its
// window in row-major order (a later element wins only where it compares greater, so a NaN
// wins only as the window's first element, as TensorFlow's); the gradients reaching one input
// are added from zero in the order of the outputs. A selection and sums in TensorFlow's
// order: the same bits as tf.raw_ops.MaxPoolGrad.
//
// Every kernel checks the ranks, shapes, dtypes and attributes of its inputs before it reads
// them (a crafted graph or SavedModel reaches these ops directly).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

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
namespace errors = ::tensorflow::errors;
namespace shape_inference = ::tensorflow::shape_inference;

constexpr int64_t kMaxDim = (int64_t{1} << 31) - 1;  // any dimension, padding, window, stride
constexpr int64_t kMaxElements = int64_t{1} << 40;   // any output or scratch buffer
constexpr int64_t kMaxGroups = 16;                   // batch groups of the filter gradient
constexpr int64_t kGroupBudget = int64_t{1} << 22;   // doubles of all groups' partial filters
constexpr int64_t kMaxCost = int64_t{1} << 40;       // cap of the sharder's cost estimate

// ---- 8-lane float64 vectors: AVX-512 where compiled for it, else plain arrays ----

#if defined(__AVX512F__)
struct Vec {
  __m512d v;
};
inline Vec Zero() { return {_mm512_setzero_pd()}; }
inline Vec Load(const double* p) { return {_mm512_loadu_pd(p)}; }
inline Vec Broadcast(double x) { return {_mm512_set1_pd(x)}; }
inline Vec MulAdd(Vec a, Vec b, Vec c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
inline void Store(double* p, Vec a, int64_t n) {
  if (n >= 8) {
    _mm512_storeu_pd(p, a.v);
  } else {
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1), a.v);
  }
}
#else
struct Vec {
  double v[8];
};
inline Vec Zero() {
  Vec r;
  for (int i = 0; i < 8; ++i) r.v[i] = 0.0;
  return r;
}
inline Vec Load(const double* p) {
  Vec r;
  std::memcpy(r.v, p, sizeof(r.v));
  return r;
}
inline Vec Broadcast(double x) {
  Vec r;
  for (int i = 0; i < 8; ++i) r.v[i] = x;
  return r;
}
inline Vec MulAdd(Vec a, Vec b, Vec c) {
  for (int i = 0; i < 8; ++i) c.v[i] = a.v[i] * b.v[i] + c.v[i];  // two roundings
  return c;
}
inline void Store(double* p, Vec a, int64_t n) {
  std::memcpy(p, a.v, static_cast<size_t>(std::min<int64_t>(n, 8)) * sizeof(double));
}
#endif

inline int64_t RoundUp8(int64_t n) { return (n + 7) / 8 * 8; }

// a * b * ... for non-negative factors, or -1 past kMaxElements.
int64_t CappedProduct(std::initializer_list<int64_t> factors) {
  int64_t p = 1;
  for (int64_t f : factors) {
    if (f == 0) return 0;
  }
  for (int64_t f : factors) {
    if (f > kMaxElements / p) return -1;
    p *= f;
  }
  return p;
}

inline int64_t Cost(double c) {
  return c >= static_cast<double>(kMaxCost) ? kMaxCost : std::max<int64_t>(1, c);
}

Status CheckDims(const char* op, const char* arg, const Tensor& t) {
  if (t.dims() != 4) {
    return errors::InvalidArgument(op, ": ", arg, " must be of rank 4 (NHWC); got shape ",
                                   t.shape().DebugString());
  }
  for (int d = 0; d < 4; ++d) {
    if (t.dim_size(d) > kMaxDim) {
      return errors::InvalidArgument(op, ": ", arg, " has a dimension above 2^31 - 1: ",
                                     t.shape().DebugString());
    }
  }
  return ::tensorflow::OkStatus();
}

// Reads the attribute `padding` (top, bottom, left, right), each in [0, kMaxDim].
Status ReadPadding(OpKernelConstruction* ctx, const char* op, int64_t pad[4]) {
  std::vector<int64_t> p;
  TF_RETURN_IF_ERROR(ctx->GetAttr("padding", &p));
  if (p.size() != 4) {
    return errors::InvalidArgument(op, ": padding must hold 4 values (top, bottom, left, "
                                   "right); got ", p.size());
  }
  for (int i = 0; i < 4; ++i) {
    if (p[i] < 0 || p[i] > kMaxDim) {
      return errors::InvalidArgument(op, ": padding values must be in [0, 2^31 - 1]; got ",
                                     p[i]);
    }
    pad[i] = p[i];
  }
  return ::tensorflow::OkStatus();
}

// The padded rows of one output row: rows[s] = input row (first_row + s) of image x (h x w x c),
// each at offset left * c of a zeroed strip row of (left + w + right) * c doubles.
void CopyRows(const double* image, int64_t w, int64_t c, int64_t left, int64_t wp, int64_t first,
              int64_t count, double* strip) {
  for (int64_t s = 0; s < count; ++s) {
    std::memcpy(strip + s * wp * c + left * c, image + (first + s) * w * c,
                static_cast<size_t>(w * c) * sizeof(double));
  }
}

// ---- SafeopsConv2DFloat64 ----

// out[p * ostride + o0 + 8 v + lane] for p < P, v < V: the sum over r < nrows and jj < J of
// x[r][p * C + jj] * w[r][jj * Op + 8 v + lane], in that order (x[r], w[r] offset already).
template <int P, int V>
void ConvBlock(const double* const* x, const double* const* w, int64_t nrows, int64_t J,
               int64_t C, int64_t Op, double* out, int64_t O, int64_t o0) {
  Vec acc[P][V];
  for (int p = 0; p < P; ++p) {
    for (int v = 0; v < V; ++v) acc[p][v] = Zero();
  }
  for (int64_t r = 0; r < nrows; ++r) {
    const double* xr = x[r];
    const double* wr = w[r];
    for (int64_t jj = 0; jj < J; ++jj) {
      Vec wv[V];
      for (int v = 0; v < V; ++v) wv[v] = Load(wr + jj * Op + 8 * v);
      for (int p = 0; p < P; ++p) {
        const Vec b = Broadcast(xr[p * C + jj]);
        for (int v = 0; v < V; ++v) acc[p][v] = MulAdd(b, wv[v], acc[p][v]);
      }
    }
  }
  for (int p = 0; p < P; ++p) {
    for (int v = 0; v < V; ++v) Store(out + p * O + o0 + 8 * v, acc[p][v], O - o0 - 8 * v);
  }
}

using ConvFn = void (*)(const double* const*, const double* const*, int64_t, int64_t, int64_t,
                        int64_t, double*, int64_t, int64_t);

constexpr int MaxPixels(int v) { return v == 4 ? 6 : 8; }  // P x V accumulators fit 32 registers

template <int V>
ConvFn ConvFor(int p) {
  switch (p) {
    case 1: return &ConvBlock<1, V>;
    case 2: return &ConvBlock<2, V>;
    case 3: return &ConvBlock<3, V>;
    case 4: return &ConvBlock<4, V>;
    case 5: return &ConvBlock<5, V>;
    case 6: return &ConvBlock<6, V>;
    case 7: return &ConvBlock<7, V>;
    default: return &ConvBlock<8, V>;
  }
}

ConvFn ConvFor(int v, int p) {
  switch (v) {
    case 1: return ConvFor<1>(p);
    case 2: return ConvFor<2>(p);
    case 3: return ConvFor<3>(p);
    default: return ConvFor<4>(p);
  }
}

class Conv2DOp : public OpKernel {
 public:
  explicit Conv2DOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadPadding(ctx, "SafeopsConv2DFloat64", pad_));
  }

  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "SafeopsConv2DFloat64";
    const Tensor& xt = ctx->input(0);
    const Tensor& ft = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckDims(kOp, "input", xt));
    OP_REQUIRES_OK(ctx, CheckDims(kOp, "filter", ft));
    const int64_t N = xt.dim_size(0), H = xt.dim_size(1), W = xt.dim_size(2),
                  C = xt.dim_size(3);
    const int64_t KH = ft.dim_size(0), KW = ft.dim_size(1), O = ft.dim_size(3);
    OP_REQUIRES(ctx, ft.dim_size(2) == C,
                errors::InvalidArgument(kOp, ": the filter's input channels (dimension 2) must "
                                        "equal the input's (dimension 3); got input ",
                                        xt.shape().DebugString(), ", filter ",
                                        ft.shape().DebugString()));
    OP_REQUIRES(ctx, KH >= 1 && KW >= 1,
                errors::InvalidArgument(kOp, ": the filter's spatial sizes must be at least 1; "
                                        "got ", ft.shape().DebugString()));
    const int64_t pt = pad_[0], pb = pad_[1], pl = pad_[2], pr = pad_[3];
    OP_REQUIRES(ctx, pt < KH && pb < KH && pl < KW && pr < KW,
                errors::InvalidArgument(kOp, ": each padding must be below the filter size of "
                                        "its axis; got padding (", pt, ", ", pb, ", ", pl, ", ",
                                        pr, ") for filter ", ft.shape().DebugString()));
    const int64_t OH = H + pt + pb - KH + 1, OW = W + pl + pr - KW + 1;
    OP_REQUIRES(ctx, OH >= 0 && OW >= 0,
                errors::InvalidArgument(kOp, ": the filter ", ft.shape().DebugString(),
                                        " is larger than the padded input ",
                                        xt.shape().DebugString()));
    const int64_t out_size = CappedProduct({N, OH, OW, O});
    const int64_t Op = RoundUp8(O), J = KW * C, Wp = W + pl + pr;
    const int64_t pack_size = CappedProduct({KH, J, Op});
    const int64_t strip_size = CappedProduct({std::min(KH, H), Wp, C});
    OP_REQUIRES(ctx, out_size >= 0 && pack_size >= 0 && strip_size >= 0,
                errors::InvalidArgument(kOp, ": the output or its scratch would exceed 2^40 "
                                        "elements: input ", xt.shape().DebugString(),
                                        ", filter ", ft.shape().DebugString()));
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, TensorShape::BuildTensorShape({N, OH, OW, O}, &out_shape));
    Tensor* ot = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &ot));
    if (out_size == 0) return;
    double* out = ot->flat<double>().data();
    if (C == 0) {
      std::fill(out, out + out_size, 0.0);
      return;
    }
    Tensor pack_t;  // the filter as [KH][KW * C][Op], channels zero-padded to a multiple of 8
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_DOUBLE, TensorShape({pack_size}),
                                           &pack_t));
    double* pack = pack_t.flat<double>().data();
    const double* f = ft.flat<double>().data();
    for (int64_t r = 0; r < KH * J; ++r) {
      std::memcpy(pack + r * Op, f + r * O, static_cast<size_t>(O) * sizeof(double));
      std::fill(pack + r * Op + O, pack + (r + 1) * Op, 0.0);
    }
    const double* x = xt.flat<double>().data();
    const int64_t nv = Op / 8;
    ParallelFor(ctx, N * OH, Cost(static_cast<double>(OW) * O * KH * J), [&](int64_t lo,
                                                                             int64_t hi) {
      std::vector<double> strip(static_cast<size_t>(strip_size), 0.0);  // pads stay zero
      std::vector<const double*> xs(static_cast<size_t>(std::max<int64_t>(1, std::min(KH, H))));
      std::vector<const double*> ws(xs.size());
      for (int64_t u = lo; u < hi; ++u) {
        const int64_t n = u / OH, oh = u % OH;
        double* orow = out + u * OW * O;
        const int64_t kh0 = std::max<int64_t>(0, pt - oh);
        const int64_t kh1 = std::min<int64_t>(KH, H + pt - oh);
        const int64_t rows = kh1 - kh0;
        if (rows <= 0) {  // only padding rows (an input of height 0)
          std::fill(orow, orow + OW * O, 0.0);
          continue;
        }
        CopyRows(x + n * H * W * C, W, C, pl, Wp, oh + kh0 - pt, rows, strip.data());
        for (int64_t v0 = 0; v0 < nv; v0 += 4) {
          const int V = static_cast<int>(std::min<int64_t>(4, nv - v0));
          const int P = MaxPixels(V);
          for (int64_t ow = 0; ow < OW; ow += P) {
            const int p = static_cast<int>(std::min<int64_t>(P, OW - ow));
            for (int64_t s = 0; s < rows; ++s) {
              xs[s] = strip.data() + s * Wp * C + ow * C;
              ws[s] = pack + (kh0 + s) * J * Op + v0 * 8;
            }
            ConvFor(V, p)(xs.data(), ws.data(), rows, J, C, Op, orow + ow * O, O, v0 * 8);
          }
        }
      }
    });
  }

 private:
  int64_t pad_[4] = {0, 0, 0, 0};
};

// ---- SafeopsConv2DFilterGradFloat64 ----

// acc[p * Op + 8 v + lane] += sum over j < OW of x[j * C + p] * g[j * gs + 8 v + lane], in order.
template <int P, int V>
void FilterBlock(const double* x, const double* g, int64_t gs, int64_t OW, int64_t C,
                 double* acc_mem, int64_t Op) {
  Vec acc[P][V];
  for (int p = 0; p < P; ++p) {
    for (int v = 0; v < V; ++v) acc[p][v] = Load(acc_mem + p * Op + 8 * v);
  }
  for (int64_t j = 0; j < OW; ++j) {
    Vec gv[V];
    for (int v = 0; v < V; ++v) gv[v] = Load(g + j * gs + 8 * v);
    for (int p = 0; p < P; ++p) {
      const Vec b = Broadcast(x[j * C + p]);
      for (int v = 0; v < V; ++v) acc[p][v] = MulAdd(b, gv[v], acc[p][v]);
    }
  }
  for (int p = 0; p < P; ++p) {
    for (int v = 0; v < V; ++v) Store(acc_mem + p * Op + 8 * v, acc[p][v], 8);
  }
}

using FilterFn = void (*)(const double*, const double*, int64_t, int64_t, int64_t, double*,
                          int64_t);

template <int V>
FilterFn FilterFor(int p) {
  switch (p) {
    case 1: return &FilterBlock<1, V>;
    case 2: return &FilterBlock<2, V>;
    case 3: return &FilterBlock<3, V>;
    case 4: return &FilterBlock<4, V>;
    case 5: return &FilterBlock<5, V>;
    case 6: return &FilterBlock<6, V>;
    case 7: return &FilterBlock<7, V>;
    default: return &FilterBlock<8, V>;
  }
}

FilterFn FilterFor(int v, int p) {
  switch (v) {
    case 1: return FilterFor<1>(p);
    case 2: return FilterFor<2>(p);
    case 3: return FilterFor<3>(p);
    default: return FilterFor<4>(p);
  }
}

class Conv2DFilterGradOp : public OpKernel {
 public:
  explicit Conv2DFilterGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadPadding(ctx, "SafeopsConv2DFilterGradFloat64", pad_));
  }

  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "SafeopsConv2DFilterGradFloat64";
    const Tensor& xt = ctx->input(0);
    const Tensor& gt = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckDims(kOp, "input", xt));
    OP_REQUIRES_OK(ctx, CheckDims(kOp, "grad", gt));
    const int64_t N = xt.dim_size(0), H = xt.dim_size(1), W = xt.dim_size(2),
                  C = xt.dim_size(3);
    const int64_t OH = gt.dim_size(1), OW = gt.dim_size(2), O = gt.dim_size(3);
    OP_REQUIRES(ctx, gt.dim_size(0) == N,
                errors::InvalidArgument(kOp, ": input and grad batch sizes differ: ",
                                        xt.shape().DebugString(), " and ",
                                        gt.shape().DebugString()));
    const int64_t pt = pad_[0], pb = pad_[1], pl = pad_[2], pr = pad_[3];
    const int64_t KH = H + pt + pb - OH + 1, KW = W + pl + pr - OW + 1;
    OP_REQUIRES(ctx, KH >= 1 && KW >= 1 && pt < KH && pb < KH && pl < KW && pr < KW,
                errors::InvalidArgument(kOp, ": grad ", gt.shape().DebugString(),
                                        " does not fit input ", xt.shape().DebugString(),
                                        " with padding (", pt, ", ", pb, ", ", pl, ", ", pr,
                                        "): the filter size (padded input - grad + 1) must be "
                                        "at least 1 and above each padding of its axis"));
    const int64_t Op = RoundUp8(O), J = KW * C, Wp = W + pl + pr;
    const int64_t out_size = CappedProduct({KH, KW, C, O});
    const int64_t part_size = CappedProduct({KH, J, Op});
    const int64_t strip_size = CappedProduct({std::min(KH, H), Wp, C});
    const int64_t grow_size = CappedProduct({OW, Op});
    OP_REQUIRES(ctx, out_size >= 0 && part_size >= 0 && strip_size >= 0 && grow_size >= 0,
                errors::InvalidArgument(kOp, ": the filter gradient or its scratch would exceed "
                                        "2^40 elements: input ", xt.shape().DebugString(),
                                        ", grad ", gt.shape().DebugString()));
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, TensorShape::BuildTensorShape({KH, KW, C, O}, &out_shape));
    Tensor* ot = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &ot));
    if (out_size == 0) return;
    double* out = ot->flat<double>().data();
    if (N == 0 || OH == 0 || OW == 0 || H == 0 || W == 0) {  // no products
      std::fill(out, out + out_size, 0.0);
      return;
    }
    // Groups of `per` images, their count fixed by the shape (never by the thread count).
    int64_t groups = std::min<int64_t>({N, kMaxGroups, std::max<int64_t>(1, kGroupBudget /
                                                                               part_size)});
    const int64_t per = (N + groups - 1) / groups;
    groups = (N + per - 1) / per;
    Tensor part_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_DOUBLE,
                                           TensorShape({groups * part_size}), &part_t));
    double* part = part_t.flat<double>().data();
    const double* x = xt.flat<double>().data();
    const double* g = gt.flat<double>().data();
    const int64_t nv = Op / 8;
    const bool copy_g = O != Op;
    ParallelFor(ctx, groups, Cost(static_cast<double>(per) * OH * OW * KH * J * O),
                [&](int64_t lo, int64_t hi) {
      std::vector<double> strip(static_cast<size_t>(strip_size), 0.0);  // pads stay zero
      std::vector<double> grow(copy_g ? static_cast<size_t>(grow_size) : 0, 0.0);
      for (int64_t q = lo; q < hi; ++q) {
        double* acc = part + q * part_size;
        std::fill(acc, acc + part_size, 0.0);
        for (int64_t n = q * per; n < std::min(N, (q + 1) * per); ++n) {
          for (int64_t oh = 0; oh < OH; ++oh) {
            const int64_t kh0 = std::max<int64_t>(0, pt - oh);
            const int64_t kh1 = std::min<int64_t>(KH, H + pt - oh);
            if (kh1 <= kh0) continue;
            CopyRows(x + n * H * W * C, W, C, pl, Wp, oh + kh0 - pt, kh1 - kh0, strip.data());
            const double* gr = g + (n * OH + oh) * OW * O;
            int64_t gs = O;
            if (copy_g) {
              for (int64_t j = 0; j < OW; ++j) {
                std::memcpy(grow.data() + j * Op, gr + j * O,
                            static_cast<size_t>(O) * sizeof(double));
              }
              gr = grow.data();
              gs = Op;
            }
            for (int64_t kh = kh0; kh < kh1; ++kh) {
              const double* xr = strip.data() + (kh - kh0) * Wp * C;
              for (int64_t v0 = 0; v0 < nv; v0 += 4) {
                const int V = static_cast<int>(std::min<int64_t>(4, nv - v0));
                const int P = MaxPixels(V);
                for (int64_t j0 = 0; j0 < J; j0 += P) {
                  const int p = static_cast<int>(std::min<int64_t>(P, J - j0));
                  FilterFor(V, p)(xr + j0, gr + v0 * 8, gs, OW, C,
                                  acc + (kh * J + j0) * Op + v0 * 8, Op);
                }
              }
            }
          }
        }
      }
    });
    // The groups' partial sums, added in group order.
    ParallelFor(ctx, KH * J, Cost(static_cast<double>(groups) * O), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        for (int64_t o = 0; o < O; ++o) {
          double s = part[r * Op + o];
          for (int64_t q = 1; q < groups; ++q) s += part[q * part_size + r * Op + o];
          out[r * O + o] = s;
        }
      }
    });
  }

 private:
  int64_t pad_[4] = {0, 0, 0, 0};
};

// ---- SafeopsMaxPoolGradFloat64 ----

// TensorFlow's windowed output size and leading padding (stride s, window k, input n).
bool PoolGeometry(bool same, int64_t n, int64_t k, int64_t s, int64_t* out, int64_t* before) {
  if (same) {
    *out = (n + s - 1) / s;
    const int64_t total = std::max<int64_t>((*out - 1) * s + k - n, 0);
    *before = total / 2;
    return true;
  }
  if (n < k) return false;
  *out = (n - k) / s + 1;
  *before = 0;
  return true;
}

class MaxPoolGradOp : public OpKernel {
 public:
  explicit MaxPoolGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    static const char* kOp = "SafeopsMaxPoolGradFloat64";
    std::vector<int64_t> ksize, strides;
    std::string padding;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ksize", &ksize));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    OP_REQUIRES(ctx, ksize.size() == 2 && strides.size() == 2,
                errors::InvalidArgument(kOp, ": ksize and strides must hold 2 values (height, "
                                        "width); got ", ksize.size(), " and ", strides.size()));
    for (int i = 0; i < 2; ++i) {
      OP_REQUIRES(ctx, ksize[i] >= 1 && ksize[i] <= kMaxDim && strides[i] >= 1 &&
                           strides[i] <= kMaxDim,
                  errors::InvalidArgument(kOp, ": ksize and strides must be in [1, 2^31 - 1]; "
                                          "got ksize ", ksize[i], ", stride ", strides[i]));
      k_[i] = ksize[i];
      s_[i] = strides[i];
    }
    OP_REQUIRES(ctx, padding == "SAME" || padding == "VALID",
                errors::InvalidArgument(kOp, ": padding must be SAME or VALID; got ", padding));
    same_ = padding == "SAME";
  }

  void Compute(OpKernelContext* ctx) override {
    static const char* kOp = "SafeopsMaxPoolGradFloat64";
    const Tensor& xt = ctx->input(0);
    const Tensor& gt = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckDims(kOp, "orig_input", xt));
    OP_REQUIRES_OK(ctx, CheckDims(kOp, "grad", gt));
    const int64_t N = xt.dim_size(0), H = xt.dim_size(1), W = xt.dim_size(2),
                  C = xt.dim_size(3);
    int64_t OH = 0, OW = 0, pt = 0, pl = 0;
    OP_REQUIRES(ctx, PoolGeometry(same_, H, k_[0], s_[0], &OH, &pt) &&
                         PoolGeometry(same_, W, k_[1], s_[1], &OW, &pl),
                errors::InvalidArgument(kOp, ": the window (", k_[0], ", ", k_[1],
                                        ") is larger than the VALID input ",
                                        xt.shape().DebugString()));
    OP_REQUIRES(ctx, gt.dim_size(0) == N && gt.dim_size(1) == OH && gt.dim_size(2) == OW &&
                         gt.dim_size(3) == C,
                errors::InvalidArgument(kOp, ": grad must have the pooled shape [", N, ", ", OH,
                                        ", ", OW, ", ", C, "] of orig_input ",
                                        xt.shape().DebugString(), "; got ",
                                        gt.shape().DebugString()));
    Tensor* ot = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, xt.shape(), &ot));
    if (xt.NumElements() == 0) return;
    double* dx = ot->flat<double>().data();
    const double* x = xt.flat<double>().data();
    const double* g = gt.flat<double>().data();
    const int64_t kh = k_[0], kw = k_[1], sh = s_[0], sw = s_[1];
    ParallelFor(ctx, N, Cost(static_cast<double>(H) * W * C * 4 +
                             static_cast<double>(OH) * OW * C * std::min(kh, H) * std::min(kw, W)),
                [&](int64_t lo, int64_t hi) {
      std::vector<double> best(static_cast<size_t>(C));
      std::vector<int64_t> arg(static_cast<size_t>(C));
      for (int64_t n = lo; n < hi; ++n) {
        const double* xi = x + n * H * W * C;
        double* di = dx + n * H * W * C;
        std::fill(di, di + H * W * C, 0.0);
        for (int64_t ph = 0; ph < OH; ++ph) {
          const int64_t h0 = std::max<int64_t>(0, ph * sh - pt);
          const int64_t h1 = std::min<int64_t>(H, ph * sh - pt + kh);
          for (int64_t pw = 0; pw < OW; ++pw) {
            const int64_t w0 = std::max<int64_t>(0, pw * sw - pl);
            const int64_t w1 = std::min<int64_t>(W, pw * sw - pl + kw);
            const int64_t first = h0 * W + w0;  // in pixels; windows are never empty
            const double* gp = g + ((n * OH + ph) * OW + pw) * C;
#if defined(__AVX512F__)
            // 8 channels at a time: the running maximum and its pixel, updated where the
            // window's next element compares greater (an ordered compare: a NaN never does);
            // then each window pixel adds the gradient in the lanes it won (a masked add,
            // the same sum as the scalar loop below; no branch on the lanes won).
            for (int64_t d0 = 0; d0 < C; d0 += 8) {
              const __mmask8 lanes = static_cast<__mmask8>(
                  C - d0 >= 8 ? 0xff : (1u << (C - d0)) - 1);
              __m512d top = _mm512_maskz_loadu_pd(lanes, xi + first * C + d0);
              __m512i at = _mm512_set1_epi64(first);
              for (int64_t h = h0; h < h1; ++h) {
                for (int64_t w = (h == h0 ? w0 + 1 : w0); w < w1; ++w) {
                  const __m512d v = _mm512_maskz_loadu_pd(lanes, xi + (h * W + w) * C + d0);
                  const __mmask8 greater = _mm512_cmp_pd_mask(top, v, _CMP_LT_OQ);
                  top = _mm512_mask_mov_pd(top, greater, v);
                  at = _mm512_mask_mov_epi64(at, greater, _mm512_set1_epi64(h * W + w));
                }
              }
              const __m512d gv = _mm512_maskz_loadu_pd(lanes, gp + d0);
              for (int64_t h = h0; h < h1; ++h) {
                for (int64_t w = w0; w < w1; ++w) {
                  const __mmask8 won = static_cast<__mmask8>(
                      lanes & _mm512_cmpeq_epi64_mask(at, _mm512_set1_epi64(h * W + w)));
                  double* dp = di + (h * W + w) * C + d0;
                  const __m512d cur = _mm512_maskz_loadu_pd(lanes, dp);
                  _mm512_mask_storeu_pd(dp, won, _mm512_mask_add_pd(cur, won, cur, gv));
                }
              }
            }
#else
            for (int64_t d = 0; d < C; ++d) {
              best[d] = xi[first * C + d];
              arg[d] = first;
            }
            for (int64_t h = h0; h < h1; ++h) {
              for (int64_t w = (h == h0 ? w0 + 1 : w0); w < w1; ++w) {
                const double* xp = xi + (h * W + w) * C;
                const int64_t at = h * W + w;
                for (int64_t d = 0; d < C; ++d) {
                  const bool greater = best[d] < xp[d];
                  best[d] = greater ? xp[d] : best[d];
                  arg[d] = greater ? at : arg[d];
                }
              }
            }
            for (int64_t d = 0; d < C; ++d) di[arg[d] * C + d] += gp[d];
#endif
          }
        }
      }
    });
  }

 private:
  int64_t k_[2] = {1, 1}, s_[2] = {1, 1};
  bool same_ = false;
};

// Shape functions: the output's shape where the inputs' dimensions are known, else unknown
// dimensions (the kernels check every call).
shape_inference::DimensionHandle Derived(shape_inference::InferenceContext* c,
                                         shape_inference::DimensionHandle a, int64_t add,
                                         shape_inference::DimensionHandle b) {
  if (!c->ValueKnown(a) || !c->ValueKnown(b)) return c->UnknownDim();
  const int64_t v = c->Value(a) + add - c->Value(b) + 1;
  return v >= 0 ? c->MakeDim(v) : c->UnknownDim();
}

Status ConvShape(shape_inference::InferenceContext* c, bool filter_grad) {
  std::vector<int64_t> pad;
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &pad));
  shape_inference::ShapeHandle x, y;
  if (pad.size() != 4 || !c->WithRank(c->input(0), 4, &x).ok() ||
      !c->WithRank(c->input(1), 4, &y).ok() || pad[0] < 0 || pad[1] < 0 || pad[2] < 0 ||
      pad[3] < 0 || pad[0] > kMaxDim || pad[1] > kMaxDim || pad[2] > kMaxDim ||
      pad[3] > kMaxDim) {
    c->set_output(0, c->UnknownShapeOfRank(4));
    return ::tensorflow::OkStatus();
  }
  for (int i = 0; i < 4; ++i) {
    if ((c->ValueKnown(c->Dim(x, i)) && c->Value(c->Dim(x, i)) > kMaxDim) ||
        (c->ValueKnown(c->Dim(y, i)) && c->Value(c->Dim(y, i)) > kMaxDim)) {
      c->set_output(0, c->UnknownShapeOfRank(4));
      return ::tensorflow::OkStatus();
    }
  }
  auto d = [&](shape_inference::ShapeHandle s, int i) { return c->Dim(s, i); };
  if (filter_grad) {
    c->set_output(0, c->MakeShape({Derived(c, d(x, 1), pad[0] + pad[1], d(y, 1)),
                                   Derived(c, d(x, 2), pad[2] + pad[3], d(y, 2)), d(x, 3),
                                   d(y, 3)}));
  } else {
    c->set_output(0, c->MakeShape({d(x, 0), Derived(c, d(x, 1), pad[0] + pad[1], d(y, 0)),
                                   Derived(c, d(x, 2), pad[2] + pad[3], d(y, 1)), d(y, 3)}));
  }
  return ::tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("SafeopsConv2DFloat64")
    .Input("input: double")
    .Input("filter: double")
    .Output("output: double")
    .Attr("padding: list(int)")
    .SetShapeFn([](shape_inference::InferenceContext* c) { return ConvShape(c, false); });

REGISTER_OP("SafeopsConv2DFilterGradFloat64")
    .Input("input: double")
    .Input("grad: double")
    .Output("filter_grad: double")
    .Attr("padding: list(int)")
    .SetShapeFn([](shape_inference::InferenceContext* c) { return ConvShape(c, true); });

REGISTER_OP("SafeopsMaxPoolGradFloat64")
    .Input("orig_input: double")
    .Input("grad: double")
    .Output("input_grad: double")
    .Attr("ksize: list(int)")
    .Attr("strides: list(int)")
    .Attr("padding: string")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("SafeopsConv2DFloat64").Device(DEVICE_CPU), Conv2DOp);
REGISTER_KERNEL_BUILDER(Name("SafeopsConv2DFilterGradFloat64").Device(DEVICE_CPU),
                        Conv2DFilterGradOp);
REGISTER_KERNEL_BUILDER(Name("SafeopsMaxPoolGradFloat64").Device(DEVICE_CPU), MaxPoolGradOp);

}  // namespace safeops

// safeops fused CPU kernels for fake quantization (safeops/quantization/fake_quant.py).
//
// SafeopsFakeQuant: the float32 quantize-dequantize of TF's FakeQuantWithMinMaxVars with a
// scalar range, the same bits: the range is nudged as TF's `Nudge`
// (tensorflow/core/kernels/fake_quant_ops_functor.h) so that 0 is on the grid, with
// q_min = narrow_range, q_max = 2^num_bits - 1,
//   scale = (max - min) / (q_max - q_min),  z = clamp(round(q_min - min / scale)) (uint16),
//   nudged_min = (q_min - z) scale,  nudged_max = (q_max - z) scale,
//   quant_zero = floor(-nudged_min * ((q_max - q_min) / (max - min)) + 0.5),
// and each element is, in float32 and in this order,
//   c = max(min(x, nudged_max), nudged_min)     (std::min / std::max: NaN stays NaN)
//   y = floor((c - nudged_min) / scale - quant_zero + 0.5) * scale
// (a true division, as TF's; no reciprocal). A range with min == max == 0 gives 0 for every
// element (NaN included), as TF's. TF's CPU kernel is Eigen's generic expression, built
// without AVX and mostly run on one thread; this one is one vectorised pass on the intra-op
// pool.
//
// SafeopsFakeQuantGrad: the gradient with respect to the input, the first output of TF's
// FakeQuantWithMinMaxVarsGradient: dx = g * (nudged_min <= x <= nudged_max ? 1 : 0) (a
// product, as TF's, so g = inf outside the range gives NaN, and -g gives -0), dx = g where
// min == max == 0. The range's own gradients (TF's second and third outputs) are not
// computed: the callers pass ranges that are not differentiated. keep_nan (the gradient of
// SafeopsFakeQuantEma): a [0, 0] range passes g only at NaN inputs (+0 elsewhere), and every
// result is g * mask + 0 (a -0 becomes +0), the bits of the pure-TF moving-average quantizer,
// whose gradient adds the zero gradient of its empty-range branch.
//
// SafeopsFakeQuantEma: the training call of `MovingAverageQuantizer` in one op (the pure-TF
// path is ~20 small ops). The batch range [min(min x, 0), max(max x, 0)] (NaN if x holds
// one; [0, 0] if x is empty; the min and max over fixed blocks combined in order), then
//   new = batch  (seen == 0),   new = decay * range + one_minus_decay * batch  (otherwise)
// in float32, two products and a sum (one_minus_decay: the float32 of 1 - decay computed in
// double, as Python does), returned as outputs 1 and 2 for the caller to assign; output 0 is
// SafeopsFakeQuant on the new range, except that a [0, 0] range maps x to +0 with NaN kept.
//
// SafeopsSymmetricGrid: the symmetric weight grid of `_symmetric_grid`
// (fake_quant.py), w of rank >= 1, one range per last-axis channel (per_channel) or one for
// the tensor, n = 2^(num_bits - 1) - 1:
//   m = max(max |w| over the channel, 1e-8f),  out = round_half_even(w * (n / m)) * (m / n),
// n / m and m / n each one float32 division per channel, as TF's ops and the XLA-fused grid
// compute them (the same bits). A NaN weight makes its channel's m, and so the channel, NaN.
// Two passes (the maxima over fixed row blocks, then the grid); not differentiated (the
// caller's straight-through gradient goes around it).
//
// Each element is read before its output is written, so the outputs may take the input's
// buffer (TF forwards it where no other op holds it). Every element is computed inside a
// full packet (the tail padded), so the bits do not
// depend on the thread count or the alignment. Compile without -ffast-math (see
// compensated.cc). Every input's rank and shape and the num_bits attribute are checked
// before anything is read.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

#include "common.h"

namespace safeops_quant {
namespace {

using ::safeops_native::ParallelFor;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShapeUtils;
namespace errors = ::tensorflow::errors;
namespace shape_inference = ::tensorflow::shape_inference;

typedef Eigen::internal::packet_traits<float>::type Packet;
constexpr int kSize = Eigen::internal::unpacket_traits<Packet>::size;

struct Range {
  bool zero;  // min == max == 0: TF's special case (or keep_nan's)
  float nudged_min, nudged_max, scale, quant_zero;
};

// TF's Nudge and quant_zero, statement by statement (float32 throughout).
Range MakeRange(float min, float max, int num_bits, bool narrow_range) {
  Range r{min == 0.0f && max == 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  if (r.zero) return r;
  const int quant_min = narrow_range ? 1 : 0;
  const int quant_max = (1 << num_bits) - 1;
  const float quant_min_float = static_cast<float>(quant_min);
  const float quant_max_float = static_cast<float>(quant_max);
  const float scale = (max - min) / (quant_max_float - quant_min_float);
  const float inv_scale = (quant_max_float - quant_min_float) / (max - min);
  const float zero_point_from_min = quant_min_float - min / scale;
  uint16_t nudged_zero_point;
  if (zero_point_from_min < quant_min_float) {
    nudged_zero_point = static_cast<uint16_t>(quant_min);
  } else if (zero_point_from_min > quant_max_float) {
    nudged_zero_point = static_cast<uint16_t>(quant_max);
  } else if (zero_point_from_min != zero_point_from_min) {
    // NaN (a NaN or infinite bound): TF converts it through a 32-bit integer conversion, whose
    // x86 result (0x80000000) keeps 0 in its low 16 bits; spelled out here (the cast is UB).
    nudged_zero_point = 0;
  } else {
    nudged_zero_point = static_cast<uint16_t>(std::round(zero_point_from_min));
  }
  r.scale = scale;
  r.nudged_min = (quant_min_float - nudged_zero_point) * scale;
  r.nudged_max = (quant_max_float - nudged_zero_point) * scale;
  r.quant_zero = std::floor(-r.nudged_min * inv_scale + 0.5f);
  return r;
}

inline Packet Forward(const Packet& x, const Range& r) {
  using namespace Eigen::internal;  // NOLINT: the packet functions
  const Packet lo = pset1<Packet>(r.nudged_min);
  const Packet hi = pset1<Packet>(r.nudged_max);
  const Packet scale = pset1<Packet>(r.scale);
  Packet c = pselect(pcmp_lt(hi, x), hi, x);  // std::min(x, hi)
  c = pselect(pcmp_lt(c, lo), lo, c);         // std::max(c, lo)
  const Packet t = padd(psub(pdiv(psub(c, lo), scale), pset1<Packet>(r.quant_zero)),
                        pset1<Packet>(0.5f));
  return pmul(pfloor(t), scale);
}

// The [0, 0] range of keep_nan: x (NaN) or +0 forward; g + 0 (at NaN) or +0 backward.
inline Packet ZeroKeepNan(const Packet& v, const Packet& x) {
  using namespace Eigen::internal;  // NOLINT
  return padd(pselect(pcmp_eq(x, x), pset1<Packet>(0.0f), v), pset1<Packet>(0.0f));
}

inline Packet Backward(const Packet& g, const Packet& x, const Range& r) {
  using namespace Eigen::internal;  // NOLINT
  const Packet inside = pand(pcmp_le(pset1<Packet>(r.nudged_min), x),
                             pcmp_le(x, pset1<Packet>(r.nudged_max)));
  return pmul(g, pselect(inside, pset1<Packet>(1.0f), pset1<Packet>(0.0f)));
}

// out[i] = f(g[i], x[i]) for i < n in packets (g may be null), on the intra-op pool.
template <typename F>
void Elementwise(OpKernelContext* ctx, int64_t n, const float* g, const float* x, float* out,
                 F f) {
  const int64_t packets = (n + kSize - 1) / kSize;
  // ~1 cycle an element: a tensor below ~10^5 elements stays on one thread (waking another
  // costs more than the pass), larger ones are split (memory bandwidth of two cores).
  ParallelFor(ctx, packets, kSize, [&](int64_t lo, int64_t hi) {
    using namespace Eigen::internal;  // NOLINT
    const Packet zero = pset1<Packet>(0.0f);
    for (int64_t p = lo; p < hi; ++p) {
      const int64_t i = p * kSize;
      if (i + kSize <= n) {
        pstoreu(out + i, f(g ? ploadu<Packet>(g + i) : zero, ploadu<Packet>(x + i)));
        continue;
      }
      float xb[kSize], gb[kSize], ob[kSize];  // the tail, padded with zeros
      for (int l = 0; l < kSize; ++l) {
        xb[l] = i + l < n ? x[i + l] : 0.0f;
        gb[l] = g && i + l < n ? g[i + l] : 0.0f;
      }
      pstoreu(ob, f(ploadu<Packet>(gb), ploadu<Packet>(xb)));
      for (int64_t l = 0; i + l < n; ++l) out[i + l] = ob[l];
    }
  });
}

// num_bits in 2..16 (TF's own range), checked once when the kernel is built.
void GetBits(OpKernelConstruction* ctx, const char* op, int* num_bits, bool* narrow_range) {
  OP_REQUIRES_OK(ctx, ctx->GetAttr("num_bits", num_bits));
  OP_REQUIRES(ctx, *num_bits >= 2 && *num_bits <= 16,
              errors::InvalidArgument(op, ": num_bits must be in 2..16, got ", *num_bits));
  OP_REQUIRES_OK(ctx, ctx->GetAttr("narrow_range", narrow_range));
}

// min and max: float32 scalars (the op's signature fixes the dtype); false (with the error
// set on ctx) when they are not.
bool GetRange(OpKernelContext* ctx, const char* op, int first, int num_bits,
              bool narrow_range, Range* range) {
  const Tensor& min = ctx->input(first);
  const Tensor& max = ctx->input(first + 1);
  for (const Tensor* t : {&min, &max}) {
    if (!TensorShapeUtils::IsScalar(t->shape())) {
      ctx->CtxFailure(__FILE__, __LINE__,
                      errors::InvalidArgument(op, ": ", t == &min ? "min" : "max",
                                              " must be a scalar, got shape ",
                                              t->shape().DebugString()));
      return false;
    }
  }
  *range = MakeRange(min.scalar<float>()(), max.scalar<float>()(), num_bits, narrow_range);
  return true;
}

class FakeQuantOp : public OpKernel {
 public:
  explicit FakeQuantOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    GetBits(ctx, "SafeopsFakeQuant", &num_bits_, &narrow_range_);
  }

  void Compute(OpKernelContext* ctx) override {
    Range r;
    if (!GetRange(ctx, "SafeopsFakeQuant", 1, num_bits_, narrow_range_, &r)) return;
    const Tensor& x = ctx->input(0);
    Tensor* out = nullptr;  // in place where nothing else holds x (inference)
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &out));
    const int64_t n = x.NumElements();
    if (n == 0) return;
    float* o = out->flat<float>().data();
    if (r.zero) {
      std::fill(o, o + n, 0.0f);
      return;
    }
    Elementwise(ctx, n, nullptr, x.flat<float>().data(), o,
                [&r](const Packet&, const Packet& xv) { return Forward(xv, r); });
  }

 private:
  int num_bits_ = 8;
  bool narrow_range_ = false;
};

class FakeQuantGradOp : public OpKernel {
 public:
  explicit FakeQuantGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    GetBits(ctx, "SafeopsFakeQuantGrad", &num_bits_, &narrow_range_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("keep_nan", &keep_nan_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& g = ctx->input(0);
    const Tensor& x = ctx->input(1);
    OP_REQUIRES(ctx, g.shape() == x.shape(),
                errors::InvalidArgument("SafeopsFakeQuantGrad: g and x must have one shape, got ",
                                        g.shape().DebugString(), " and ",
                                        x.shape().DebugString()));
    Range r;
    if (!GetRange(ctx, "SafeopsFakeQuantGrad", 2, num_bits_, narrow_range_, &r)) return;
    Tensor* out = nullptr;  // in place of g where nothing else holds it (the usual case)
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &out));
    const int64_t n = x.NumElements();
    if (n == 0) return;
    const float* gp = g.flat<float>().data();
    float* o = out->flat<float>().data();
    if (r.zero && keep_nan_) {
      Elementwise(ctx, n, gp, x.flat<float>().data(), o,
                  [](const Packet& gv, const Packet& xv) { return ZeroKeepNan(gv, xv); });
      return;
    }
    if (r.zero) {
      if (o != gp) std::copy(gp, gp + n, o);
      return;
    }
    if (keep_nan_) {  // + 0: a -0 becomes +0, as the pure-TF path's sum with a zero gradient
      Elementwise(ctx, n, gp, x.flat<float>().data(), o, [&r](const Packet& gv, const Packet& xv) {
        return Eigen::internal::padd(Backward(gv, xv, r), Eigen::internal::pset1<Packet>(0.0f));
      });
      return;
    }
    Elementwise(ctx, n, gp, x.flat<float>().data(), o,
                [&r](const Packet& gv, const Packet& xv) { return Backward(gv, xv, r); });
  }

 private:
  int num_bits_ = 8;
  bool narrow_range_ = false;
  bool keep_nan_ = false;
};

// x's min and max (NaN if x holds one; +inf / -inf if empty) over fixed blocks combined in
// order: the same result for any thread count.
void MinMax(OpKernelContext* ctx, const float* x, int64_t n, float* lo, float* hi) {
  constexpr int64_t kBlock = 1 << 14;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<float> mins(blocks), maxs(blocks);
  std::vector<char> nans(blocks);
  ParallelFor(ctx, blocks, kBlock, [&](int64_t b0, int64_t b1) {
    using namespace Eigen::internal;  // NOLINT
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kBlock, i1 = std::min(n, i0 + kBlock);
      const float inf = std::numeric_limits<float>::infinity();
      Packet mn = pset1<Packet>(inf), mx = pset1<Packet>(-inf), nan = pset1<Packet>(0.0f);
      int64_t i = i0;
      for (; i + kSize <= i1; i += kSize) {
        const Packet v = ploadu<Packet>(x + i);
        nan = por(nan, pandnot(pset1<Packet>(1.0f), pcmp_eq(v, v)));
        mn = pselect(pcmp_lt(v, mn), v, mn);
        mx = pselect(pcmp_lt(mx, v), v, mx);
      }
      float m0 = predux_min(mn), m1 = predux_max(mx);
      bool has_nan = predux_max(nan) != 0.0f;
      for (; i < i1; ++i) {
        const float v = x[i];
        has_nan |= v != v;
        m0 = v < m0 ? v : m0;
        m1 = m1 < v ? v : m1;
      }
      mins[b] = m0;
      maxs[b] = m1;
      nans[b] = has_nan;
    }
  });
  float m0 = std::numeric_limits<float>::infinity(), m1 = -m0;
  bool has_nan = false;
  for (int64_t b = 0; b < blocks; ++b) {
    m0 = mins[b] < m0 ? mins[b] : m0;
    m1 = m1 < maxs[b] ? maxs[b] : m1;
    has_nan |= nans[b] != 0;
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  *lo = has_nan ? nan : m0;
  *hi = has_nan ? nan : m1;
}

class FakeQuantEmaOp : public OpKernel {
 public:
  explicit FakeQuantEmaOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    bool narrow_range = false;
    GetBits(ctx, "SafeopsFakeQuantEma", &num_bits_, &narrow_range);
    OP_REQUIRES(ctx, !narrow_range,
                errors::InvalidArgument("SafeopsFakeQuantEma: narrow_range must be false"));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("decay", &decay_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("one_minus_decay", &one_minus_decay_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    for (int i = 1; i < 4; ++i) {
      OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(ctx->input(i).shape()),
                  errors::InvalidArgument("SafeopsFakeQuantEma: ",
                                          i == 1 ? "range_min" : i == 2 ? "range_max" : "seen",
                                          " must be a scalar, got shape ",
                                          ctx->input(i).shape().DebugString()));
    }
    const float range_min = ctx->input(1).scalar<float>()();
    const float range_max = ctx->input(2).scalar<float>()();
    const bool first = ctx->input(3).scalar<float>()() == 0.0f;
    const int64_t n = x.NumElements();
    const float* xp = x.flat<float>().data();
    float bmin, bmax;
    MinMax(ctx, xp, n, &bmin, &bmax);
    // tf.minimum(bmin, 0) / tf.maximum(bmax, 0): NaN kept, a signed zero kept
    bmin = bmin <= 0.0f || bmin != bmin ? bmin : 0.0f;
    bmax = bmax > 0.0f || bmax != bmax ? bmax : 0.0f;
    const float new_min = first ? bmin : decay_ * range_min + one_minus_decay_ * bmin;
    const float new_max = first ? bmax : decay_ * range_max + one_minus_decay_ * bmax;
    Tensor *out = nullptr, *lo = nullptr, *hi = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, {}, &lo));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, {}, &hi));
    lo->scalar<float>()() = new_min;
    hi->scalar<float>()() = new_max;
    if (n == 0) return;
    float* o = out->flat<float>().data();
    const Range r = MakeRange(new_min, new_max, num_bits_, false);
    if (r.zero) {
      Elementwise(ctx, n, nullptr, xp, o,
                  [](const Packet&, const Packet& xv) { return ZeroKeepNan(xv, xv); });
      return;
    }
    Elementwise(ctx, n, nullptr, xp, o,
                [&r](const Packet&, const Packet& xv) { return Forward(xv, r); });
  }

 private:
  int num_bits_ = 8;
  float decay_ = 0.0f, one_minus_decay_ = 1.0f;
};

// NaN-sticky running max of |v|: m takes a (non-NaN m's) larger or NaN v.
inline Packet AbsMax(const Packet& m, const Packet& v) {
  using namespace Eigen::internal;  // NOLINT
  const Packet a = pabs(v);
  return pselect(pandnot(pcmp_lt_or_nan(m, a), pandnot(ptrue(m), pcmp_eq(m, m))), a, m);
}

inline float AbsMax(float m, float v) {
  const float a = std::fabs(v);
  return (m != m) ? m : (m < a || a != a) ? a : m;
}

class SymmetricGridOp : public OpKernel {
 public:
  explicit SymmetricGridOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    bool narrow_range = false;
    GetBits(ctx, "SafeopsSymmetricGrid", &num_bits_, &narrow_range);
    OP_REQUIRES(ctx, !narrow_range,
                errors::InvalidArgument("SafeopsSymmetricGrid: narrow_range must be false"));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("per_channel", &per_channel_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& w = ctx->input(0);
    OP_REQUIRES(ctx, w.dims() >= 1,
                errors::InvalidArgument("SafeopsSymmetricGrid: w must have rank >= 1, got shape ",
                                        w.shape().DebugString()));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, w.shape(), &out));
    const int64_t n = w.NumElements();
    if (n == 0) return;
    const int64_t channels = per_channel_ ? w.dim_size(w.dims() - 1) : 1;
    const int64_t rows = n / channels;
    const float* x = w.flat<float>().data();
    float* o = out->flat<float>().data();
    // pass 1: per-block maxima (blocks of whole rows, fixed by the shape), then combined
    const int64_t block_rows = std::max<int64_t>(1, (int64_t{1} << 14) / channels);
    const int64_t blocks = (rows + block_rows - 1) / block_rows;
    std::vector<float> part(blocks * channels, 0.0f);
    ParallelFor(ctx, blocks, block_rows * channels, [&](int64_t b0, int64_t b1) {
      using namespace Eigen::internal;  // NOLINT
      for (int64_t b = b0; b < b1; ++b) {
        float* m = part.data() + b * channels;
        const int64_t r0 = b * block_rows, r1 = std::min(rows, r0 + block_rows);
        if (channels == 1) {  // one range: along the rows
          Packet mv = pset1<Packet>(0.0f);
          int64_t i = r0;
          for (; i + kSize <= r1; i += kSize) mv = AbsMax(mv, ploadu<Packet>(x + i));
          float lanes[kSize];
          pstoreu(lanes, mv);
          float acc = 0.0f;
          for (int l = 0; l < kSize; ++l) acc = AbsMax(acc, lanes[l]);
          for (; i < r1; ++i) acc = AbsMax(acc, x[i]);
          m[0] = acc;
          continue;
        }
        for (int64_t r = r0; r < r1; ++r) {
          const float* row = x + r * channels;
          int64_t c = 0;
          for (; c + kSize <= channels; c += kSize) {
            pstoreu(m + c, AbsMax(ploadu<Packet>(m + c), ploadu<Packet>(row + c)));
          }
          for (; c < channels; ++c) m[c] = AbsMax(m[c], row[c]);
        }
      }
    });
    std::vector<float> up(channels), down(channels);
    const float levels = static_cast<float>((1 << (num_bits_ - 1)) - 1);
    for (int64_t c = 0; c < channels; ++c) {
      float m = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) m = AbsMax(m, part[b * channels + c]);
      m = (m != m || m > 1e-8f) ? m : 1e-8f;  // tf.maximum(m, 1e-8): NaN kept
      up[c] = levels / m;
      down[c] = m / levels;
    }
    // pass 2: the grid
    ParallelFor(ctx, rows, channels, [&](int64_t r0, int64_t r1) {
      using namespace Eigen::internal;  // NOLINT
      if (channels == 1) {
        const Packet u = pset1<Packet>(up[0]), d = pset1<Packet>(down[0]);
        int64_t i = r0;
        for (; i + kSize <= r1; i += kSize) {
          pstoreu(o + i, pmul(print(pmul(ploadu<Packet>(x + i), u)), d));
        }
        for (; i < r1; ++i) o[i] = std::nearbyint(x[i] * up[0]) * down[0];
        return;
      }
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = x + r * channels;
        float* orow = o + r * channels;
        int64_t c = 0;
        for (; c + kSize <= channels; c += kSize) {
          pstoreu(orow + c, pmul(print(pmul(ploadu<Packet>(row + c), ploadu<Packet>(&up[c]))),
                                 ploadu<Packet>(&down[c])));
        }
        for (; c < channels; ++c) orow[c] = std::nearbyint(row[c] * up[c]) * down[c];
      }
    });
  }

 private:
  int num_bits_ = 8;
  bool per_channel_ = true;
};

}  // namespace

REGISTER_OP("SafeopsFakeQuant")
    .Input("x: float")
    .Input("min: float")
    .Input("max: float")
    .Output("y: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 0, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 0, &unused));
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("SafeopsFakeQuantGrad")
    .Input("g: float")
    .Input("x: float")
    .Input("min: float")
    .Input("max: float")
    .Output("dx: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .Attr("keep_nan: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle out, unused;
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), c->input(1), &out));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 0, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 0, &unused));
      c->set_output(0, out);
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("SafeopsFakeQuantEma")
    .Input("x: float")
    .Input("range_min: float")
    .Input("range_max: float")
    .Input("seen: float")
    .Output("y: float")
    .Output("new_min: float")
    .Output("new_max: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .Attr("decay: float")
    .Attr("one_minus_decay: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle unused;
      for (int i = 1; i < 4; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
      c->set_output(0, c->input(0));
      c->set_output(1, c->Scalar());
      c->set_output(2, c->Scalar());
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("SafeopsSymmetricGrid")
    .Input("w: float")
    .Output("q: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .Attr("per_channel: bool = true")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &unused));
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("SafeopsSymmetricGrid").Device(::tensorflow::DEVICE_CPU),
                        safeops_quant::SymmetricGridOp);
REGISTER_KERNEL_BUILDER(Name("SafeopsFakeQuantEma").Device(::tensorflow::DEVICE_CPU),
                        safeops_quant::FakeQuantEmaOp);
REGISTER_KERNEL_BUILDER(Name("SafeopsFakeQuant").Device(::tensorflow::DEVICE_CPU),
                        safeops_quant::FakeQuantOp);
REGISTER_KERNEL_BUILDER(Name("SafeopsFakeQuantGrad").Device(::tensorflow::DEVICE_CPU),
                        safeops_quant::FakeQuantGradOp);

}  // namespace safeops_quant

// SafeopsWideMatmul: a float32 matrix product accumulated in float64, rounded once.
//
// Every product of two float32 values is exact in float64 (24 + 24 <= 53 bits): the sum is
// float64's and each output one rounding of it (`safeops.matmul`'s float32 method).
//
// Where the compiler targets AVX-512 (-march=native), a GEMM of the BLIS/GotoBLAS kind:
// packing reads the float32 operands in place (a transpose is only another pair of strides,
// a batch another offset) and widens while it copies blocks into contiguous panels (A: 8
// rows x kKC, B: kKC x 24 columns, zero-padded at the edges of m and n, never along k), so
// no float64 copy of a whole operand exists; an 8 x 24 micro-kernel keeps 24 vectors of
// float64 sums in registers and adds one exact product per step with FMA (whose one
// rounding is the sum's). The inner dimension runs in order, in kKC blocks whose float64
// partial sums wait in a per-tile buffer; the last block rounds once to float32. Without
// AVX-512, both operands are widened once and Eigen's blocked GEMM runs on each tile.
//
// Threads: the output is cut into tiles whose sizes depend on the shape only, each one task
// over the whole inner dimension, so no output's bits depend on the thread count.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "Eigen/Core"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

#include "common.h"

namespace safeops {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
namespace errors = ::tensorflow::errors;
namespace shape_inference = ::tensorflow::shape_inference;

constexpr int64_t kMinTile = 128;  // no tile edge below this unless the matrix is smaller
constexpr int64_t kTiles = 4;      // split until this many tiles per matrix (or kMinTile)

int64_t RoundUp(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// Tile edges (tm, tn) for an m x n output: halve the larger edge (tm rounded up to a multiple
// of step_m, tn of step_n) until there are kTiles tiles or both edges are at kMinTile, and
// while an edge passes its maximum (max_m, max_n). Shape-only.
void Tiles(int64_t m, int64_t n, int64_t step_m, int64_t step_n, int64_t max_m, int64_t max_n,
           int64_t* tm, int64_t* tn) {
  int64_t a = std::max<int64_t>(m, 1), b = std::max<int64_t>(n, 1);
  auto count = [&]() { return ((m + a - 1) / a) * ((n + b - 1) / b); };
  while ((count() < kTiles && (a > kMinTile || b > kMinTile)) || a > max_m || b > max_n) {
    if (a >= b) {
      a = RoundUp((a + 1) / 2, step_m);
    } else {
      b = RoundUp((b + 1) / 2, step_n);
    }
  }
  *tm = a;
  *tn = b;
}

#if defined(__AVX512F__)

// The float64 GEMM: C (m x n) = op(A) (m x k) @ op(B) (k x n), op(X) read from float32
// storage through two strides, so that a transpose is only another pair of strides.
struct Operand {
  const float* p;
  int64_t rs, cs;  // element (i, j) at p[i * rs + j * cs]
};

constexpr int64_t kMR = 8;    // micro-tile rows: A values broadcast
constexpr int64_t kNR = 24;   // micro-tile columns: three 8-double vectors of B
constexpr int64_t kKC = 128;  // inner-dimension block (packed B micro-panel 24 KiB, L1)
constexpr int64_t kMC = 192;  // rows of A packed at a time (192 KiB, for L2)
constexpr int64_t kMaxTileM = 512, kMaxTileN = 528;  // tile edges (L2-sized B block)

// Eight rows of eight floats (row ii at s + ii * ld), widened and transposed:
// o[q * os + ii] = s[ii * ld + q].
inline void Transpose8(const float* s, int64_t ld, double* o, int64_t os) {
  __m512d r[8], t[8], u[8];
  for (int ii = 0; ii < 8; ++ii) r[ii] = _mm512_cvtps_pd(_mm256_loadu_ps(s + ii * ld));
  for (int ii = 0; ii < 8; ii += 2) {
    t[ii] = _mm512_unpacklo_pd(r[ii], r[ii + 1]);      // q = 0 2 4 6 of rows ii, ii + 1
    t[ii + 1] = _mm512_unpackhi_pd(r[ii], r[ii + 1]);  // q = 1 3 5 7
  }
  // u[q] (q < 4) holds q and q + 4 of rows 0..3, u[q + 4] of rows 4..7 (128-bit lanes)
  for (int h = 0; h < 8; h += 4) {
    u[h] = _mm512_shuffle_f64x2(t[h], t[h + 2], 0x88);
    u[h + 1] = _mm512_shuffle_f64x2(t[h + 1], t[h + 3], 0x88);
    u[h + 2] = _mm512_shuffle_f64x2(t[h], t[h + 2], 0xdd);
    u[h + 3] = _mm512_shuffle_f64x2(t[h + 1], t[h + 3], 0xdd);
  }
  for (int q = 0; q < 4; ++q) {
    _mm512_storeu_pd(o + q * os, _mm512_shuffle_f64x2(u[q], u[q + 4], 0x88));
    _mm512_storeu_pd(o + (q + 4) * os, _mm512_shuffle_f64x2(u[q], u[q + 4], 0xdd));
  }
}

// Rows [i0, i0 + mc) x columns [p0, p0 + kc) of A, widened, as micro-panels of kMR rows:
// dst[(ir * kc + p) * kMR + ii] = A(i0 + ir * kMR + ii, p0 + p); rows past mc are zeros.
void PackA(const Operand& a, int64_t i0, int64_t mc, int64_t p0, int64_t kc, double* dst) {
  for (int64_t ir = 0; ir < mc; ir += kMR) {
    const int64_t rows = std::min(kMR, mc - ir);
    double* d = dst + ir * kc;
    const float* s = a.p + (i0 + ir) * a.rs + p0 * a.cs;
    if (a.cs == 1) {  // rows contiguous in p: read along rows
      if (rows == kMR) {
        for (int64_t p = 0; p + 8 <= kc; p += 8) {
          Transpose8(s + p, a.rs, d + p * kMR, kMR);
        }
        for (int64_t p = kc / 8 * 8; p < kc; ++p) {
          for (int ii = 0; ii < kMR; ++ii) d[p * kMR + ii] = static_cast<double>(s[ii * a.rs + p]);
        }
      } else {
        for (int64_t p = 0; p < kc; ++p) {
          int64_t ii = 0;
          for (; ii < rows; ++ii) d[p * kMR + ii] = static_cast<double>(s[ii * a.rs + p]);
          for (; ii < kMR; ++ii) d[p * kMR + ii] = 0.0;
        }
      }
    } else {  // rows contiguous: read along p
      for (int64_t p = 0; p < kc; ++p) {
        const float* sp = s + p * a.cs;
        int64_t ii = 0;
        if (rows == kMR && a.rs == 1) {
          _mm512_storeu_pd(d + p * kMR, _mm512_cvtps_pd(_mm256_loadu_ps(sp)));
          continue;
        }
        for (; ii < rows; ++ii) d[p * kMR + ii] = static_cast<double>(sp[ii * a.rs]);
        for (; ii < kMR; ++ii) d[p * kMR + ii] = 0.0;
      }
    }
  }
}

// Rows [p0, p0 + kc) x columns [j0, j0 + nc) of B, widened, as micro-panels of kNR columns:
// dst[(jr * kc + p) * kNR + jj] = B(p0 + p, j0 + jr * kNR + jj); columns past nc are zeros.
void PackB(const Operand& b, int64_t p0, int64_t kc, int64_t j0, int64_t nc, double* dst) {
  for (int64_t jr = 0; jr < nc; jr += kNR) {
    const int64_t cols = std::min(kNR, nc - jr);
    double* d = dst + jr * kc;
    const float* s = b.p + p0 * b.rs + (j0 + jr) * b.cs;
    if (b.cs == 1) {  // columns contiguous: read along rows of B
      for (int64_t p = 0; p < kc; ++p) {
        const float* sp = s + p * b.rs;
        if (cols == kNR) {
          for (int v = 0; v < 3; ++v) {
            _mm512_storeu_pd(d + p * kNR + 8 * v, _mm512_cvtps_pd(_mm256_loadu_ps(sp + 8 * v)));
          }
          continue;
        }
        int64_t jj = 0;
        for (; jj < cols; ++jj) d[p * kNR + jj] = static_cast<double>(sp[jj]);
        for (; jj < kNR; ++jj) d[p * kNR + jj] = 0.0;
      }
    } else {  // B's columns contiguous in p: read down each column
      if (cols == kNR && b.rs == 1) {
        int64_t p = 0;
        for (; p + 8 <= kc; p += 8) {
          for (int g = 0; g < 3; ++g) {
            Transpose8(s + 8 * g * b.cs + p, b.cs, d + p * kNR + 8 * g, kNR);
          }
        }
        for (; p < kc; ++p) {
          for (int64_t jj = 0; jj < kNR; ++jj) {
            d[p * kNR + jj] = static_cast<double>(s[jj * b.cs + p]);
          }
        }
        continue;
      }
      for (int64_t jj = 0; jj < cols; ++jj) {
        const float* sj = s + jj * b.cs;
        for (int64_t p = 0; p < kc; ++p) d[p * kNR + jj] = static_cast<double>(sj[p * b.rs]);
      }
      for (int64_t jj = cols; jj < kNR; ++jj) {
        for (int64_t p = 0; p < kc; ++p) d[p * kNR + jj] = 0.0;
      }
    }
  }
}

// One kMR x kNR micro-tile over kc steps of the inner dimension, in order: acc = fma(a, b,
// acc), each product exact, so each step is one rounding of the running float64 sum. The
// first block starts the sums at +0.0, as Eigen's GEMM does (a sum whose products are all
// -0.0 is +0.0; a negative sum below float32's range still rounds to -0.0); later blocks
// resume from buf (the float64 partial sums); the last rounds once to float32 into out
// (rows x cols valid, row stride ldo), otherwise stores the sums back to buf. next (or
// null): buf of the micro-tile to come, prefetched.
void MicroKernel(int64_t kc, const double* a, const double* b, double* buf, bool first,
                 bool last, float* out, int64_t ldo, int64_t rows, int64_t cols,
                 const double* next) {
  if (next != nullptr) {  // the next micro-tile's float64 sums, into L1 during this one
    for (int64_t line = 0; line < kMR * kNR; line += 8) {
      _mm_prefetch(reinterpret_cast<const char*>(next + line), _MM_HINT_T0);
    }
  }
  __m512d c00, c01, c02, c10, c11, c12, c20, c21, c22, c30, c31, c32, c40, c41, c42, c50, c51,
      c52, c60, c61, c62, c70, c71, c72;
  if (first) {
    const __m512d z = _mm512_setzero_pd();
    c00 = c01 = c02 = c10 = c11 = c12 = c20 = c21 = c22 = c30 = c31 = c32 = z;
    c40 = c41 = c42 = c50 = c51 = c52 = c60 = c61 = c62 = c70 = c71 = c72 = z;
  } else {
#define SAFEOPS_LOAD(r) \
  c##r##0 = _mm512_loadu_pd(buf + r * kNR); \
  c##r##1 = _mm512_loadu_pd(buf + r * kNR + 8); \
  c##r##2 = _mm512_loadu_pd(buf + r * kNR + 16);
    SAFEOPS_LOAD(0) SAFEOPS_LOAD(1) SAFEOPS_LOAD(2) SAFEOPS_LOAD(3)
    SAFEOPS_LOAD(4) SAFEOPS_LOAD(5) SAFEOPS_LOAD(6) SAFEOPS_LOAD(7)
#undef SAFEOPS_LOAD
  }
  for (int64_t p = 0; p < kc; ++p) {
    const __m512d b0 = _mm512_loadu_pd(b), b1 = _mm512_loadu_pd(b + 8),
                  b2 = _mm512_loadu_pd(b + 16);
#define SAFEOPS_STEP(r)                          \
  {                                              \
    const __m512d ar = _mm512_set1_pd(a[r]);     \
    c##r##0 = _mm512_fmadd_pd(ar, b0, c##r##0);  \
    c##r##1 = _mm512_fmadd_pd(ar, b1, c##r##1);  \
    c##r##2 = _mm512_fmadd_pd(ar, b2, c##r##2);  \
  }
    SAFEOPS_STEP(0) SAFEOPS_STEP(1) SAFEOPS_STEP(2) SAFEOPS_STEP(3)
    SAFEOPS_STEP(4) SAFEOPS_STEP(5) SAFEOPS_STEP(6) SAFEOPS_STEP(7)
#undef SAFEOPS_STEP
    a += kMR;
    b += kNR;
  }
  if (!last) {
#define SAFEOPS_STORE(r) \
  _mm512_storeu_pd(buf + r * kNR, c##r##0); \
  _mm512_storeu_pd(buf + r * kNR + 8, c##r##1); \
  _mm512_storeu_pd(buf + r * kNR + 16, c##r##2);
    SAFEOPS_STORE(0) SAFEOPS_STORE(1) SAFEOPS_STORE(2) SAFEOPS_STORE(3)
    SAFEOPS_STORE(4) SAFEOPS_STORE(5) SAFEOPS_STORE(6) SAFEOPS_STORE(7)
#undef SAFEOPS_STORE
    return;
  }
  // one rounding to float32 (round to nearest even, as static_cast<float>)
  alignas(64) float tmp[kMR * kNR];
  const bool full = rows == kMR && cols == kNR;
#define SAFEOPS_ROUND(r)                                                  \
  {                                                                       \
    float* o = full ? out + r * ldo : tmp + r * kNR;                      \
    _mm256_storeu_ps(o, _mm512_cvtpd_ps(c##r##0));                        \
    _mm256_storeu_ps(o + 8, _mm512_cvtpd_ps(c##r##1));                    \
    _mm256_storeu_ps(o + 16, _mm512_cvtpd_ps(c##r##2));                   \
  }
  SAFEOPS_ROUND(0) SAFEOPS_ROUND(1) SAFEOPS_ROUND(2) SAFEOPS_ROUND(3)
  SAFEOPS_ROUND(4) SAFEOPS_ROUND(5) SAFEOPS_ROUND(6) SAFEOPS_ROUND(7)
#undef SAFEOPS_ROUND
  if (!full) {
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(tmp + r * kNR, tmp + r * kNR + cols, out + r * ldo);
    }
  }
}

struct AlignedFree {
  void operator()(double* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<double[], AlignedFree>;
Buffer Allocate(int64_t doubles) {
  const size_t bytes = static_cast<size_t>(RoundUp(std::max<int64_t>(doubles, 1) * 8, 64));
  return Buffer(static_cast<double*>(std::aligned_alloc(64, bytes)));
}

// This thread's buffer number slot (0: packed A, 1: packed B, 2: float64 sums), at least
// doubles long: kept between calls, so that a product does not map and fault in fresh pages
// (tile edges are capped, so a thread keeps at most about 3 MiB).
double* ThreadBuffer(int slot, int64_t doubles) {
  thread_local Buffer buffers[3];
  thread_local int64_t sizes[3] = {0, 0, 0};
  if (sizes[slot] < doubles) {
    buffers[slot] = Buffer();
    buffers[slot] = Allocate(doubles);
    sizes[slot] = doubles;
  }
  return buffers[slot].get();
}

// out[r0:r0+rs, c0:c0+cs] (row stride ldo) of op(A) @ op(B), inner dimension k: for each
// kKC block of k in order, pack that block of B's columns, then kMC rows of A at a time,
// and run the micro-tiles; buf holds the float64 sums between blocks.
void Tile(const Operand& a, const Operand& b, int64_t k, int64_t r0, int64_t rs, int64_t c0,
          int64_t cs, float* out, int64_t ldo, double* pa, double* pb, double* buf) {
  const int64_t ncs = RoundUp(cs, kNR) / kNR;
  for (int64_t p0 = 0; p0 < k; p0 += kKC) {
    const int64_t kc = std::min(kKC, k - p0);
    const bool first = p0 == 0, last = p0 + kc == k;
    PackB(b, p0, kc, c0, cs, pb);
    for (int64_t i0 = 0; i0 < rs; i0 += kMC) {
      const int64_t mc = std::min(kMC, rs - i0);
      PackA(a, r0 + i0, mc, p0, kc, pa);
      for (int64_t jr = 0; jr < cs; jr += kNR) {
        const int64_t cols = std::min(kNR, cs - jr);
        for (int64_t ir = 0; ir < mc; ir += kMR) {
          const int64_t rows = std::min(kMR, mc - ir);
          const int64_t tile = ((i0 + ir) / kMR) * ncs + jr / kNR;
          const bool prefetch = !(first && last) && ir + kMR < mc;
          MicroKernel(kc, pa + ir * kc, pb + jr * kc, buf + tile * kMR * kNR, first, last,
                      out + (i0 + ir) * ldo + jr, ldo, rows, cols,
                      prefetch ? buf + (tile + ncs) * kMR * kNR : nullptr);
        }
      }
    }
  }
}

#else  // no AVX-512: Eigen's blocked GEMM on float64 copies

template <typename S>
using RowMajor = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr int64_t kMaxTile = 1024;  // no tile edge above this (the float64 tile buffer)

// y = x widened (one pass, on the CPU thread pool).
void Widen(OpKernelContext* ctx, const float* x, int64_t size, double* y) {
  safeops_native::ParallelFor(ctx, size, 2, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) y[i] = static_cast<double>(x[i]);
  });
}

// out[r0:r0+rs, c0:c0+cs] of op(A) @ op(B), A and B as stored (row-major, widened), op a
// transpose where the flag says so (Eigen's GEMM packs either storage order).
template <bool TA, bool TB>
void Tile(const double* pa, const double* pb, int64_t m, int64_t k, int64_t n, int64_t r0,
          int64_t rs, int64_t c0, int64_t cs, RowMajor<double>* tile) {
  Eigen::Map<const RowMajor<double>> A(pa, TA ? k : m, TA ? m : k);
  Eigen::Map<const RowMajor<double>> B(pb, TB ? n : k, TB ? k : n);
  tile->resize(rs, cs);
  if (TA && TB) {
    tile->noalias() = A.middleCols(r0, rs).transpose() * B.middleRows(c0, cs).transpose();
  } else if (TA) {
    tile->noalias() = A.middleCols(r0, rs).transpose() * B.middleCols(c0, cs);
  } else if (TB) {
    tile->noalias() = A.middleRows(r0, rs) * B.middleRows(c0, cs).transpose();
  } else {
    tile->noalias() = A.middleRows(r0, rs) * B.middleCols(c0, cs);
  }
}

#endif  // __AVX512F__

class WideMatmulOp : public OpKernel {
 public:
  explicit WideMatmulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_a", &ta_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_b", &tb_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& a = ctx->input(0);
    const Tensor& b = ctx->input(1);
    const int rank = a.dims();
    OP_REQUIRES(ctx, (rank == 2 || rank == 3) && b.dims() == rank,
                errors::InvalidArgument("SafeopsWideMatmul: operands of rank 2 or 3 (both the "
                                        "same); got ", a.shape().DebugString(), " and ",
                                        b.shape().DebugString()));
    const int64_t batch = rank == 3 ? a.dim_size(0) : 1;
    OP_REQUIRES(ctx, rank == 2 || b.dim_size(0) == batch,
                errors::InvalidArgument("SafeopsWideMatmul: batch sizes differ: ",
                                        a.shape().DebugString(), " and ",
                                        b.shape().DebugString()));
    const int r = rank - 2;
    const int64_t m = a.dim_size(r + (ta_ ? 1 : 0)), k = a.dim_size(r + (ta_ ? 0 : 1));
    const int64_t kb = b.dim_size(r + (tb_ ? 1 : 0)), n = b.dim_size(r + (tb_ ? 0 : 1));
    OP_REQUIRES(ctx, k == kb,
                errors::InvalidArgument("SafeopsWideMatmul: inner dimensions differ: ",
                                        a.shape().DebugString(), " and ",
                                        b.shape().DebugString()));
    TensorShape out_shape;
    const int64_t dims[3] = {batch, m, n};
    OP_REQUIRES_OK(ctx, ::tensorflow::TensorShapeUtils::MakeShape(
                            rank == 3 ? dims : dims + 1, rank, &out_shape));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    float* c = out->flat<float>().data();
    if (batch * m * n == 0) return;
    if (k == 0) {
      std::fill(c, c + batch * m * n, 0.0f);
      return;
    }
#if defined(__AVX512F__)
    const float* fa = a.flat<float>().data();
    const float* fb = b.flat<float>().data();
    const Operand oa0 = ta_ ? Operand{fa, 1, m} : Operand{fa, k, 1};
    const Operand ob0 = tb_ ? Operand{fb, 1, k} : Operand{fb, n, 1};
    int64_t tm, tn;
    Tiles(m, n, kMR, kNR, kMaxTileM, kMaxTileN, &tm, &tn);
    const int64_t rows = (m + tm - 1) / tm, cols = (n + tn - 1) / tn;
    const int64_t tn_pad = RoundUp(tn, kNR), kc_max = std::min(kKC, k);
    safeops_native::ParallelFor(ctx, batch * rows * cols, 2 * tm * tn * k, [&](int64_t lo,
                                                                               int64_t hi) {
      double* pa = ThreadBuffer(0, RoundUp(std::min(kMC, tm), kMR) * kc_max);
      double* pb = ThreadBuffer(1, kc_max * tn_pad);
      double* buf = ThreadBuffer(2, k > kKC ? RoundUp(tm, kMR) * tn_pad : 1);
      for (int64_t u = lo; u < hi; ++u) {
        const int64_t q = u / (rows * cols), i = (u / cols) % rows, j = u % cols;
        const int64_t r0 = i * tm, rs = std::min(tm, m - r0);
        const int64_t c0 = j * tn, cs = std::min(tn, n - c0);
        const Operand oa{oa0.p + q * m * k, oa0.rs, oa0.cs};
        const Operand ob{ob0.p + q * k * n, ob0.rs, ob0.cs};
        Tile(oa, ob, k, r0, rs, c0, cs, c + q * m * n + r0 * n + c0, n, pa, pb, buf);
      }
    });
#else
    Tensor wa, wb;  // float64 copies, as stored
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_DOUBLE, a.shape(), &wa));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_DOUBLE, b.shape(), &wb));
    const double* pa = wa.flat<double>().data();
    const double* pb = wb.flat<double>().data();
    Widen(ctx, a.flat<float>().data(), a.NumElements(), wa.flat<double>().data());
    Widen(ctx, b.flat<float>().data(), b.NumElements(), wb.flat<double>().data());
    auto* tile_fn = ta_ ? (tb_ ? &Tile<true, true> : &Tile<true, false>)
                        : (tb_ ? &Tile<false, true> : &Tile<false, false>);

    int64_t tm, tn;
    Tiles(m, n, 8, 8, kMaxTile, kMaxTile, &tm, &tn);
    const int64_t rows = (m + tm - 1) / tm, cols = (n + tn - 1) / tn;
    safeops_native::ParallelFor(ctx, batch * rows * cols, tm * tn * k, [&](int64_t lo,
                                                                           int64_t hi) {
      RowMajor<double> tile;
      for (int64_t u = lo; u < hi; ++u) {
        const int64_t q = u / (rows * cols), i = (u / cols) % rows, j = u % cols;
        const int64_t r0 = i * tm, rs = std::min(tm, m - r0);
        const int64_t c0 = j * tn, cs = std::min(tn, n - c0);
        tile_fn(pa + q * m * k, pb + q * k * n, m, k, n, r0, rs, c0, cs, &tile);
        Eigen::Map<RowMajor<float>, 0, Eigen::OuterStride<>> C(
            c + q * m * n + r0 * n + c0, rs, cs, Eigen::OuterStride<>(n));
        C = tile.cast<float>();
      }
    });
#endif  // __AVX512F__
  }

 private:
  bool ta_ = false, tb_ = false;
};

}  // namespace

REGISTER_OP("SafeopsWideMatmul")
    .Input("a: float")
    .Input("b: float")
    .Output("product: float")
    .Attr("transpose_a: bool = false")
    .Attr("transpose_b: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      bool ta, tb;
      TF_RETURN_IF_ERROR(c->GetAttr("transpose_a", &ta));
      TF_RETURN_IF_ERROR(c->GetAttr("transpose_b", &tb));
      shape_inference::ShapeHandle a = c->input(0), b = c->input(1);
      if (!c->RankKnown(a) || !c->RankKnown(b)) {
        c->set_output(0, c->UnknownShape());
        return ::tensorflow::OkStatus();
      }
      const int rank = c->Rank(a);
      if ((rank != 2 && rank != 3) || c->Rank(b) != rank) {
        return errors::InvalidArgument("SafeopsWideMatmul: operands of rank 2 or 3 (both the "
                                       "same)");
      }
      const int r = rank - 2;
      shape_inference::DimensionHandle k;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(a, r + (ta ? 0 : 1)), c->Dim(b, r + (tb ? 1 : 0)), &k));
      shape_inference::DimensionHandle m = c->Dim(a, r + (ta ? 1 : 0));
      shape_inference::DimensionHandle n = c->Dim(b, r + (tb ? 0 : 1));
      if (rank == 3) {
        shape_inference::DimensionHandle q;
        TF_RETURN_IF_ERROR(c->Merge(c->Dim(a, 0), c->Dim(b, 0), &q));
        c->set_output(0, c->MakeShape({q, m, n}));
      } else {
        c->set_output(0, c->MakeShape({m, n}));
      }
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("SafeopsWideMatmul").Device(DEVICE_CPU), WideMatmulOp);

}  // namespace safeops

// SafeopsWideMatmul: a float32 matrix product accumulated in float64, rounded once.
//
// Every product of two float32 values is exact in float64 (24 + 24 <= 53 bits): the sum is
// float64's and each output one rounding of it (`safeops.matmul`'s float32 method).
// TensorFlow's own float64 matmul kernel is built for the lowest common x86 CPU; this one is
// compiled for the CPU it runs on (-march=native: AVX-512 and FMA where present) through
// Eigen's blocked GEMM, at about twice the cost of TensorFlow's float32 matmul, which is
// what float64's halved vector width allows.
//
// Layout: both operands are widened once, as stored; Eigen's GEMM packs a transposed
// operand as it packs any other.
// Threads: the output is cut into tiles whose sizes depend on the shape only; each tile is
// one GEMM over the whole inner dimension, so no output's bits depend on the thread count.

#include <algorithm>
#include <cstdint>

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

template <typename S>
using RowMajor = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr int64_t kMinTile = 128;   // no tile edge below this (GEMM efficiency)
constexpr int64_t kMaxTile = 1024;  // no tile edge above this (the float64 tile buffer)
constexpr int64_t kTiles = 4;       // split until this many tiles per matrix (or kMinTile)

// Tile edges (tm, tn) for an m x n output: halve the larger edge (rounded up to a multiple
// of 8) until there are kTiles tiles or both edges are at kMinTile, and while an edge
// passes kMaxTile. Shape-only.
void Tiles(int64_t m, int64_t n, int64_t* tm, int64_t* tn) {
  int64_t a = std::max<int64_t>(m, 1), b = std::max<int64_t>(n, 1);
  auto count = [&]() { return ((m + a - 1) / a) * ((n + b - 1) / b); };
  while ((count() < kTiles && (a > kMinTile || b > kMinTile)) || a > kMaxTile ||
         b > kMaxTile) {
    if (a >= b) {
      a = ((a + 1) / 2 + 7) / 8 * 8;
    } else {
      b = ((b + 1) / 2 + 7) / 8 * 8;
    }
  }
  *tm = a;
  *tn = b;
}

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
    Tiles(m, n, &tm, &tn);
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

// Shared by the safeops fused kernels (compensated.cc, softmax.cc, exact.cc, matmul.cc).
#ifndef SAFEOPS_NATIVE_COMMON_H_
#define SAFEOPS_NATIVE_COMMON_H_

#include <cstdint>
#include <functional>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

namespace safeops_native {

// fn(lo, hi) over [0, units) on TF's CPU thread pool (intra-op threads), cost per unit in
// rough cycles (TF's sharder decides how many shards).
inline void ParallelFor(::tensorflow::OpKernelContext* ctx, int64_t units, int64_t cost,
                        const std::function<void(int64_t, int64_t)>& fn) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(workers->num_threads, workers->workers, units, cost, fn);
}

}  // namespace safeops_native

#endif  // SAFEOPS_NATIVE_COMMON_H_

#pragma once
// General matrix product C = alpha * op(A) * op(B) + beta * C on column-major
// float matrices, through OpenBLAS when the build enables it (LSTM_USE_OPENBLAS),
// else through Eigen. With OpenBLAS's OpenMP build, gemm() splits a large
// product among the threads itself, each calling a one-thread product,
// because OpenBLAS's threaded product allocates on the heap at every call.
// Products of at most 10^6 multiply-adds may go to OpenBLAS's small-matrix
// kernels (on AVX-512 CPUs), some of which allocate: those of models far
// smaller than the PTB configs. Eigen's own product allocates its packing buffers per call.

#include "tensor/types.h"

namespace lstm {

enum class Trans { kNo, kYes };

// C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C.
void gemm(Trans trans_a, Trans trans_b, float alpha, const ConstMatRef& a, const ConstMatRef& b,
          float beta, MatRef c);

// The same product as the library runs it on its own threads: OpenBLAS's
// threaded sgemm (which allocates), or Eigen's product. For the benchmark's
// peak.
void library_gemm(Trans trans_a, Trans trans_b, float alpha, const ConstMatRef& a, const ConstMatRef& b,
                  float beta, MatRef c);

// sums[i] += sum over the columns of a(i, :); a matrix-vector product with a
// vector of ones, so that it runs on every thread like the other products.
void gemv_add_row_sums(const ConstMatRef& a, float* sums);

// Sets the threads used by matrix products and by the element-wise loops.
// 0 means every core of the machine.
void set_num_threads(int threads);
int num_threads();

// Threads that may each run their own single-threaded products at once: the
// thread count when the products come from Eigen or OpenBLAS's OpenMP build
// (which runs single-threaded inside a parallel region), else 1.
int stream_parallelism();

// Name of the matrix-product backend ("openblas" or "eigen").
const char* gemm_backend();

}  // namespace lstm

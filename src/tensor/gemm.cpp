#include "tensor/gemm.h"

#include <omp.h>

#include <cassert>
#include <thread>

#ifdef LSTM_USE_OPENBLAS
#include <cblas.h>
#endif

namespace lstm {

namespace {
int g_threads = 1;

#ifdef LSTM_USE_OPENBLAS
// Below this many multiply-adds (m n k) OpenBLAS runs a product on one
// thread: SMP_THRESHOLD_MIN (65536) times GEMM_MULTITHREAD_THRESHOLD (4 by
// default) in OpenBLAS's interface/gemm.c.
constexpr double kThreadedProduct = 65536.0 * 4.0;

void blas_sgemm(bool ta, bool tb, Eigen::Index m, Eigen::Index n, Eigen::Index k, float alpha,
                const float* a, Eigen::Index lda, const float* b, Eigen::Index ldb, float beta, float* c,
                Eigen::Index ldc) {
  cblas_sgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}
#endif

}  // namespace

void gemm(Trans trans_a, Trans trans_b, float alpha, const ConstMatRef& a, const ConstMatRef& b,
          float beta, MatRef c) {
  const bool ta = trans_a == Trans::kYes;
  const bool tb = trans_b == Trans::kYes;
  const Eigen::Index m = ta ? a.cols() : a.rows();
  const Eigen::Index k = ta ? a.rows() : a.cols();
  const Eigen::Index n = tb ? b.rows() : b.cols();
  assert(c.rows() == m);
  assert(c.cols() == n);
  assert((tb ? b.cols() : b.rows()) == k);
  if (m == 0 || n == 0) return;
#ifdef LSTM_USE_OPENBLAS
  const int threads = stream_parallelism();
  if (threads <= 1 || omp_in_parallel() || static_cast<double>(m) * n * k <= kThreadedProduct) {
    blas_sgemm(ta, tb, m, n, k, alpha, a.data(), a.outerStride(), b.data(), b.outerStride(), beta, c.data(),
               c.outerStride());
    return;
  }
  // Each thread multiplies its own range of C's columns (or rows, when C is
  // taller than wide). A threaded OpenBLAS product allocates its job table on
  // the heap at every call, but these calls, inside a parallel region, run on
  // one thread each and allocate nothing.
  const bool by_columns = n >= m;
  const Eigen::Index extent = by_columns ? n : m;
#pragma omp parallel num_threads(threads)
  {
    const int part = omp_get_thread_num(), parts = omp_get_num_threads();
    const Eigen::Index first = extent * part / parts;
    const Eigen::Index count = extent * (part + 1) / parts - first;
    if (count > 0 && by_columns) {
      // Columns [first, first + count) of op(B) and of C.
      const float* b_part = b.data() + first * (tb ? 1 : b.outerStride());
      blas_sgemm(ta, tb, m, count, k, alpha, a.data(), a.outerStride(), b_part, b.outerStride(), beta,
                 c.data() + first * c.outerStride(), c.outerStride());
    } else if (count > 0) {
      // Rows [first, first + count) of op(A) and of C.
      const float* a_part = a.data() + first * (ta ? a.outerStride() : 1);
      blas_sgemm(ta, tb, count, n, k, alpha, a_part, a.outerStride(), b.data(), b.outerStride(), beta,
                 c.data() + first, c.outerStride());
    }
  }
#else
  if (beta == 0.0f) {
    c.setZero();
  } else if (beta != 1.0f) {
    c *= beta;
  }
  if (!ta && !tb) c.noalias() += alpha * a * b;
  if (ta && !tb) c.noalias() += alpha * a.transpose() * b;
  if (!ta && tb) c.noalias() += alpha * a * b.transpose();
  if (ta && tb) c.noalias() += alpha * a.transpose() * b.transpose();
#endif
}

void library_gemm(Trans trans_a, Trans trans_b, float alpha, const ConstMatRef& a, const ConstMatRef& b,
                  float beta, MatRef c) {
#ifdef LSTM_USE_OPENBLAS
  const bool ta = trans_a == Trans::kYes;
  const bool tb = trans_b == Trans::kYes;
  blas_sgemm(ta, tb, ta ? a.cols() : a.rows(), tb ? b.rows() : b.cols(), ta ? a.rows() : a.cols(), alpha, a.data(),
             a.outerStride(), b.data(), b.outerStride(), beta, c.data(), c.outerStride());
#else
  gemm(trans_a, trans_b, alpha, a, b, beta, c);
#endif
}

void gemv_add_row_sums(const ConstMatRef& a, float* sums) {
  if (a.rows() == 0 || a.cols() == 0) return;
  // Adds the sums of rows [first, first + count) with a product by a vector of
  // ones. The ones grow to the widest matrix seen, allocated once per size and
  // thread, outside the steady state of a training loop.
  auto add_row_sums = [&](Eigen::Index first, Eigen::Index count) {
    static thread_local Vector ones;
    if (ones.size() < a.cols()) ones = Vector::Ones(a.cols());
#ifdef LSTM_USE_OPENBLAS
    cblas_sgemv(CblasColMajor, CblasNoTrans, static_cast<blasint>(count), static_cast<blasint>(a.cols()), 1.0f,
                a.data() + first, static_cast<blasint>(a.outerStride()), ones.data(), 1, 1.0f, sums + first, 1);
#else
    Eigen::Map<Vector>(sums + first, count).noalias() += a.middleRows(first, count) * ones.head(a.cols());
#endif
  };
  // Each thread sums its own rows on one thread, in ranges that start at
  // multiples of 64 rows. With OpenBLAS 0.3.21's SkylakeX kernels, ranges cut
  // elsewhere, as in OpenBLAS's own threaded product, changed a few sums (12
  // of 10000 rows) against one call over all rows, so the sums depended on
  // the thread count.
  constexpr Eigen::Index kRowAlignment = 64;
  const int threads = stream_parallelism();
  // With fewer than kRowAlignment rows per thread the ranges would be uneven
  // (on two threads the first one empty), so one call takes them all.
  if (threads <= 1 || omp_in_parallel() || a.rows() < kRowAlignment * threads) {
    add_row_sums(0, a.rows());
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int part = omp_get_thread_num(), parts = omp_get_num_threads();
    auto bound = [&](int p) {
      return p == parts ? a.rows() : a.rows() * p / parts / kRowAlignment * kRowAlignment;
    };
    const Eigen::Index first = bound(part);
    const Eigen::Index count = bound(part + 1) - first;
    if (count > 0) add_row_sums(first, count);
  }
}

void set_num_threads(int threads) {
  if (threads <= 0) {
    threads = static_cast<int>(std::thread::hardware_concurrency());
    if (threads <= 0) threads = 1;
  }
  g_threads = threads;
  omp_set_num_threads(threads);
  Eigen::setNbThreads(threads);
#ifdef LSTM_USE_OPENBLAS
  openblas_set_num_threads(threads);
#endif
}

int num_threads() { return g_threads; }

int stream_parallelism() {
#ifdef LSTM_USE_OPENBLAS
  // openblas_get_parallel(): 0 sequential, 1 pthreads, 2 OpenMP. The pthreads
  // build shares one pool between callers, so concurrent calls would queue.
  if (openblas_get_parallel() == 1) return 1;
#endif
  return g_threads;
}

const char* gemm_backend() {
#ifdef LSTM_USE_OPENBLAS
  return "openblas";
#else
  return "eigen";
#endif
}

}  // namespace lstm

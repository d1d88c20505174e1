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
}

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
  cblas_sgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha,
              a.data(), static_cast<blasint>(a.outerStride()), b.data(),
              static_cast<blasint>(b.outerStride()), beta, c.data(),
              static_cast<blasint>(c.outerStride()));
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

void gemv_add_row_sums(const ConstMatRef& a, float* sums) {
  if (a.rows() == 0 || a.cols() == 0) return;
  // The ones vector grows to the widest matrix seen; it is allocated once per
  // size, outside the steady state of a training loop.
  static thread_local Vector ones;
  if (ones.size() < a.cols()) ones = Vector::Ones(a.cols());
#ifdef LSTM_USE_OPENBLAS
  cblas_sgemv(CblasColMajor, CblasNoTrans, static_cast<blasint>(a.rows()), static_cast<blasint>(a.cols()), 1.0f,
              a.data(), static_cast<blasint>(a.outerStride()), ones.data(), 1, 1.0f, sums, 1);
#else
  Eigen::Map<Vector>(sums, a.rows()).noalias() += a * ones.head(a.cols());
#endif
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

#include "tensor/packed_gemm.h"

#include <algorithm>
#include <cassert>

#include "tensor/parallel.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LSTM_PACKED_AVX2 1
#endif

namespace lstm {

namespace {

constexpr int kRows = PackedMatrix::kPanelRows;
bool g_packed_recurrence = true;
// Widest column tile: 2 x kMaxTile accumulators plus the two panel loads and
// one broadcast fit the 16 vector registers of AVX2.
constexpr int kMaxTile = 6;

// Writes acc (kRows values) into the first `valid` rows of a column of c.
inline void store_column(const float* acc, float beta, int valid, float* c) {
  if (beta == 0.0f) {
    for (int r = 0; r < valid; ++r) c[r] = acc[r];
  } else {
    for (int r = 0; r < valid; ++r) c[r] += acc[r];
  }
}

#ifdef LSTM_PACKED_AVX2

// One panel times NR columns of b: acc(16 x NR) = sum_k panel(:, k) * b(k, :).
template <int NR>
void panel_kernel(const float* panel, int depth, const float* b, Eigen::Index ldb, float beta,
                  int valid, float* c, Eigen::Index ldc) {
  __m256 lo[NR], hi[NR];
#pragma GCC unroll 8
  for (int j = 0; j < NR; ++j) {
    lo[j] = _mm256_setzero_ps();
    hi[j] = _mm256_setzero_ps();
  }
  for (int k = 0; k < depth; ++k) {
    const __m256 a0 = _mm256_loadu_ps(panel + static_cast<std::size_t>(k) * kRows);
    const __m256 a1 = _mm256_loadu_ps(panel + static_cast<std::size_t>(k) * kRows + 8);
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const __m256 bj = _mm256_broadcast_ss(b + j * ldb + k);
      lo[j] = _mm256_fmadd_ps(a0, bj, lo[j]);
      hi[j] = _mm256_fmadd_ps(a1, bj, hi[j]);
    }
  }
  // Leave the registers through a local buffer, so that the loop above keeps
  // every accumulator in a register instead of mirroring it on the stack.
  alignas(32) float acc[NR][kRows];
#pragma GCC unroll 8
  for (int j = 0; j < NR; ++j) {
    _mm256_store_ps(acc[j], lo[j]);
    _mm256_store_ps(acc[j] + 8, hi[j]);
  }
  for (int j = 0; j < NR; ++j) store_column(acc[j], beta, valid, c + j * ldc);
}

#else

// The same order of operations in plain C++, for builds without AVX2.
template <int NR>
void panel_kernel(const float* panel, int depth, const float* b, Eigen::Index ldb, float beta,
                  int valid, float* c, Eigen::Index ldc) {
  float acc[NR][kRows] = {};
  for (int k = 0; k < depth; ++k) {
    const float* a = panel + static_cast<std::size_t>(k) * kRows;
    for (int j = 0; j < NR; ++j) {
      const float bj = b[j * ldb + k];
      for (int r = 0; r < kRows; ++r) acc[j][r] += a[r] * bj;
    }
  }
  for (int j = 0; j < NR; ++j) store_column(acc[j], beta, valid, c + j * ldc);
}

#endif

using PanelKernel = void (*)(const float*, int, const float*, Eigen::Index, float, int, float*,
                             Eigen::Index);

constexpr PanelKernel kKernels[kMaxTile + 1] = {nullptr,          panel_kernel<1>, panel_kernel<2>,
                                                panel_kernel<3>, panel_kernel<4>, panel_kernel<5>,
                                                panel_kernel<6>};

}  // namespace

PackedMatrix::PackedMatrix(int rows, int cols)
    : rows_(rows),
      cols_(cols),
      panels_((rows + kRows - 1) / kRows),
      data_(static_cast<std::size_t>(panels_) * cols * kRows, 0.0f) {}

void PackedMatrix::pack(const ConstMatRef& a, Trans trans) {
  const bool transposed = trans == Trans::kYes;
  assert((transposed ? a.cols() : a.rows()) == rows_);
  assert((transposed ? a.rows() : a.cols()) == cols_);
  parallel_for(panels_, [&](Eigen::Index p) {
    const int first = static_cast<int>(p) * kRows;
    const int valid = std::min(kRows, rows_ - first);
    float* panel = data_.data() + static_cast<std::size_t>(p) * cols_ * kRows;
    for (int k = 0; k < cols_; ++k) {
      float* dst = panel + static_cast<std::size_t>(k) * kRows;
      if (transposed) {
        // op(a)(first + r, k) = a(k, first + r): row k of a, strided.
        for (int r = 0; r < valid; ++r) dst[r] = a(k, first + r);
      } else {
        const float* src = a.data() + k * a.outerStride() + first;
        std::copy(src, src + valid, dst);
      }
      // Rows past the end stay zero from construction.
    }
  });
}

void PackedMatrix::multiply(const ConstMatRef& b, float beta, MatRef c) const {
  assert(b.rows() == cols_);
  assert(c.rows() == rows_);
  assert(c.cols() == b.cols());
  assert(beta == 0.0f || beta == 1.0f);
  const int n = static_cast<int>(b.cols());
  // Tiles of nearly equal width: a narrow last tile would have too few
  // independent accumulators to hide the latency of its FMAs.
  const int tiles = (n + kMaxTile - 1) / kMaxTile;
  for (int p = 0; p < panels_; ++p) {
    const int first = p * kRows;
    const int valid = std::min(kRows, rows_ - first);
    const float* panel = data_.data() + static_cast<std::size_t>(p) * cols_ * kRows;
    for (int tile = 0; tile < tiles; ++tile) {
      const int j = n * tile / tiles;
      const int width = n * (tile + 1) / tiles - j;
      kKernels[width](panel, cols_, b.data() + j * b.outerStride(), b.outerStride(), beta, valid,
                      c.data() + j * c.outerStride() + first, c.outerStride());
    }
  }
}

bool packed_kernel_available() {
#ifdef LSTM_PACKED_AVX2
  return true;
#else
  return false;
#endif
}

void set_packed_recurrence(bool enabled) { g_packed_recurrence = enabled; }

bool packed_recurrence() { return g_packed_recurrence && packed_kernel_available(); }

}  // namespace lstm

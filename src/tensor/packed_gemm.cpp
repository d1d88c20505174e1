#include "tensor/packed_gemm.h"

#include <algorithm>
#include <cassert>
#include <limits>

#include "tensor/memory.h"
#include "tensor/parallel.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LSTM_PACKED_AVX2 1
#endif

namespace lstm {

namespace {

constexpr int kRows = PackedMatrix::kPanelRows;
constexpr int kMaxLanes = PackedMatrix::kMaxLanes;
bool g_packed_products = true;
// Widest column tile: 2 x kMaxTile accumulators plus the two panel loads and
// one broadcast fit the 16 vector registers of AVX2.
constexpr int kMaxTile = 6;
// Bytes of panels multiply() keeps in cache while the column tiles pass over
// them: a quarter of the 512 KiB L2 of the development machine's cores.
constexpr std::size_t kBlockBytes = 128 * 1024;
// Maximum run of k that one kernel call sums: a panel's slice of it is 32 KiB. Each
// output element is the sum of its slices, added in order of k.
constexpr int kDepthBlock = 512;
// Bytes of all panels' slices multiply_transposed() keeps in L2.
constexpr std::size_t kTransposedSliceBytes = 256 * 1024;

// Writes acc (kRows values) into the first `valid` rows of a column of c.
inline void store_column(const float* acc, float beta, int valid, float* c) {
  if (beta == 0.0f) {
    for (int r = 0; r < valid; ++r) c[r] = acc[r];
  } else {
    for (int r = 0; r < valid; ++r) c[r] += acc[r];
  }
}

// Runs the logits' epilogue on one column of a panel after its last slice.
// Adds the bias to the first `valid` rows of c and folds them into lane 0 of
// the column's maxima, because the maximum does not depend on the lane.
inline void add_bias_and_max(const float* bias, int valid, float* c, float* lanes) {
  for (int r = 0; r < valid; ++r) {
    c[r] += bias[r];
    lanes[0] = std::max(lanes[0], c[r]);
  }
}

// b(k, j) of a kernel's right-hand side: b stored column by column, or b^T
// stored column by column (the rows of b are then contiguous).
template <bool kTransB>
inline const float* b_element(const float* b, Eigen::Index ldb, int k, int j) {
  return kTransB ? b + static_cast<Eigen::Index>(k) * ldb + j : b + j * ldb + k;
}

#ifdef LSTM_PACKED_AVX2

// How many k ahead the transposed-b kernel prefetches: its b walks down
// columns of a tall matrix, one cache line per k, which the hardware
// prefetchers do not follow across pages.
constexpr int kPrefetchAhead = 8;

// One panel times NR columns of b: acc(8 kVectors x NR) = sum_k panel(:, k) * b(k, :)
// over the panel's first 8 kVectors rows. kVectors is 2 (all 16 rows), or 1
// for a last panel with at most 8 valid rows, which then costs half the FMAs.
template <int NR, int kVectors, bool kTransB, bool kLogits>
void panel_kernel(const float* panel, int depth, const float* b, Eigen::Index ldb, float beta,
                  int valid, float* c, Eigen::Index ldc, const float* bias, float* column_max) {
  __m256 acc[kVectors][NR];
#pragma GCC unroll 8
  for (int j = 0; j < NR; ++j) {
#pragma GCC unroll 2
    for (int v = 0; v < kVectors; ++v) acc[v][j] = _mm256_setzero_ps();
  }
  for (int k = 0; k < depth; ++k) {
    if constexpr (kTransB) {
      _mm_prefetch(reinterpret_cast<const char*>(b_element<true>(b, ldb, k + kPrefetchAhead, 0)), _MM_HINT_T0);
    }
    __m256 a[kVectors];
#pragma GCC unroll 2
    for (int v = 0; v < kVectors; ++v) a[v] = _mm256_loadu_ps(panel + static_cast<std::size_t>(k) * kRows + 8 * v);
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const __m256 bj = _mm256_broadcast_ss(b_element<kTransB>(b, ldb, k, j));
#pragma GCC unroll 2
      for (int v = 0; v < kVectors; ++v) acc[v][j] = _mm256_fmadd_ps(a[v], bj, acc[v][j]);
    }
  }
  if constexpr (kVectors == 2) {
    if (valid == kRows) {
      // A full panel: whole-vector stores, the same values as the scalar path.
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) {
        __m256& lo = acc[0][j];
        __m256& hi = acc[1][j];
        float* cj = c + j * ldc;
        if (beta != 0.0f) {
          lo = _mm256_add_ps(_mm256_loadu_ps(cj), lo);
          hi = _mm256_add_ps(_mm256_loadu_ps(cj + 8), hi);
        }
        if constexpr (kLogits) {
          lo = _mm256_add_ps(lo, _mm256_loadu_ps(bias));
          hi = _mm256_add_ps(hi, _mm256_loadu_ps(bias + 8));
          float* lanes = column_max + j * kMaxLanes;
          _mm256_storeu_ps(lanes, _mm256_max_ps(_mm256_loadu_ps(lanes), _mm256_max_ps(lo, hi)));
        }
        _mm256_storeu_ps(cj, lo);
        _mm256_storeu_ps(cj + 8, hi);
      }
      return;
    }
  }
  // The last panel of a matrix whose rows are not a multiple of kRows leaves
  // the registers through a local buffer, so that the loop above keeps every
  // accumulator in a register instead of mirroring it on the stack.
  alignas(32) float out[NR][kRows];
#pragma GCC unroll 8
  for (int j = 0; j < NR; ++j) {
#pragma GCC unroll 2
    for (int v = 0; v < kVectors; ++v) _mm256_store_ps(out[j] + 8 * v, acc[v][j]);
  }
  for (int j = 0; j < NR; ++j) {
    store_column(out[j], beta, valid, c + j * ldc);
    if constexpr (kLogits) add_bias_and_max(bias, valid, c + j * ldc, column_max + j * kMaxLanes);
  }
}

#else

// The same order of operations in plain C++, for builds without AVX2.
template <int NR, int kVectors, bool kTransB, bool kLogits>
void panel_kernel(const float* panel, int depth, const float* b, Eigen::Index ldb, float beta,
                  int valid, float* c, Eigen::Index ldc, const float* bias, float* column_max) {
  float acc[NR][kRows] = {};
  for (int k = 0; k < depth; ++k) {
    const float* a = panel + static_cast<std::size_t>(k) * kRows;
    for (int j = 0; j < NR; ++j) {
      const float bj = *b_element<kTransB>(b, ldb, k, j);
      for (int r = 0; r < 8 * kVectors; ++r) acc[j][r] += a[r] * bj;
    }
  }
  for (int j = 0; j < NR; ++j) {
    store_column(acc[j], beta, valid, c + j * ldc);
    if constexpr (kLogits) add_bias_and_max(bias, valid, c + j * ldc, column_max + j * kMaxLanes);
  }
}

#endif

using PanelKernel = void (*)(const float*, int, const float*, Eigen::Index, float, int, float*,
                             Eigen::Index, const float*, float*);

// Kernels by tile width. kVectors 1 serves a last panel of at most 8 rows.
template <bool kTransB, bool kLogits, int kVectors = 2>
constexpr PanelKernel kKernels[kMaxTile + 1] = {
    nullptr,
    panel_kernel<1, kVectors, kTransB, kLogits>,
    panel_kernel<2, kVectors, kTransB, kLogits>,
    panel_kernel<3, kVectors, kTransB, kLogits>,
    panel_kernel<4, kVectors, kTransB, kLogits>,
    panel_kernel<5, kVectors, kTransB, kLogits>,
    panel_kernel<6, kVectors, kTransB, kLogits>};

}  // namespace

PackedMatrix::PackedMatrix(int rows, int max_cols) : PackedMatrix(floats_for(rows, max_cols)) {
  rows_ = rows;
  cols_ = max_cols;
  panels_ = (rows + kRows - 1) / kRows;
}

PackedMatrix::PackedMatrix(std::size_t floats) {
  data_.reserve(floats);
  advise_huge_pages(data_.data(), floats * sizeof(float));
  data_.resize(floats, 0.0f);
}

std::size_t PackedMatrix::floats_for(int rows, int cols) {
  return static_cast<std::size_t>((rows + kRows - 1) / kRows) * cols * kRows;
}

void PackedMatrix::pack(const ConstMatRef& a, Trans trans) {
  const bool transposed = trans == Trans::kYes;
  rows_ = static_cast<int>(transposed ? a.cols() : a.rows());
  cols_ = static_cast<int>(transposed ? a.rows() : a.cols());
  panels_ = (rows_ + kRows - 1) / kRows;
  assert(floats_for(rows_, cols_) <= data_.size());
  // Rows past the end of the last panel keep whatever they held: the kernels
  // compute them in registers and store_column() drops them.
  if (transposed) {
    // Panel p contains columns first..first+15 of a, next to each other in memory.
    parallel_for(panels_, [&](Eigen::Index p) {
      const int first = static_cast<int>(p) * kRows;
      const int valid = std::min(kRows, rows_ - first);
      float* panel = data_.data() + static_cast<std::size_t>(p) * cols_ * kRows;
      for (int k = 0; k < cols_; ++k) {
        float* dst = panel + static_cast<std::size_t>(k) * kRows;
        for (int r = 0; r < valid; ++r) dst[r] = a(k, first + r);
      }
    });
    return;
  }
  // Column k of a goes to slot k of every panel: each column is read once, in
  // order, however deep the matrix (W of the decoder is 10000 deep).
  parallel_for(cols_, [&](Eigen::Index k) {
    const float* src = a.data() + k * a.outerStride();
    for (int p = 0; p < panels_; ++p) {
      const int first = p * kRows;
      const int valid = std::min(kRows, rows_ - first);
      float* dst = data_.data() + (static_cast<std::size_t>(p) * cols_ + k) * kRows;
      std::copy(src + first, src + first + valid, dst);
    }
  });
}

template <bool kTransB>
void PackedMatrix::run(const float* b, Eigen::Index ldb, int n, float beta, MatRef c, const float* bias,
                       float* column_max) const {
  assert(beta == 0.0f || beta == 1.0f);
  if (n == 0 || panels_ == 0) return;  // c has no element
  const bool logits = column_max != nullptr;
  if (logits) {
    std::fill_n(column_max, static_cast<std::size_t>(n) * kMaxLanes, -std::numeric_limits<float>::infinity());
  }
  // Tiles of nearly equal width: a narrow last tile would have too few
  // independent accumulators to hide the latency of its FMAs.
  const int tiles = (n + kMaxTile - 1) / kMaxTile;
  // The depth goes in slices of kDepthBlock, and the panels' slices in blocks
  // small enough to stay in L2 while every tile of b passes over them. Within
  // a block each tile writes its columns top to bottom: with tall c (the
  // decoder's V rows), hopping between columns at every panel leaves each
  // store on a different page and costs a third of the speed.
  // A transposed b costs a cache line per k and column tile, so there every
  // panel's slice stays in L2 and each tile of b is read once per slice.
  const int slice = kTransB ? std::clamp(static_cast<int>(kTransposedSliceBytes / (panels_ * kRows * sizeof(float))),
                                         64, kDepthBlock)
                            : kDepthBlock;
  for (int k0 = 0; k0 < cols_; k0 += slice) {
    const int depth = std::min(slice, cols_ - k0);
    const float slice_beta = k0 == 0 ? beta : 1.0f;
    const bool last_slice = k0 + depth == cols_;
    const bool epilogue = logits && last_slice;
    const PanelKernel* kernels = epilogue ? kKernels<kTransB, true> : kKernels<kTransB, false>;
    const PanelKernel* half_kernels = epilogue ? kKernels<kTransB, true, 1> : kKernels<kTransB, false, 1>;
    const std::size_t slice_bytes = static_cast<std::size_t>(depth) * kRows * sizeof(float);
    const int block = kTransB ? panels_ : static_cast<int>(std::max<std::size_t>(1, kBlockBytes / slice_bytes));
    for (int p0 = 0; p0 < panels_; p0 += block) {
      const int p1 = std::min(panels_, p0 + block);
      for (int tile = 0; tile < tiles; ++tile) {
        const int j = n * tile / tiles;
        const int width = n * (tile + 1) / tiles - j;
        const float* b_tile = b_element<kTransB>(b, ldb, k0, j);
        for (int p = p0; p < p1; ++p) {
          const int first = p * kRows;
          const int valid = std::min(kRows, rows_ - first);
          const float* panel = data_.data() + (static_cast<std::size_t>(p) * cols_ + k0) * kRows;
          const PanelKernel kernel = (valid <= kRows / 2 ? half_kernels : kernels)[width];
          kernel(panel, depth, b_tile, ldb, slice_beta, valid, c.data() + j * c.outerStride() + first,
                 c.outerStride(), logits ? bias + first : nullptr,
                 logits ? column_max + static_cast<std::size_t>(j) * kMaxLanes : nullptr);
        }
      }
    }
  }
}

void PackedMatrix::multiply(const ConstMatRef& b, float beta, MatRef c) const {
  assert(b.rows() == cols_);
  assert(c.rows() == rows_);
  assert(c.cols() == b.cols());
  run<false>(b.data(), b.outerStride(), static_cast<int>(b.cols()), beta, c, nullptr, nullptr);
}

void PackedMatrix::multiply_logits(const ConstMatRef& b, const float* bias, MatRef c, float* column_max) const {
  assert(b.rows() == cols_);
  assert(c.rows() == rows_);
  assert(c.cols() == b.cols());
  run<false>(b.data(), b.outerStride(), static_cast<int>(b.cols()), 0.0f, c, bias, column_max);
}

void PackedMatrix::multiply_transposed(const ConstMatRef& bt, float beta, MatRef c) const {
  assert(bt.cols() == cols_);
  assert(c.rows() == rows_);
  assert(c.cols() == bt.rows());
  run<true>(bt.data(), bt.outerStride(), static_cast<int>(bt.rows()), beta, c, nullptr, nullptr);
}

bool packed_kernel_available() {
#ifdef LSTM_PACKED_AVX2
  return true;
#else
  return false;
#endif
}

void set_packed_products(bool enabled) { g_packed_products = enabled; }

bool packed_products() { return g_packed_products && packed_kernel_available(); }

}  // namespace lstm

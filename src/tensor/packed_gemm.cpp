#include "tensor/packed_gemm.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <limits>
#include <utility>

#include "tensor/memory.h"
#include "tensor/parallel.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LSTM_PACKED_AVX2 1
// _mm512_extractf32x8_ps needs AVX512DQ, which every AVX-512 CPU since
// Skylake-SP has (the Xeon Phi lacks it and keeps the AVX2 kernels).
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define LSTM_PACKED_AVX512 1
#endif
#endif

namespace lstm {

namespace {

constexpr int kRows = PackedMatrix::kPanelRows;
constexpr int kMaxLanes = PackedMatrix::kMaxLanes;
bool g_packed_products = true;
bool g_avx512_kernels = true;
// Widest column tile: 2 x kMaxTile accumulators plus the two panel loads and
// one broadcast fit the 16 vector registers of AVX2.
constexpr int kMaxTile = 6;
// The same with AVX-512's 32 registers, for a kernel over two panels.
constexpr int kMaxTile512 = 12;
// Bytes of panels multiply() keeps in cache while the column tiles pass over
// them: a quarter of the 512 KiB L2 of a Zen 3 core, where this was tuned.
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

#ifdef LSTM_PACKED_AVX512

// The AVX-512 form of panel_kernel(): one 512-bit vector contains a panel's 16
// rows at one k, and the kernel runs kPanels panels at once, so that each
// broadcast of b feeds kPanels FMAs. With kTail, it also runs the first 8
// rows of the next panel in a 256-bit vector: a last panel of at most 8 rows
// (H = 100 leaves 4) then rides along with the panels before it instead of
// paying a call of its own, which costs as many loads of b as a full one.
// panel_stride is the distance in floats from one panel to the next. Each
// accumulator lane goes through the same FMAs in the same order as in
// panel_kernel(), so the two give the same bits.
template <int NR, int kPanels, bool kTail, bool kTransB, bool kLogits>
void panel_kernel_512(const float* panel, std::size_t panel_stride, int depth, const float* b, Eigen::Index ldb,
                      float beta, int valid, float* c, Eigen::Index ldc, const float* bias, float* column_max) {
  __m512 acc[kPanels][NR];
  __m256 tail[NR];
#pragma GCC unroll 12
  for (int j = 0; j < NR; ++j) {
#pragma GCC unroll 2
    for (int q = 0; q < kPanels; ++q) acc[q][j] = _mm512_setzero_ps();
    if constexpr (kTail) tail[j] = _mm256_setzero_ps();
  }
  const float* tail_panel = panel + kPanels * panel_stride;
  for (int k = 0; k < depth; ++k) {
    if constexpr (kTransB) {
      const float* ahead = b_element<true>(b, ldb, k + kPrefetchAhead, 0);
      _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ahead + NR - 1), _MM_HINT_T0);
    }
    __m512 a[kPanels];
#pragma GCC unroll 2
    for (int q = 0; q < kPanels; ++q) {
      a[q] = _mm512_loadu_ps(panel + q * panel_stride + static_cast<std::size_t>(k) * kRows);
    }
    __m256 a_tail = _mm256_setzero_ps();
    if constexpr (kTail) a_tail = _mm256_loadu_ps(tail_panel + static_cast<std::size_t>(k) * kRows);
#pragma GCC unroll 12
    for (int j = 0; j < NR; ++j) {
      const __m512 bj16 = _mm512_set1_ps(*b_element<kTransB>(b, ldb, k, j));
#pragma GCC unroll 2
      for (int q = 0; q < kPanels; ++q) acc[q][j] = _mm512_fmadd_ps(a[q], bj16, acc[q][j]);
      if constexpr (kTail) tail[j] = _mm256_fmadd_ps(a_tail, _mm512_castps512_ps256(bj16), tail[j]);
    }
  }
  if (!kTail && valid == kPanels * kRows) {
#pragma GCC unroll 12
    for (int j = 0; j < NR; ++j) {
      float* cj = c + j * ldc;
      __m512 largest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
#pragma GCC unroll 2
      for (int q = 0; q < kPanels; ++q) {
        __m512& sum = acc[q][j];
        if (beta != 0.0f) sum = _mm512_add_ps(_mm512_loadu_ps(cj + q * kRows), sum);
        if constexpr (kLogits) {
          sum = _mm512_add_ps(sum, _mm512_loadu_ps(bias + q * kRows));
          largest = _mm512_max_ps(largest, sum);
        }
        _mm512_storeu_ps(cj + q * kRows, sum);
      }
      if constexpr (kLogits) {
        float* lanes = column_max + j * kMaxLanes;
        const __m256 halves = _mm256_max_ps(_mm512_castps512_ps256(largest), _mm512_extractf32x8_ps(largest, 1));
        _mm256_storeu_ps(lanes, _mm256_max_ps(_mm256_loadu_ps(lanes), halves));
      }
    }
    return;
  }
  // A last panel or a tail leaves the registers through a local buffer, as in
  // panel_kernel().
  constexpr int kOutRows = kPanels * kRows + (kTail ? 8 : 0);
  alignas(64) float out[NR][kOutRows];
#pragma GCC unroll 12
  for (int j = 0; j < NR; ++j) {
#pragma GCC unroll 2
    for (int q = 0; q < kPanels; ++q) _mm512_storeu_ps(out[j] + q * kRows, acc[q][j]);
    if constexpr (kTail) _mm256_storeu_ps(out[j] + kPanels * kRows, tail[j]);
  }
  for (int j = 0; j < NR; ++j) {
    store_column(out[j], beta, valid, c + j * ldc);
    if constexpr (kLogits) add_bias_and_max(bias, valid, c + j * ldc, column_max + j * kMaxLanes);
  }
}

#endif

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

template <bool kTransB, bool kLogits, int kVectors, std::size_t... NR>
constexpr std::array<PanelKernel, sizeof...(NR) + 1> kernel_table(std::index_sequence<NR...>) {
  return {nullptr, panel_kernel<static_cast<int>(NR) + 1, kVectors, kTransB, kLogits>...};
}

// Kernels by tile width. kVectors 1 serves a last panel of at most 8 rows.
template <bool kTransB, bool kLogits, int kVectors = 2>
constexpr auto kKernels = kernel_table<kTransB, kLogits, kVectors>(std::make_index_sequence<kMaxTile>());

#ifdef LSTM_PACKED_AVX512

using PanelKernel512 = void (*)(const float*, std::size_t, int, const float*, Eigen::Index, float, int, float*,
                                Eigen::Index, const float*, float*);

template <bool kTransB, bool kLogits, int kPanels, bool kTail, std::size_t... NR>
constexpr std::array<PanelKernel512, sizeof...(NR) + 1> kernel_table_512(std::index_sequence<NR...>) {
  return {nullptr, panel_kernel_512<static_cast<int>(NR) + 1, kPanels, kTail, kTransB, kLogits>...};
}

// Widest tile of a kernel with a tail, which needs three accumulators per column.
constexpr int kMaxTailTile = 9;

// AVX-512 kernels by tile width, over one or two panels and perhaps a tail.
template <bool kTransB, bool kLogits, int kPanels, bool kTail = false>
constexpr auto kKernels512 = kernel_table_512<kTransB, kLogits, kPanels, kTail>(
    std::make_index_sequence<kTail ? kMaxTailTile : kMaxTile512>());

template <bool kTransB, bool kLogits>
const PanelKernel512* kernels_512(int panels, bool tail) {
  if (panels == 2) return tail ? kKernels512<kTransB, kLogits, 2, true>.data() : kKernels512<kTransB, kLogits, 2>.data();
  return tail ? kKernels512<kTransB, kLogits, 1, true>.data() : kKernels512<kTransB, kLogits, 1>.data();
}

template <bool kTransB>
const PanelKernel512* kernels_512(int panels, bool tail, bool epilogue) {
  return epilogue ? kernels_512<kTransB, true>(panels, tail) : kernels_512<kTransB, false>(panels, tail);
}

#endif

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
#ifdef LSTM_PACKED_AVX512
  const bool wide = g_avx512_kernels;
#else
  const bool wide = false;
#endif
  // Tiles of nearly equal width: a narrow last tile would have too few
  // independent accumulators to hide the latency of its FMAs.
  const int max_tile = wide ? kMaxTile512 : kMaxTile;
  const int tiles = (n + max_tile - 1) / max_tile;
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
  const std::size_t panel_stride = static_cast<std::size_t>(cols_) * kRows;
  // Whether the last panel has at most 8 rows in use.
  const bool half_last = rows_ - (panels_ - 1) * kRows <= kRows / 2;
  for (int k0 = 0; k0 < cols_; k0 += slice) {
    const int depth = std::min(slice, cols_ - k0);
    const float slice_beta = k0 == 0 ? beta : 1.0f;
    const bool last_slice = k0 + depth == cols_;
    const bool epilogue = logits && last_slice;
    const auto& kernels = epilogue ? kKernels<kTransB, true> : kKernels<kTransB, false>;
    const auto& half_kernels = epilogue ? kKernels<kTransB, true, 1> : kKernels<kTransB, false, 1>;
    const std::size_t slice_bytes = static_cast<std::size_t>(depth) * kRows * sizeof(float);
    int block = kTransB ? panels_ : static_cast<int>(std::max<std::size_t>(1, kBlockBytes / slice_bytes));
    // The two-panel kernel takes panels in pairs, so blocks hold an even number.
    if (wide && !kTransB) block = std::max(2, block & ~1);
    for (int p0 = 0; p0 < panels_; p0 += block) {
      const int p1 = std::min(panels_, p0 + block);
      for (int tile = 0; tile < tiles; ++tile) {
        const int j = n * tile / tiles;
        const int width = n * (tile + 1) / tiles - j;
        const float* b_tile = b_element<kTransB>(b, ldb, k0, j);
        float* c_tile = c.data() + j * c.outerStride();
        float* max_tile_lanes = logits ? column_max + static_cast<std::size_t>(j) * kMaxLanes : nullptr;
        for (int p = p0; p < p1;) {
          const int first = p * kRows;
          const float* panel = data_.data() + p * panel_stride + static_cast<std::size_t>(k0) * kRows;
          const float* panel_bias = logits ? bias + first : nullptr;
#ifdef LSTM_PACKED_AVX512
          if (wide) {
            // Panels in pairs. A last panel of at most 8 rows goes as the
            // tail of the one or two before it, in two calls of half the
            // tile when the tile is wider than such a kernel.
            const int rest = p1 - p;
            const bool tail = half_last && p1 == panels_ && rest >= 2 && rest <= 3;
            const int panels = std::min(2, rest - (tail ? 1 : 0));
            const int valid = std::min(panels * kRows + (tail ? 8 : 0), rows_ - first);
            const PanelKernel512* table = kernels_512<kTransB>(panels, tail, epilogue);
            const int parts = tail && width > kMaxTailTile ? 2 : 1;
            for (int part = 0; part < parts; ++part) {
              const int j0 = width * part / parts;
              table[width * (part + 1) / parts - j0](
                  panel, panel_stride, depth, b_element<kTransB>(b_tile, ldb, 0, j0), ldb, slice_beta, valid,
                  c_tile + j0 * c.outerStride() + first, c.outerStride(), panel_bias,
                  logits ? max_tile_lanes + j0 * kMaxLanes : nullptr);
            }
            p += panels + (tail ? 1 : 0);
            continue;
          }
#endif
          const int valid = std::min(kRows, rows_ - first);
          const PanelKernel kernel = (valid <= kRows / 2 ? half_kernels : kernels)[width];
          kernel(panel, depth, b_tile, ldb, slice_beta, valid, c_tile + first, c.outerStride(), panel_bias,
                 max_tile_lanes);
          ++p;
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

bool avx512_kernel_available() {
#ifdef LSTM_PACKED_AVX512
  return true;
#else
  return false;
#endif
}

void set_avx512_kernels(bool enabled) { g_avx512_kernels = enabled; }

bool avx512_kernels() { return g_avx512_kernels && avx512_kernel_available(); }

const char* packed_products_name() {
  if (!packed_products()) return "blas";
  return avx512_kernels() ? "packed avx512" : "packed avx2";
}

bool packed_products() { return g_packed_products && packed_kernel_available(); }

}  // namespace lstm

#include "ops/softmax_cross_entropy.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>

#include "tensor/packed_gemm.h"
#include "tensor/parallel.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
// The same condition as the AVX-512 kernels of tensor/packed_gemm.cpp, so
// that avx512_kernel_available() speaks for both.
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define LSTM_SOFTMAX_AVX512 1
#endif
#endif

namespace lstm {

namespace {

constexpr int kMaxLanes = PackedMatrix::kMaxLanes;

#if defined(__AVX2__) && defined(__FMA__)

// The vector operations exp_nonpositive() uses, for 256-bit AVX2 vectors and
// for 512-bit AVX-512 ones. Each lane goes through the same operations in
// both, so the two give the same bits.
struct Avx2Ops {
  using V = __m256;
  using Mask = __m256;
  static V set1(float x) { return _mm256_set1_ps(x); }
  static Mask less(V x, V y) { return _mm256_cmp_ps(x, y, _CMP_LT_OQ); }
  static V max(V x, V y) { return _mm256_max_ps(x, y); }
  static V mul(V x, V y) { return _mm256_mul_ps(x, y); }
  static V fmadd(V x, V y, V z) { return _mm256_fmadd_ps(x, y, z); }
  static V fnmadd(V x, V y, V z) { return _mm256_fnmadd_ps(x, y, z); }
  static V round(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // 2^n for integral n in [-126, 127], through the exponent bits.
  static V pow2(V n) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  // x where mask is clear, 0 where it is set.
  static V zero_where(Mask mask, V x) { return _mm256_andnot_ps(mask, x); }
};

#ifdef LSTM_SOFTMAX_AVX512
struct Avx512Ops {
  using V = __m512;
  using Mask = __mmask16;
  static V set1(float x) { return _mm512_set1_ps(x); }
  static Mask less(V x, V y) { return _mm512_cmp_ps_mask(x, y, _CMP_LT_OQ); }
  static V max(V x, V y) { return _mm512_max_ps(x, y); }
  static V mul(V x, V y) { return _mm512_mul_ps(x, y); }
  static V fmadd(V x, V y, V z) { return _mm512_fmadd_ps(x, y, z); }
  static V fnmadd(V x, V y, V z) { return _mm512_fnmadd_ps(x, y, z); }
  static V round(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V pow2(V n) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  static V zero_where(Mask mask, V x) { return _mm512_maskz_mov_ps(static_cast<__mmask16>(~mask), x); }
};
#endif

// exp(x) for x <= 0 of N vectors: x = n ln2 + r with |r| <= ln2/2, so
// exp(x) = 2^n exp(r), and exp(r) by its Taylor series to r^7/7!, whose
// remainder is below 1e-8 relative. Inputs below -87 (exp < 1.7e-38, at the
// bottom of float's normal range) give 0. The softmax tests hold the result
// to a double reference. Every vector goes through the same operations as it
// would alone. They advance in lockstep so that the core overlaps their
// chains of dependent FMAs. One vector alone leaves the FMA units mostly idle.
template <class Ops, int N>
inline void exp_nonpositive(typename Ops::V (&x)[N]) {
  using V = typename Ops::V;
  const V kMin = Ops::set1(-87.0f);
  constexpr float kTaylor[] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f};
  typename Ops::Mask too_small[N];
  V n[N], r[N], p[N];
#pragma GCC unroll 8
  for (int q = 0; q < N; ++q) {
    too_small[q] = Ops::less(x[q], kMin);
    x[q] = Ops::max(x[q], kMin);
    n[q] = Ops::round(Ops::mul(x[q], Ops::set1(1.44269504088896341f)));
  }
  // ln 2 in two parts, so that n * ln2_hi is exact and r keeps its low bits.
#pragma GCC unroll 8
  for (int q = 0; q < N; ++q) r[q] = Ops::fnmadd(n[q], Ops::set1(0.693359375f), x[q]);
#pragma GCC unroll 8
  for (int q = 0; q < N; ++q) r[q] = Ops::fnmadd(n[q], Ops::set1(-2.12194440e-4f), r[q]);
  // Horner's rule from the r^7 term down.
#pragma GCC unroll 8
  for (int q = 0; q < N; ++q) p[q] = Ops::set1(1.0f / 5040.0f);
#pragma GCC unroll 8
  for (float coefficient : kTaylor) {
#pragma GCC unroll 8
    for (int q = 0; q < N; ++q) p[q] = Ops::fmadd(p[q], r[q], Ops::set1(coefficient));
  }
  // Here n >= -126, so 2^n is a normal float.
#pragma GCC unroll 8
  for (int q = 0; q < N; ++q) x[q] = Ops::zero_where(too_small[q], Ops::mul(p[q], Ops::pow2(n[q])));
}

// Vectors that exp_nonpositive() takes at once in the softmax. In a timing of
// softmax_cross_entropy() alone on Zen 3 cores, four were faster than one,
// six or eight.
constexpr int kExpVectors = 4;
// The same for 512-bit vectors, which cover as many floats as four of 256.
constexpr int kExpVectors512 = 2;

// Returns the loss of one column of v logits. With grad_scale, the column
// becomes the gradient. Three passes: bias and max (skipped when max_lanes
// contains the maxima), exp and sum, scale.
float column_loss_and_grad(float* z, Eigen::Index v, const float* bias, const float* max_lanes, TokenId target,
                           std::optional<float> grad_scale, bool avx512) {
  const Eigen::Index vectors = v / 8 * 8;
  float max_logit = -std::numeric_limits<float>::infinity();
  alignas(32) float lanes[8];
  if (max_lanes != nullptr) {
    for (int i = 0; i < kMaxLanes; ++i) max_logit = std::max(max_logit, max_lanes[i]);
  } else {
    __m256 max8 = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (Eigen::Index i = 0; i < vectors; i += 8) {
      __m256 zi = _mm256_loadu_ps(z + i);
      if (bias != nullptr) zi = _mm256_add_ps(zi, _mm256_loadu_ps(bias + i));
      _mm256_storeu_ps(z + i, zi);
      max8 = _mm256_max_ps(max8, zi);
    }
    for (Eigen::Index i = vectors; i < v; ++i) {
      if (bias != nullptr) z[i] += bias[i];
      max_logit = std::max(max_logit, z[i]);
    }
    _mm256_store_ps(lanes, max8);
    for (float lane : lanes) max_logit = std::max(max_logit, lane);
  }

  const float target_logit = z[target];
  const __m256 shift = _mm256_set1_ps(max_logit);
  __m256 sum8 = _mm256_setzero_ps();
  alignas(32) float tail[8] = {};
  const Eigen::Index rest = v - vectors;
  for (Eigen::Index i = 0; i < rest; ++i) tail[i] = z[vectors + i] - max_logit;
  for (int i = static_cast<int>(rest); i < 8; ++i) tail[i] = -std::numeric_limits<float>::infinity();
  // The sum takes the vectors of 8 in index order, however many go through
  // exp at once and however wide: a 512-bit vector adds its low half, then
  // its high half.
  Eigen::Index i = 0;
#ifdef LSTM_SOFTMAX_AVX512
  if (avx512) {
    const __m512 shift16 = _mm512_set1_ps(max_logit);
    for (; i + 16 * kExpVectors512 <= vectors; i += 16 * kExpVectors512) {
      __m512 e[kExpVectors512];
      for (int q = 0; q < kExpVectors512; ++q) e[q] = _mm512_sub_ps(_mm512_loadu_ps(z + i + 16 * q), shift16);
      exp_nonpositive<Avx512Ops>(e);
      for (int q = 0; q < kExpVectors512; ++q) {
        if (grad_scale) _mm512_storeu_ps(z + i + 16 * q, e[q]);
        sum8 = _mm256_add_ps(sum8, _mm512_castps512_ps256(e[q]));
        sum8 = _mm256_add_ps(sum8, _mm512_extractf32x8_ps(e[q], 1));
      }
    }
  }
#endif
  for (; i + 8 * kExpVectors <= vectors; i += 8 * kExpVectors) {
    __m256 e[kExpVectors];
    for (int q = 0; q < kExpVectors; ++q) e[q] = _mm256_sub_ps(_mm256_loadu_ps(z + i + 8 * q), shift);
    exp_nonpositive<Avx2Ops>(e);
    for (int q = 0; q < kExpVectors; ++q) {
      if (grad_scale) _mm256_storeu_ps(z + i + 8 * q, e[q]);
      sum8 = _mm256_add_ps(sum8, e[q]);
    }
  }
  for (; i < vectors; i += 8) {
    __m256 e[1] = {_mm256_sub_ps(_mm256_loadu_ps(z + i), shift)};
    exp_nonpositive<Avx2Ops>(e);
    if (grad_scale) _mm256_storeu_ps(z + i, e[0]);
    sum8 = _mm256_add_ps(sum8, e[0]);
  }
  __m256 tail_exp[1] = {_mm256_load_ps(tail)};
  exp_nonpositive<Avx2Ops>(tail_exp);
  sum8 = _mm256_add_ps(sum8, tail_exp[0]);
  _mm256_store_ps(lanes, sum8);
  float sum = 0.0f;
  for (float lane : lanes) sum += lane;

  if (grad_scale) {
    _mm256_store_ps(tail, tail_exp[0]);
    for (Eigen::Index i = 0; i < rest; ++i) z[vectors + i] = tail[i];
    const float scale = *grad_scale / sum;
    const __m256 scale8 = _mm256_set1_ps(scale);
    Eigen::Index i = 0;
#ifdef LSTM_SOFTMAX_AVX512
    if (avx512) {
      const __m512 scale16 = _mm512_set1_ps(scale);
      for (; i + 16 <= vectors; i += 16) _mm512_storeu_ps(z + i, _mm512_mul_ps(_mm512_loadu_ps(z + i), scale16));
    }
#endif
    for (; i < vectors; i += 8) {
      _mm256_storeu_ps(z + i, _mm256_mul_ps(_mm256_loadu_ps(z + i), scale8));
    }
    for (Eigen::Index i = vectors; i < v; ++i) z[i] *= scale;
    z[target] -= *grad_scale;
  }
  // (max - target) first: exact for large logits, where max + log(sum) would round.
  return std::log(sum) + (max_logit - target_logit);
}

#else

// Returns the loss of one column of v logits. With grad_scale, the column
// becomes the gradient.
float column_loss_and_grad(float* column, Eigen::Index v, const float* bias, const float* max_lanes,
                           TokenId target, std::optional<float> grad_scale, bool /*avx512*/) {
  auto z = Eigen::Map<Eigen::ArrayXf>(column, v);
  if (bias != nullptr) z += Eigen::Map<const Eigen::ArrayXf>(bias, v);
  const float max_logit = max_lanes != nullptr ? Eigen::Map<const Eigen::ArrayXf>(max_lanes, kMaxLanes).maxCoeff()
                                               : z.maxCoeff();
  const float target_logit = z(target);
  float sum = 0.0f;
  if (grad_scale) {
    z = (z - max_logit).exp();
    sum = z.sum();
    z *= *grad_scale / sum;
    z(target) -= *grad_scale;
  } else {
    sum = (z - max_logit).exp().sum();
  }
  // (max - target) first: exact for large logits, where max + log(sum) would round.
  return std::log(sum) + (max_logit - target_logit);
}

#endif

}  // namespace

void softmax_cross_entropy(MatRef logits, const float* bias, const TokenId* targets, float* column_loss,
                           std::optional<float> grad_scale, Threads threads, const float* column_max) {
  assert(column_max == nullptr || bias == nullptr);
  const Eigen::Index n = logits.cols();
  const Eigen::Index v = logits.rows();
  const bool avx512 = avx512_kernels();
  auto column = [&](Eigen::Index j) {
    const float* max_lanes = column_max != nullptr ? column_max + j * kMaxLanes : nullptr;
    column_loss[j] = column_loss_and_grad(logits.col(j).data(), v, bias, max_lanes, targets[j], grad_scale, avx512);
  };
  if (threads == Threads::kAll) {
    parallel_for(n, column);
  } else {
    for (Eigen::Index j = 0; j < n; ++j) column(j);
  }
}

}  // namespace lstm

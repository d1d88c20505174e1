#pragma once
// A matrix laid out once for many products, or for one product whose other
// operand is tall and narrow.
//
// The recurrent product of a window, Wh (G x H) times h_{t-1} (H x B), has
// few columns (the streams one thread handles) and runs once per step with
// the same Wh. A general GEMM copies Wh into its own layout at every call,
// and with B of 5 to 20 that copy is a large share of the call. On one AMD Zen 3
// core, the 2x650 model's step shapes ran at 83 to 90 GFLOP/s here and at 20
// to 65 through OpenBLAS (`lstm-bench` prints both).
// The decoder's products (logits = W^T h, dh = W dlogits, dW = h dlogits^T)
// have V = 10000 on one side and a small H on another. There OpenBLAS copies
// its operands and zeroes the V x T*B logits at every call, while this layout
// lets each thread take its own columns of the logits and of dW.
//
// PackedMatrix copies op(A) into panels of kPanelRows rows, each stored
// k-major (for every k, the panel's kPanelRows values are contiguous), and
// multiply() streams the panels past tiles of up to 6 columns of b with a
// register-blocked AVX2 kernel. A last panel with at most half its rows in
// use (H = 100 leaves 4) runs a kernel over its first half only. Where the
// build targets AVX-512, a kernel takes two panels and up to 12 columns at
// once, and such a last panel rides along with the two before it.
//
// Every output element is a sum over k in increasing order, in slices of at
// most 512 k that depend only on the shape of op(A). Neither the number of
// columns nor how the caller splits them changes it, so results do not depend
// on the thread count.

#include <vector>

#include "tensor/gemm.h"
#include "tensor/types.h"

namespace lstm {

class PackedMatrix {
 public:
  static constexpr int kPanelRows = 16;
  // Partial maxima that multiply_logits() records per column.
  static constexpr int kMaxLanes = 8;

  PackedMatrix() = default;
  // Reserves room for a rows x max_cols operand, so that pack() allocates nothing.
  PackedMatrix(int rows, int max_cols);
  // Reserves room for `floats` floats: any operand with floats_for(rows,
  // cols) <= floats fits, whatever its shape.
  explicit PackedMatrix(std::size_t floats);
  static std::size_t floats_for(int rows, int cols);

  // Copies op(a) into the panels. op(a) may have any shape that fits the
  // room reserved. Runs on every thread.
  void pack(const ConstMatRef& a, Trans trans);

  // c = op(a) * b + beta * c, where b is cols x n and c is rows x n. beta is
  // 0 (c is overwritten, never read) or 1. Runs on the calling thread, so
  // several threads may each multiply their own column range of b and c.
  void multiply(const ConstMatRef& b, float beta, MatRef c) const;

  // Computes the decoder's logits c = op(a) * b + bias, with bias (rows()
  // floats) added to every column, the same values as multiply() followed by
  // adding the bias. Also writes kMaxLanes partial maxima per column j to
  // column_max[j * kMaxLanes, (j + 1) * kMaxLanes), whose largest is the
  // column's largest element, so the softmax skips its pass for them.
  void multiply_logits(const ConstMatRef& b, const float* bias, MatRef c, float* column_max) const;

  // The same with b given as its transpose bt (n x cols), whose rows are
  // contiguous: dW = h dlogits^T of the decoder reads dlogits this way.
  void multiply_transposed(const ConstMatRef& bt, float beta, MatRef c) const;

  int rows() const { return rows_; }
  int cols() const { return cols_; }
  std::size_t bytes() const { return data_.size() * sizeof(float); }

 private:
  template <bool kTransB>
  void run(const float* b, Eigen::Index ldb, int n, float beta, MatRef c, const float* bias,
           float* column_max) const;

  // Shape of the last pack(), or the reserved one before the first.
  int rows_ = 0;
  int cols_ = 0;
  int panels_ = 0;
  std::vector<float> data_;  // panels_ * cols_ * kPanelRows of it in use
};

// True when multiply() runs the AVX2/FMA kernel, which is faster than the
// BLAS product for the recurrent step and the decoder's products. Without it (a
// portable build) the model keeps calling gemm() and multiply() is a plain
// loop kept for tests.
bool packed_kernel_available();

// Whether workspaces built from now on use PackedMatrix for the per-step
// recurrent products and the decoder's products: packed_kernel_available()
// unless turned off here (lstm-bench does, to time the BLAS path in the same
// process).
void set_packed_products(bool enabled);
bool packed_products();

// True when the build targets AVX-512F and AVX-512DQ (-march=native on such a CPU).
// Then the products above and the softmax use 512-bit kernels, which give
// the same bits as the AVX2 ones: every element is computed by the same
// operations in the same order, only more of them at once.
bool avx512_kernel_available();

// Whether the products and the softmax use the AVX-512 kernels where the
// build has them (default true). Tests turn them off to compare the bits,
// and lstm-bench to time both.
void set_avx512_kernels(bool enabled);
bool avx512_kernels();

// Names the kernels that run the recurrent step products and the decoder's
// products from now on: "packed avx512", "packed avx2" or "blas".
const char* packed_products_name();

}  // namespace lstm

#pragma once
// A constant matrix laid out for many products with narrow right-hand sides.
//
// The recurrent product of a window, Wh (G x H) times h_{t-1} (H x B), has
// few columns (the streams one thread handles) and runs once per step with
// the same Wh. A general GEMM copies Wh into its own layout at every call,
// and with B of 5 to 20 that copy is a large share of the call. On one core of
// the development machine, the 2x650 model's step shapes ran at 83 to 90 GFLOP/s
// here and at 20 to 65 through OpenBLAS (`lstm-bench` prints both).
// PackedMatrix copies op(A) once per window into panels of kPanelRows rows,
// each stored k-major (for every k, the panel's kPanelRows values are
// contiguous), and multiply() streams each panel once per call with a
// register-blocked kernel.
//
// Every output element is one sum over k in increasing order, whatever the
// number of columns or how the caller splits them, so results do not depend
// on the thread count.

#include <vector>

#include "tensor/gemm.h"
#include "tensor/types.h"

namespace lstm {

class PackedMatrix {
 public:
  static constexpr int kPanelRows = 16;

  PackedMatrix() = default;
  // Reserves room for a rows x cols operand, so that pack() allocates nothing.
  PackedMatrix(int rows, int cols);

  // Copies op(a) (rows x cols) into the panels. Runs on every thread.
  void pack(const ConstMatRef& a, Trans trans);

  // c = op(a) * b + beta * c, where b is cols x n and c is rows x n. beta is
  // 0 (c is overwritten, never read) or 1. Runs on the calling thread, so
  // several threads may each multiply their own column range of b and c.
  void multiply(const ConstMatRef& b, float beta, MatRef c) const;

  int rows() const { return rows_; }
  int cols() const { return cols_; }
  std::size_t bytes() const { return data_.size() * sizeof(float); }

 private:
  int rows_ = 0;
  int cols_ = 0;
  int panels_ = 0;
  std::vector<float> data_;  // panels_ * cols_ * kPanelRows, zero-padded rows
};

// True when multiply() runs the AVX2/FMA kernel, which is faster than the
// BLAS product for the recurrent step. Without it (a portable build) the
// layers keep calling gemm() and multiply() is a plain loop kept for tests.
bool packed_kernel_available();

// Whether recurrent layers built from now on use PackedMatrix for their
// per-step products: packed_kernel_available() unless turned off here
// (lstm-bench does, to time the BLAS path in the same process).
void set_packed_recurrence(bool enabled);
bool packed_recurrence();

}  // namespace lstm

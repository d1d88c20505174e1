// The packed product used by the recurrence against a double-precision
// reference, over shapes that exercise partial panels and column tiles, and
// gemm()'s split of a large product among threads.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "layers/recurrent.h"
#include "tensor/packed_gemm.h"
#include "test_support.h"

namespace lstm {
namespace {

using test::fill_uniform;

struct Shape {
  int rows;   // rows of op(a)
  int depth;  // columns of op(a)
  int cols;   // columns of b
};

// Largest |got - want| over the matrix, want computed in double.
double max_error(const Matrix& got, const Eigen::MatrixXd& want) {
  return (got.cast<double>() - want).cwiseAbs().maxCoeff();
}

// A rows x cols matrix of uniform values in [-1, 1].
Matrix random_matrix(Eigen::Index rows, Eigen::Index cols, Rng& rng) {
  Matrix m(rows, cols);
  fill_uniform(m, rng, 1.0f);
  return m;
}

// The left operand of a product of shape s, stored as op(a) (kNo) or as its transpose (kYes).
Matrix random_left_operand(const Shape& s, Trans trans, Rng& rng) {
  return trans == Trans::kNo ? random_matrix(s.rows, s.depth, rng) : random_matrix(s.depth, s.rows, rng);
}

class PackedProduct : public ::testing::TestWithParam<Shape> {};

TEST_P(PackedProduct, MatchesDoubleReference) {
  const Shape s = GetParam();
  Rng rng(7);
  for (Trans trans : {Trans::kNo, Trans::kYes}) {
    const Matrix a = random_left_operand(s, trans, rng);
    const Matrix b = random_matrix(s.depth, s.cols, rng);
    const Matrix c0 = random_matrix(s.rows, s.cols, rng);
    Eigen::MatrixXd op_a = a.cast<double>();
    if (trans == Trans::kYes) op_a.transposeInPlace();
    const Eigen::MatrixXd product = op_a * b.cast<double>();

    PackedMatrix packed(s.rows, s.depth);
    packed.pack(a, trans);
    // Each term is below 1 in size, so float error grows like depth * eps.
    const double tolerance = 4.0 * s.depth * std::numeric_limits<float>::epsilon();

    Matrix c = c0;
    packed.multiply(b, 1.0f, c);
    EXPECT_LT(max_error(c, product + c0.cast<double>()), tolerance) << "beta 1";

    // beta 0 must not read c: a NaN there would otherwise survive.
    c.setConstant(std::numeric_limits<float>::quiet_NaN());
    packed.multiply(b, 0.0f, c);
    EXPECT_LT(max_error(c, product), tolerance) << "beta 0";

    // The same product with b handed over as its transpose.
    const Matrix bt = b.transpose();
    c = c0;
    packed.multiply_transposed(bt, 1.0f, c);
    EXPECT_LT(max_error(c, product + c0.cast<double>()), tolerance) << "transposed b, beta 1";
    c.setConstant(std::numeric_limits<float>::quiet_NaN());
    packed.multiply_transposed(bt, 0.0f, c);
    EXPECT_LT(max_error(c, product), tolerance) << "transposed b, beta 0";
  }
}

// The decoder's epilogue: the same values as multiply() followed by adding
// the bias, and lanes whose largest value is each column's largest.
TEST_P(PackedProduct, LogitsEpilogueAddsBiasAndFindsColumnMaxima) {
  const Shape s = GetParam();
  Rng rng(11);
  for (Trans trans : {Trans::kNo, Trans::kYes}) {
    const Matrix a = random_left_operand(s, trans, rng);
    const Matrix b = random_matrix(s.depth, s.cols, rng);
    Vector bias(s.rows);
    fill_uniform(bias, rng, 4.0f);
    PackedMatrix packed(s.rows, s.depth);
    packed.pack(a, trans);

    Matrix want(s.rows, s.cols);
    packed.multiply(b, 0.0f, want);
    want.colwise() += bias;

    Matrix got = Matrix::Constant(s.rows, s.cols, std::numeric_limits<float>::quiet_NaN());
    // Stale maxima larger than any logit must not survive the call.
    std::vector<float> lanes(static_cast<std::size_t>(s.cols) * PackedMatrix::kMaxLanes, 1e30f);
    packed.multiply_logits(b, bias.data(), got, lanes.data());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), sizeof(float) * got.size()), 0)
        << "logits differ from multiply() plus the bias";
    for (int j = 0; j < s.cols; ++j) {
      const float* column = lanes.data() + static_cast<std::size_t>(j) * PackedMatrix::kMaxLanes;
      EXPECT_EQ(*std::max_element(column, column + PackedMatrix::kMaxLanes), want.col(j).maxCoeff())
          << "column " << j;
    }
  }
}

// The AVX-512 kernels against the AVX2 ones, which run the same FMAs per
// element in the same order. Every product must come out bit for bit the
// same, so that the choice of kernel never changes a run's numbers.
TEST_P(PackedProduct, Avx512KernelsGiveTheAvx2Bits) {
  if (!avx512_kernel_available()) {
    GTEST_SKIP() << "this build has no AVX-512 kernel (the CPU lacks AVX-512F, or the build is portable)";
  }
  const Shape s = GetParam();
  Rng rng(17);
  for (Trans trans : {Trans::kNo, Trans::kYes}) {
    const Matrix a = random_left_operand(s, trans, rng);
    const Matrix b = random_matrix(s.depth, s.cols, rng);
    const Matrix bt = b.transpose();
    const Matrix c0 = random_matrix(s.rows, s.cols, rng);
    Vector bias(s.rows);
    fill_uniform(bias, rng, 4.0f);
    PackedMatrix packed(s.rows, s.depth);
    packed.pack(a, trans);

    // One matrix contains every product, side by side.
    auto all_products = [&](bool avx512, std::vector<float>& lanes) {
      set_avx512_kernels(avx512);
      Matrix out(s.rows, 3 * s.cols);
      MatRef plain = out.leftCols(s.cols), transposed = out.middleCols(s.cols, s.cols);
      MatRef logits = out.rightCols(s.cols);
      plain = c0;
      packed.multiply(b, 1.0f, plain);
      packed.multiply_transposed(bt, 0.0f, transposed);
      packed.multiply_logits(b, bias.data(), logits, lanes.data());
      set_avx512_kernels(true);
      return out;
    };
    std::vector<float> lanes_avx2(static_cast<std::size_t>(s.cols) * PackedMatrix::kMaxLanes);
    std::vector<float> lanes_avx512(lanes_avx2.size());
    const Matrix avx2 = all_products(false, lanes_avx2);
    const Matrix avx512 = all_products(true, lanes_avx512);
    EXPECT_EQ(std::memcmp(avx2.data(), avx512.data(), sizeof(float) * avx2.size()), 0)
        << (trans == Trans::kNo ? "op(a) = a" : "op(a) = a^T");
    for (int j = 0; j < s.cols; ++j) {
      const float* max_avx2 = lanes_avx2.data() + static_cast<std::size_t>(j) * PackedMatrix::kMaxLanes;
      const float* max_avx512 = lanes_avx512.data() + static_cast<std::size_t>(j) * PackedMatrix::kMaxLanes;
      EXPECT_EQ(*std::max_element(max_avx2, max_avx2 + PackedMatrix::kMaxLanes),
                *std::max_element(max_avx512, max_avx512 + PackedMatrix::kMaxLanes))
          << "column " << j;
    }
  }
}

// Rows 100, 40 and 24 leave a last panel of at most 8 rows, which the
// AVX-512 kernels run as the tail of the panels before it.
INSTANTIATE_TEST_SUITE_P(Shapes, PackedProduct,
                         ::testing::Values(Shape{16, 8, 1}, Shape{400, 100, 10}, Shape{100, 400, 20},
                                           Shape{37, 29, 13}, Shape{5, 3, 7}, Shape{2600, 650, 6},
                                           Shape{650, 2600, 5}, Shape{100, 1300, 9}, Shape{700, 100, 31},
                                           Shape{650, 700, 12}, Shape{40, 33, 12}, Shape{24, 17, 11},
                                           Shape{100, 700, 25}));

TEST(PackedProduct, ColumnSplitKeepsEveryBit) {
  // Threads multiply disjoint column ranges, and each output must be the same
  // float whichever range it falls in.
  Rng rng(11);
  Matrix a(70, 45), b(45, 20);
  fill_uniform(a, rng, 1.0f);
  fill_uniform(b, rng, 1.0f);
  PackedMatrix packed(70, 45);
  packed.pack(a, Trans::kNo);

  Matrix whole(70, 20), split(70, 20);
  packed.multiply(b, 0.0f, whole);
  const int bounds[] = {0, 3, 10, 17, 20};
  for (int r = 0; r + 1 < 5; ++r) {
    const int count = bounds[r + 1] - bounds[r];
    MatRef part = split.middleCols(bounds[r], count);
    packed.multiply(b.middleCols(bounds[r], count), 0.0f, part);
  }
  EXPECT_EQ(0, std::memcmp(whole.data(), split.data(), sizeof(float) * whole.size()));

  // The same for the transposed form, whose threads split the rows of bt.
  const Matrix bt = b.transpose();
  Matrix whole_t(70, 20), split_t(70, 20);
  packed.multiply_transposed(bt, 0.0f, whole_t);
  for (int r = 0; r + 1 < 5; ++r) {
    const int count = bounds[r + 1] - bounds[r];
    MatRef part = split_t.middleCols(bounds[r], count);
    packed.multiply_transposed(bt.middleRows(bounds[r], count), 0.0f, part);
  }
  EXPECT_EQ(0, std::memcmp(whole_t.data(), split_t.data(), sizeof(float) * whole_t.size()));
}

// gemm() on two threads splits a product of over 262144 multiply-adds among
// them by columns of C, or by rows when C is taller than wide. Every pair of
// transposes and both values of beta, on blocks of larger matrices so that
// each operand's stride differs from its height, against double.
TEST(Gemm, ThreadSplitMatchesDoubleReference) {
  set_num_threads(2);
  Rng rng(13);
  // {rows of C, depth, columns of C}: split by columns, split by rows, and
  // a product small enough to run on one thread.
  for (const Shape& s : {Shape{60, 70, 90}, Shape{130, 70, 40}, Shape{7, 9, 5}}) {
    for (Trans ta : {Trans::kNo, Trans::kYes}) {
      for (Trans tb : {Trans::kNo, Trans::kYes}) {
        const Matrix a_full = ta == Trans::kNo ? random_matrix(s.rows + 3, s.depth, rng)
                                               : random_matrix(s.depth + 3, s.rows, rng);
        const Matrix b_full = tb == Trans::kNo ? random_matrix(s.depth + 2, s.cols, rng)
                                               : random_matrix(s.cols + 2, s.depth, rng);
        const ConstMatRef a = a_full.topRows(a_full.rows() - 3);
        const ConstMatRef b = b_full.bottomRows(b_full.rows() - 2);
        Eigen::MatrixXd op_a = a.cast<double>(), op_b = b.cast<double>();
        if (ta == Trans::kYes) op_a.transposeInPlace();
        if (tb == Trans::kYes) op_b.transposeInPlace();
        const Eigen::MatrixXd product = op_a * op_b;
        const double tolerance = 4.0 * s.depth * std::numeric_limits<float>::epsilon();
        const Matrix c0 = random_matrix(s.rows, s.cols, rng);

        Matrix c_full(s.rows + 5, s.cols);
        c_full.setConstant(std::numeric_limits<float>::quiet_NaN());
        MatRef c = c_full.middleRows(1, s.rows);
        gemm(ta, tb, 1.0f, a, b, 0.0f, c);
        EXPECT_LT(max_error(c, product), tolerance) << "beta 0, " << s.rows << "x" << s.depth << "x" << s.cols;
        c = c0;
        gemm(ta, tb, 1.0f, a, b, 1.0f, c);
        EXPECT_LT(max_error(c, product + c0.cast<double>()), tolerance) << "beta 1";
        EXPECT_TRUE(c_full.topRows(1).array().isNaN().all()) << "a row above C was written";
        EXPECT_TRUE(c_full.bottomRows(4).array().isNaN().all()) << "a row below C was written";
      }
    }
  }
  set_num_threads(0);
}

TEST(PackedProduct, OneBufferServesSeveralShapes) {
  // The decoder packs W^T for forward and W for backward into one buffer. A
  // deeper operand after a shallower one must not see the old layout.
  Rng rng(13);
  Matrix w(23, 70), b_forward(23, 6), b_backward(70, 6);
  fill_uniform(w, rng, 1.0f);
  fill_uniform(b_forward, rng, 1.0f);
  fill_uniform(b_backward, rng, 1.0f);
  PackedMatrix packed(std::max(PackedMatrix::floats_for(70, 23), PackedMatrix::floats_for(23, 70)));
  const double tolerance = 4.0 * 70 * std::numeric_limits<float>::epsilon();
  for (int round = 0; round < 2; ++round) {
    Matrix logits(70, 6), dh(23, 6);
    packed.pack(w, Trans::kYes);
    EXPECT_EQ(70, packed.rows());
    EXPECT_EQ(23, packed.cols());
    packed.multiply(b_forward, 0.0f, logits);
    EXPECT_LT(max_error(logits, w.transpose().cast<double>() * b_forward.cast<double>()), tolerance);
    packed.pack(w, Trans::kNo);
    EXPECT_EQ(23, packed.rows());
    EXPECT_EQ(70, packed.cols());
    packed.multiply(b_backward, 0.0f, dh);
    EXPECT_LT(max_error(dh, w.cast<double>() * b_backward.cast<double>()), tolerance);
  }
}

TEST(PackedProduct, WorksOnMatrixBlocks) {
  // The GRU packs row blocks of Wh and multiplies column blocks of the
  // activations, all with outer strides larger than their row counts.
  Rng rng(3);
  Matrix wh(60, 20), h(20 + 5, 9), out(60 + 4, 9);
  fill_uniform(wh, rng, 1.0f);
  fill_uniform(h, rng, 1.0f);
  out.setZero();
  PackedMatrix packed(40, 20);
  packed.pack(wh.topRows(40), Trans::kNo);
  MatRef target = out.topRows(40);
  packed.multiply(h.topRows(20), 1.0f, target);
  const Eigen::MatrixXd want = wh.topRows(40).cast<double>() * h.topRows(20).cast<double>();
  EXPECT_LT(max_error(out.topRows(40), want), 1e-4);
  EXPECT_EQ(0.0f, out.bottomRows(4).cwiseAbs().maxCoeff()) << "rows past the block were written";
}

// Runs forward and backward of one layer over a window and returns the outputs, the
// weight gradients and the gradient reaching the carried-in h, side by side.
Matrix run_layer(CellType cell, bool packed) {
  constexpr int kInput = 12, kHidden = 21, kBatch = 7, kSteps = 5;
  const int gates = gate_rows(cell, kHidden);
  Rng rng(5);
  Matrix wx(gates, kInput), wh(gates, kHidden), b(gates, 1), input(kInput, kSteps * kBatch);
  Matrix d_output(kHidden, kSteps * kBatch);
  fill_uniform(wx, rng, 0.5f);
  fill_uniform(wh, rng, 0.5f);
  fill_uniform(b, rng, 0.5f);
  fill_uniform(input, rng, 1.0f);
  fill_uniform(d_output, rng, 1.0f);

  set_packed_products(packed);
  RecurrentCache cache(cell, kInput, kHidden, kBatch, kSteps);
  set_packed_products(true);
  EXPECT_EQ(packed, cache.packed);
  fill_uniform(cache.initial_h(), rng, 0.5f);
  if (cell == CellType::kLstm) fill_uniform(cache.initial_c(), rng, 0.5f);

  const RecurrentWeights weights{ConstMatrixMap(wx.data(), gates, kInput),
                                 ConstMatrixMap(wh.data(), gates, kHidden),
                                 ConstMatrixMap(b.data(), gates, 1)};
  Matrix grad_wx = Matrix::Zero(gates, kInput), grad_wh = Matrix::Zero(gates, kHidden);
  Matrix grad_b = Matrix::Zero(gates, 1);
  RecurrentGrads grads{MatrixMap(grad_wx.data(), gates, kInput),
                       MatrixMap(grad_wh.data(), gates, kHidden), MatrixMap(grad_b.data(), gates, 1)};
  recurrent_forward(cache, weights, input, kSteps);
  recurrent_backward(cache, weights, grads, input, d_output, nullptr, kSteps);

  Matrix all(gates, kSteps * kBatch + kHidden + kHidden);
  all.setZero();
  all.topLeftCorner(kHidden, kSteps * kBatch) = cache.outputs(kSteps);
  all.middleCols(kSteps * kBatch, kHidden) = grad_wh;
  all.block(0, kSteps * kBatch + kHidden, kHidden, kBatch) = cache.dh_next;
  return all;
}

TEST(PackedRecurrence, MatchesBlasPathForEveryCell) {
  if (!packed_kernel_available()) {
    GTEST_SKIP() << "this build has no AVX2/FMA kernel, so the layers use the BLAS path only";
  }
  for (CellType cell : test::kAllCells) {
    const Matrix packed = run_layer(cell, true);
    const Matrix blas = run_layer(cell, false);
    // The two paths sum in different orders, and the values are of order 1.
    EXPECT_LT((packed - blas).cwiseAbs().maxCoeff(), 1e-4f) << cell_name(cell);
    EXPECT_GT(packed.cwiseAbs().maxCoeff(), 0.1f) << cell_name(cell) << ": nothing was computed";
  }
}

}  // namespace
}  // namespace lstm

#pragma once
// Eigen aliases. Every matrix is column-major. Activations of a window keep
// one column per (time step, stream) pair, time-major: column t*B + b, so the
// B columns of step t are contiguous and a step is a plain block.
//
// Shape legend used throughout: B streams (batch), T time steps (bptt),
// E embedding size, H hidden size, G gate rows (H rnn, 4H lstm, 3H gru),
// V vocabulary size, L layers.

#include <Eigen/Core>
#include <cstdint>

namespace lstm {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>;
using Vector = Eigen::Matrix<float, Eigen::Dynamic, 1>;
using MatrixMap = Eigen::Map<Matrix>;
using VectorMap = Eigen::Map<Vector>;
using ConstMatrixMap = Eigen::Map<const Matrix>;
using MatRef = Eigen::Ref<Matrix, 0, Eigen::OuterStride<>>;
using ConstMatRef = Eigen::Ref<const Matrix, 0, Eigen::OuterStride<>>;
using MatrixBlock = Eigen::Block<Matrix, Eigen::Dynamic, Eigen::Dynamic, true>;
using TokenId = std::int32_t;

}  // namespace lstm

#pragma once

#include <optional>

#include "tensor/types.h"

namespace lstm {

// Softmax cross-entropy over the columns of logits (V x N), with a stable
// log-sum-exp: loss_j = log(sum_v exp(z_vj - m_j)) + m_j - z_{y_j, j}.
// When bias (V floats) is given, it is first added to every column, in the
// same pass, so the caller's product need not add it separately.
// Writes loss_j to column_loss[j] (N floats). When grad_scale is set, also
// overwrites logits with grad_scale * (softmax(z) - onehot(y)), the gradient
// of grad_scale * sum_j loss_j, in the same pass over memory.
// When column_max is given, the logits are final (bias must be null), and
// the largest of the PackedMatrix::kMaxLanes floats at column_max + j * kMaxLanes
// is column j's maximum, as PackedMatrix::multiply_logits() leaves them. The
// pass that would find the maxima is then skipped.
// Each column is computed alone, so results depend neither on the thread
// count nor on how the columns are grouped. kAll splits the columns among
// the threads; kCaller runs them on the calling thread, for callers that have
// split the work themselves.
enum class Threads { kAll, kCaller };
void softmax_cross_entropy(MatRef logits, const float* bias, const TokenId* targets, float* column_loss,
                           std::optional<float> grad_scale, Threads threads = Threads::kAll,
                           const float* column_max = nullptr);

}  // namespace lstm

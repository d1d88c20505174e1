#include "ops/softmax_cross_entropy.h"

#include <cmath>

#include "tensor/parallel.h"

namespace lstm {

void softmax_cross_entropy(MatRef logits, const float* bias, const TokenId* targets, float* column_loss,
                           std::optional<float> grad_scale) {
  const Eigen::Index n = logits.cols();
  const Eigen::Index v = logits.rows();
  parallel_for(n, [&](Eigen::Index j) {
    auto z = logits.col(j).array();
    if (bias != nullptr) z += Eigen::Map<const Eigen::ArrayXf>(bias, v);
    const float max_logit = z.maxCoeff();
    const float target_logit = z(targets[j]);
    if (grad_scale) {
      z = (z - max_logit).exp();
      const float sum = z.sum();
      z *= *grad_scale / sum;
      z(targets[j]) -= *grad_scale;
      column_loss[j] = std::log(sum) + (max_logit - target_logit);
    } else {
      const float sum = (z - max_logit).exp().sum();
      // (max - target) first: exact for large logits, where max + log(sum) would round.
      column_loss[j] = std::log(sum) + (max_logit - target_logit);
    }
  });
}

}  // namespace lstm

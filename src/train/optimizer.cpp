#include "train/optimizer.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "tensor/parallel.h"

namespace lstm {

namespace {
// The norm is summed in kNormChunks fixed chunks, whatever the thread count,
// so that it does not depend on it.
constexpr int kNormChunks = 64;
// Chunks summed side by side on one thread. Each chunk's sum is still one
// chain of additions in index order, but eight independent chains keep the
// adder busy instead of waiting out its latency at every element.
constexpr int kChunksAtOnce = 8;
static_assert(kNormChunks % kChunksAtOnce == 0);
}  // namespace

double global_norm(const Vector& values) {
  std::array<double, kNormChunks> partial{};
  const Eigen::Index n = values.size();
  const Eigen::Index chunk = (n + kNormChunks - 1) / kNormChunks;
  const float* x = values.data();
  parallel_for(kNormChunks / kChunksAtOnce, [&](Eigen::Index group) {
    std::array<Eigen::Index, kChunksAtOnce> begin{}, end{};
    Eigen::Index common = chunk;  // length every chunk of the group has
    for (int q = 0; q < kChunksAtOnce; ++q) {
      const Eigen::Index c = group * kChunksAtOnce + q;
      begin[q] = std::min<Eigen::Index>(n, c * chunk);
      end[q] = std::min<Eigen::Index>(n, begin[q] + chunk);
      common = std::min(common, end[q] - begin[q]);
    }
    std::array<double, kChunksAtOnce> sum{};
    for (Eigen::Index i = 0; i < common; ++i) {
      for (int q = 0; q < kChunksAtOnce; ++q) {
        const double v = x[begin[q] + i];
        sum[q] += v * v;
      }
    }
    for (int q = 0; q < kChunksAtOnce; ++q) {
      for (Eigen::Index i = begin[q] + common; i < end[q]; ++i) {
        const double v = x[i];
        sum[q] += v * v;
      }
      partial[group * kChunksAtOnce + q] = sum[q];
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return std::sqrt(total);
}

float clip_factor(double norm, double clip_norm) {
  if (clip_norm <= 0.0 || !(norm > clip_norm)) return 1.0f;
  return static_cast<float>(clip_norm / norm);
}

bool clip_gradients(Vector& grads, double norm, double clip_norm) {
  const float factor = clip_factor(norm, clip_norm);
  if (factor == 1.0f) return false;
  grads *= factor;
  return true;
}

Optimizer::Optimizer(const TrainSettings& s, Eigen::Index size)
    : kind_(s.optimizer),
      beta1_(s.adam_beta1),
      beta2_(s.adam_beta2),
      eps_(s.adam_eps),
      weight_decay_(s.weight_decay) {
  if (kind_ == OptimizerKind::kAdam) {
    m_ = Vector::Zero(size);
    v_ = Vector::Zero(size);
  }
}

void Optimizer::step(Vector& params, const Vector& grads, double lr, float grad_scale) {
  const Eigen::Index n = params.size();
  float* p = params.data();
  const float* g = grads.data();
  const float wd = static_cast<float>(weight_decay_);
  if (kind_ == OptimizerKind::kSgd) {
    const float rate = static_cast<float>(lr);
    parallel_for(n, [&](Eigen::Index i) { p[i] -= rate * (grad_scale * g[i] + wd * p[i]); });
    return;
  }
  ++t_;
  const float b1 = static_cast<float>(beta1_), b2 = static_cast<float>(beta2_);
  const float eps = static_cast<float>(eps_);
  // Bias corrections folded into the step size, as in Kingma and Ba (2015), Algorithm 1.
  const double correction1 = 1.0 - std::pow(beta1_, static_cast<double>(t_));
  const double correction2 = 1.0 - std::pow(beta2_, static_cast<double>(t_));
  const float rate = static_cast<float>(lr / correction1);
  const float root_c2 = static_cast<float>(std::sqrt(correction2));
  float* m = m_.data();
  float* v = v_.data();
  parallel_for(n, [&](Eigen::Index i) {
    const float grad = grad_scale * g[i] + wd * p[i];
    m[i] = b1 * m[i] + (1.0f - b1) * grad;
    v[i] = b2 * v[i] + (1.0f - b2) * grad * grad;
    p[i] -= rate * m[i] / (std::sqrt(v[i]) / root_c2 + eps);
  });
}

}  // namespace lstm

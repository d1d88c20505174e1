#pragma once
// Gradient clipping and parameter updates over the flat parameter vector.

#include <cstdint>

#include "config/settings.h"
#include "tensor/types.h"

namespace lstm {

// Global L2 norm of a flat vector, summed in double over fixed chunks, so the
// result does not depend on the thread count.
double global_norm(const Vector& values);

// Scales grads by clip_norm / norm when norm > clip_norm > 0. Returns true
// when it scaled.
bool clip_gradients(Vector& grads, double norm, double clip_norm);

// The factor clip_gradients() would scale by: clip_norm / norm when
// norm > clip_norm > 0, else 1.
float clip_factor(double norm, double clip_norm);

class Optimizer {
 public:
  Optimizer(const TrainSettings& settings, Eigen::Index size);

  // One update with learning rate lr from grads * grad_scale (the clipping
  // factor, applied in the same pass). Weight decay adds weight_decay * p to
  // the scaled gradient, for SGD and Adam alike.
  void step(Vector& params, const Vector& grads, double lr, float grad_scale = 1.0f);

  OptimizerKind kind() const { return kind_; }
  // Adam's moment estimates and update count; empty for SGD.
  Vector& first_moment() { return m_; }
  Vector& second_moment() { return v_; }
  std::int64_t& update_count() { return t_; }

 private:
  OptimizerKind kind_;
  double beta1_, beta2_, eps_, weight_decay_;
  Vector m_, v_;
  std::int64_t t_ = 0;
};

}  // namespace lstm

#pragma once

#include "tensor/gemm.h"
#include "tensor/types.h"

namespace lstm {

// Runs body(i) for i in [0, n), split statically across num_threads()
// threads, so that each i always lands on the same thread for a given count.
// With one thread it is a plain loop: libgomp allocates a team for every
// parallel region, even a one-thread one, and the step loop allocates nothing.
template <typename Body>
void parallel_for(Eigen::Index n, const Body& body) {
  if (num_threads() <= 1) {
    for (Eigen::Index i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (Eigen::Index i = 0; i < n; ++i) body(i);
}

}  // namespace lstm

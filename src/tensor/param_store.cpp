#include "tensor/param_store.h"

#include <stdexcept>

#include "tensor/memory.h"
#include "tensor/parallel.h"

namespace lstm {

void ParamStore::add_matrix(const std::string& name, Eigen::Index rows, Eigen::Index cols) {
  entries_.push_back({name, {cols, rows}, total_, rows * cols});
  total_ += rows * cols;
}

void ParamStore::add_vector(const std::string& name, Eigen::Index size) {
  entries_.push_back({name, {size}, total_, size});
  total_ += size;
}

void ParamStore::finalize() {
  values_ = zero_vector(total_);
  grads_ = zero_vector(total_);
}

const TensorEntry& ParamStore::entry(const std::string& name) const {
  for (const auto& e : entries_) {
    if (e.name == name) return e;
  }
  throw std::out_of_range("no parameter named '" + name + "'");
}

bool ParamStore::contains(const std::string& name) const {
  for (const auto& e : entries_) {
    if (e.name == name) return true;
  }
  return false;
}

MatrixMap ParamStore::value(const std::string& name) { return map(values_, entry(name)); }
MatrixMap ParamStore::grad(const std::string& name) { return map(grads_, entry(name)); }

MatrixMap ParamStore::map(Vector& flat, const TensorEntry& e) {
  const Eigen::Index rows = e.shape.size() == 2 ? e.shape[1] : e.shape[0];
  const Eigen::Index cols = e.shape.size() == 2 ? e.shape[0] : 1;
  return MatrixMap(flat.data() + e.offset, rows, cols);
}

void ParamStore::zero_grads() {
  const Eigen::Index n = grads_.size();
  const int parts = num_threads();
  parallel_for(parts, [&](Eigen::Index part) {
    const Eigen::Index begin = n * part / parts;
    grads_.segment(begin, n * (part + 1) / parts - begin).setZero();
  });
}

}  // namespace lstm

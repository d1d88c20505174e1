#pragma once
// One allocation for all parameters, one for their gradients, both with the
// same layout, described by a single table of named tensors. Clipping, the
// optimizer update and checkpoint I/O are loops over the flat vectors; the
// table gives the checkpoint's tensor names and shapes.

#include <string>
#include <vector>

#include "tensor/types.h"

namespace lstm {

struct TensorEntry {
  std::string name;
  // Shape as stored in a checkpoint, row-major: {rows, cols} or {size}.
  // In memory the same bytes are a column-major matrix of rows = shape[1],
  // cols = shape[0] (or a vector).
  std::vector<Eigen::Index> shape;
  Eigen::Index offset = 0;  // first float in the flat vectors
  Eigen::Index size = 0;    // number of floats
};

class ParamStore {
 public:
  // Adds a column-major (rows x cols) matrix; its checkpoint shape is [cols, rows].
  void add_matrix(const std::string& name, Eigen::Index rows, Eigen::Index cols);
  void add_vector(const std::string& name, Eigen::Index size);
  // Allocates values and gradients, zero-filled. Call once, after every add.
  void finalize();

  const std::vector<TensorEntry>& entries() const { return entries_; }
  const TensorEntry& entry(const std::string& name) const;
  bool contains(const std::string& name) const;
  Eigen::Index total_size() const { return total_; }

  MatrixMap value(const std::string& name);
  MatrixMap grad(const std::string& name);
  MatrixMap value(const TensorEntry& e) { return map(values_, e); }
  MatrixMap grad(const TensorEntry& e) { return map(grads_, e); }

  Vector& values() { return values_; }
  const Vector& values() const { return values_; }
  Vector& grads() { return grads_; }
  // Sets every gradient to zero, the threads taking a range each.
  void zero_grads();
  const Vector& grads() const { return grads_; }

 private:
  static MatrixMap map(Vector& flat, const TensorEntry& e);

  std::vector<TensorEntry> entries_;
  Eigen::Index total_ = 0;
  Vector values_;
  Vector grads_;
};

}  // namespace lstm

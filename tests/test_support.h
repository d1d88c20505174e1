#pragma once
// Small helpers shared by the test executables: model configs, random fills
// and names for tests parametrized by cell type.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/model_config.h"
#include "tensor/random.h"
#include "tensor/types.h"

namespace lstm::test {

inline constexpr CellType kAllCells[] = {CellType::kRnn, CellType::kRnnRelu, CellType::kLstm,
                                         CellType::kGru};

// A config with book init, no dropout and untied weights.
inline ModelConfig make_config(CellType cell, int vocab, int embedding, int hidden, int layers) {
  ModelConfig config;
  config.cell = cell;
  config.vocab_size = vocab;
  config.embedding_size = embedding;
  config.hidden_size = hidden;
  config.num_layers = layers;
  return config;
}

// Fills an Eigen matrix, map or block (an lvalue or a temporary block) with
// U(-range, range), column by column.
template <typename MatrixLike>
void fill_uniform(MatrixLike&& m, Rng& rng, float range) {
  for (Eigen::Index j = 0; j < m.cols(); ++j) {
    for (Eigen::Index i = 0; i < m.rows(); ++i) m(i, j) = (2.0f * rng.uniform() - 1.0f) * range;
  }
}

inline std::vector<TokenId> random_ids(std::size_t count, int vocab, Rng& rng) {
  std::vector<TokenId> ids(count);
  for (auto& id : ids) id = static_cast<TokenId>(rng.below(static_cast<std::uint64_t>(vocab)));
  return ids;
}

// Test-name suffix for INSTANTIATE_TEST_SUITE_P over CellType.
inline std::string cell_test_name(const testing::TestParamInfo<CellType>& info) {
  return cell_name(info.param);
}

}  // namespace lstm::test

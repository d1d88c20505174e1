#pragma once
// Model hyper-parameters, as resolved from the config's "model" section.

#include <string>

namespace lstm {

// rnn: h = tanh(.), rnn_relu: h = max(0, .), lstm and gru as in layers/recurrent.h.
enum class CellType { kRnn, kRnnRelu, kLstm, kGru };

// "book": weights ~ N(0,1)/sqrt(fan_in), embedding ~ N(0,1)*0.01, biases 0.
// "uniform": weights and embedding ~ U(-init_range, init_range), biases 0.
enum class InitScheme { kBook, kUniform };

struct ModelConfig {
  CellType cell = CellType::kLstm;
  int vocab_size = 0;         // V, e.g. 10000 for PTB
  int embedding_size = 100;   // E
  int hidden_size = 100;      // H
  int num_layers = 1;         // L
  float dropout = 0.0f;       // drop probability on non-recurrent connections, e.g. 0.5
  bool variational_dropout = false;  // one mask per sequence, reused at every step
  bool tie_weights = false;   // decoder shares the embedding matrix (needs E == H)
  InitScheme init = InitScheme::kBook;
  float init_range = 0.1f;    // half-width of the uniform init, e.g. 0.05
};

// Rows of the stacked gate pre-activation: H for rnn, 4H for lstm, 3H for gru.
int gate_rows(CellType cell, int hidden_size);
bool has_cell_state(CellType cell);
const char* cell_name(CellType cell);
CellType parse_cell(const std::string& name);  // throws ConfigError on an unknown name

}  // namespace lstm

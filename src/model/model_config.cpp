#include "model/model_config.h"

#include "util/error.h"

namespace lstm {

int gate_rows(CellType cell, int hidden_size) {
  switch (cell) {
    case CellType::kLstm:
      return 4 * hidden_size;
    case CellType::kGru:
      return 3 * hidden_size;
    case CellType::kRnn:
    case CellType::kRnnRelu:
      break;
  }
  return hidden_size;
}

bool has_cell_state(CellType cell) { return cell == CellType::kLstm; }

const char* cell_name(CellType cell) {
  switch (cell) {
    case CellType::kRnn:
      return "rnn";
    case CellType::kRnnRelu:
      return "rnn_relu";
    case CellType::kLstm:
      return "lstm";
    case CellType::kGru:
      return "gru";
  }
  return "?";
}

CellType parse_cell(const std::string& name) {
  if (name == "rnn") return CellType::kRnn;
  if (name == "rnn_relu") return CellType::kRnnRelu;
  if (name == "lstm") return CellType::kLstm;
  if (name == "gru") return CellType::kGru;
  throw ConfigError("invalid model.cell \"" + name +
                    "\": expected one of \"rnn\", \"rnn_relu\", \"lstm\", \"gru\"");
}

}  // namespace lstm

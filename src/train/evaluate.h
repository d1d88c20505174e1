#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"

namespace lstm {

struct EvalResult {
  double loss_sum = 0.0;    // nats over all scored predictions
  std::int64_t tokens = 0;  // predictions scored
  double loss() const { return tokens > 0 ? loss_sum / static_cast<double>(tokens) : 0.0; }
  double perplexity() const;
};

// Scores a split as ws.batch streams, state carried from zero through the
// whole split, windows of ws.max_steps steps. Per-token losses of the last
// window stay in ws.column_loss. If token_losses is given, every prediction's
// loss is stored there in stream order (stream 0 first).
EvalResult evaluate(LanguageModel& model, Workspace& ws, const std::vector<TokenId>& ids,
                    std::vector<float>* token_losses = nullptr);

}  // namespace lstm

#include "train/evaluate.h"

#include <cmath>
#include <string>

#include "data/batcher.h"
#include "util/error.h"

namespace lstm {

double EvalResult::perplexity() const { return std::exp(loss()); }

EvalResult evaluate(LanguageModel& model, Workspace& ws, const std::vector<TokenId>& ids,
                    std::vector<float>* token_losses) {
  const StreamBatcher batcher(&ids, ws.batch);
  if (batcher.positions() < 1) {
    throw DataError("a split of " + std::to_string(ids.size()) + " tokens is too short for " +
                    std::to_string(ws.batch) + " evaluation streams: lower eval.batch_size");
  }
  if (token_losses != nullptr) token_losses->assign(static_cast<std::size_t>(batcher.tokens()), 0.0f);
  reset_state(ws);
  EvalResult result;
  for (std::int64_t position = 0; position < batcher.positions(); position += ws.max_steps) {
    const int steps = batcher.fill(position, ws.max_steps, ws.inputs.data(), ws.targets.data());
    result.loss_sum += model_forward(model, ws, steps, /*training=*/false, nullptr);
    result.tokens += static_cast<std::int64_t>(steps) * ws.batch;
    if (token_losses != nullptr) {
      for (int t = 0; t < steps; ++t) {
        for (int b = 0; b < ws.batch; ++b) {
          (*token_losses)[b * batcher.positions() + position + t] = ws.column_loss[t * ws.batch + b];
        }
      }
    }
    carry_state(ws, steps);
  }
  return result;
}

}  // namespace lstm

#include "data/batcher.h"

#include <algorithm>

namespace lstm {

StreamBatcher::StreamBatcher(const std::vector<TokenId>* ids, int batch)
    : ids_(ids), batch_(batch), stream_length_(static_cast<std::int64_t>(ids->size()) / batch) {}

int StreamBatcher::fill(std::int64_t position, int bptt, TokenId* inputs, TokenId* targets) const {
  const int steps = static_cast<int>(std::min<std::int64_t>(bptt, positions() - position));
  const TokenId* data = ids_->data();
  for (int t = 0; t < steps; ++t) {
    for (int b = 0; b < batch_; ++b) {
      const std::int64_t at = b * stream_length_ + position + t;
      inputs[t * batch_ + b] = data[at];
      targets[t * batch_ + b] = data[at + 1];
    }
  }
  return steps;
}

}  // namespace lstm

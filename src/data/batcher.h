#pragma once
// Cuts a token stream into B contiguous streams and BPTT windows:
//
//   ids:      a b c d e f g h i j k l m n o p q r s t u v w x   (N = 24, B = 3)
//   streams:  stream 0 = a..h, stream 1 = i..p, stream 2 = q..x (length S = N/B = 8)
//   windows:  with bptt 3, inputs at stream positions [0,3), [3,6), [6,7);
//             targets are the next token; the last window is shorter.
//
// Stream b starts at offset b*floor(N/B); tokens past B*S are dropped. The
// hidden state is carried from one window to the next, but no gradient
// crosses a window boundary (truncated BPTT).

#include <cstdint>
#include <vector>

#include "tensor/types.h"

namespace lstm {

class StreamBatcher {
 public:
  StreamBatcher(const std::vector<TokenId>* ids, int batch);

  int batch() const { return batch_; }
  std::int64_t stream_length() const { return stream_length_; }
  // Predictions per stream: stream_length - 1.
  std::int64_t positions() const { return stream_length_ - 1; }
  std::int64_t num_windows(int bptt) const { return (positions() + bptt - 1) / bptt; }
  // Predictions per pass: positions() * batch.
  std::int64_t tokens() const { return positions() * batch_; }

  // Fills inputs and targets (column t*B + b) of the window that starts at
  // `position`; returns its number of steps, at most bptt.
  int fill(std::int64_t position, int bptt, TokenId* inputs, TokenId* targets) const;

 private:
  const std::vector<TokenId>* ids_;
  int batch_;
  std::int64_t stream_length_;
};

}  // namespace lstm

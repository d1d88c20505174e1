#pragma once
// The language model: embedding -> L recurrent layers -> affine decoder ->
// softmax cross-entropy, with inverted dropout on the non-recurrent
// connections (embedding output, between layers, before the decoder).
//
// Parameters (checkpoint name: checkpoint shape, row-major):
//   embedding.weight   [V, E]   column v is the vector of word v in memory (E x V)
//   rnn.{l}.weight_x   [I, G]   the book's Wx: pre = x Wx + h Wh + b
//   rnn.{l}.weight_h   [H, G]
//   rnn.{l}.bias       [G]
//   decoder.weight     [V, H]   absent when tied: the embedding is used instead
//   decoder.bias       [V]

#include <string>
#include <vector>

#include "layers/recurrent.h"
#include "model/model_config.h"
#include "tensor/param_store.h"
#include "tensor/random.h"

namespace lstm {

class LanguageModel {
 public:
  // Lays out the parameters, all zero; call initialize() or load values.
  explicit LanguageModel(const ModelConfig& config);

  // Floats in all parameters of a model of this config, without building it.
  static std::uint64_t parameter_count(const ModelConfig& config);

  const ModelConfig& config() const { return config_; }
  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }

  // Draws every parameter from rng by the config's scheme.
  void initialize(Rng& rng);

  RecurrentWeights layer_weights(int layer);
  RecurrentGrads layer_grads(int layer);
  MatrixMap embedding() { return params_.value(entry(embedding_)); }                 // E x V
  MatrixMap decoder_weight() { return params_.value(entry(decoder_weight_)); }       // H x V
  MatrixMap decoder_bias() { return params_.value(entry(decoder_bias_)); }           // V x 1
  MatrixMap embedding_grad() { return params_.grad(entry(embedding_)); }             // E x V
  MatrixMap decoder_weight_grad() { return params_.grad(entry(decoder_weight_)); }   // H x V
  MatrixMap decoder_bias_grad() { return params_.grad(entry(decoder_bias_)); }       // V x 1

 private:
  // Positions in params_.entries(), looked up once: the step loop must not
  // build name strings, which would allocate.
  struct LayerEntries {
    std::size_t wx, wh, b;
  };
  const TensorEntry& entry(std::size_t index) const { return params_.entries()[index]; }

  ModelConfig config_;
  ParamStore params_;
  std::size_t embedding_ = 0;
  std::size_t decoder_weight_ = 0;  // the embedding's position when tied
  std::size_t decoder_bias_ = 0;
  std::vector<LayerEntries> layers_;
};

// The use of a workspace. An evaluation workspace runs only the forward pass
// without dropout, so it leaves out every buffer of the backward pass (27 MiB
// of the 2x650 model's workspace for 10 streams of 35 steps).
enum class WorkspaceUse { kTraining, kEvaluation };

// Activations, gradients of activations and the carried recurrent state for
// windows of up to max_steps steps of `batch` streams. Allocated once; the
// forward and backward passes allocate nothing.
struct Workspace {
  Workspace(const ModelConfig& config, int batch, int max_steps, WorkspaceUse use = WorkspaceUse::kTraining);

  int batch;      // B
  int max_steps;  // T max
  WorkspaceUse use;
  std::vector<TokenId> inputs;   // T*B ids, column order t*B + b
  std::vector<TokenId> targets;  // T*B ids
  Matrix embedded;               // E x T*B: embedding lookup, dropout applied
  std::vector<RecurrentCache> layers;
  std::vector<Matrix> dropped;   // L: output of layer l with dropout applied (H x T*B)
  std::vector<Matrix> masks;     // L+1: mask on embedding output (E x T*B), after layer l (H x T*B)
  Matrix logits;                 // V x T*B, overwritten by dL/dlogits in training
  Matrix d_hidden_a, d_hidden_b; // H x T*B each: dL/d(layer output), ping-pong
  Matrix d_embedded;             // E x T*B
  Vector column_loss;            // T*B: loss of each scored token (nats)
  Matrix column_max;             // kMaxLanes x T*B: partial maxima of the logits (packed decoder only)
  bool dropout_active = false;   // the last forward pass applied dropout
  // Whether each layer's packed Wh and the decoder's packed W^T (below)
  // contain the current weights. A training workspace packs them at every
  // window. An evaluation workspace packs each at the first window after
  // reset_state() that uses it, and reuses it until the next reset_state(),
  // because a pass over a split does not change the weights. On the
  // book-sized model the copy of W^T took 7% of lstm-eval's time (perf, 2 threads).
  bool recurrent_packed = false;
  bool decoder_packed = false;
  // The decoder's operands laid out for PackedMatrix, packed at each pass of
  // at least kPackedDecoderColumns columns. packed_w contains W^T (V x H) for
  // the logits in forward, then W (H x V) for dL/dh in backward. packed_top
  // contains the top layer's output (H x T*B) for dL/dW (training workspaces only).
  // Empty when packed_products() was off at construction or the workspace is
  // narrower.
  PackedMatrix packed_w, packed_top;
};

// Narrower windows (generation feeds one token at a time) leave the decoder to
// the BLAS, because copying W costs about as much as 25 to 35 columns of the
// product (measured at H = 100 and 650, V = 10000).
inline constexpr int kPackedDecoderColumns = 32;

// The loss whose gradient training follows. kMean is the mean over the T*B
// predictions of a window (PyTorch's example, the book). kSumOverTime sums over
// the T steps and averages over the B streams, as Zaremba et al.'s TensorFlow
// code does. Its gradient is T times larger, and their lr of 1 assumes it.
enum class LossReduction { kMean, kSumOverTime };

// Runs the model over a window of `steps` steps whose ids are already in
// ws.inputs and ws.targets, from the carried state in ws. Returns the summed
// loss (nats) of the steps*B predictions. In training mode it applies dropout
// (drawing masks from dropout_rng) and leaves dL/dlogits of the window's
// training loss (by `reduction`) in ws.logits for backward(). Training mode
// needs a kTraining workspace. On an evaluation workspace the weights must
// not have changed since the last reset_state() (see Workspace::decoder_packed).
double model_forward(LanguageModel& model, Workspace& ws, int steps, bool training,
                     Rng* dropout_rng, LossReduction reduction = LossReduction::kMean);

// Adds the gradients of the window's training loss into model.params().grads().
void model_backward(LanguageModel& model, Workspace& ws, int steps);

// Bytes held by a workspace's buffers: the activations of a window and the
// per-layer copies of Wh laid out for the recurrent products.
std::size_t workspace_bytes(const Workspace& ws);

// Moves h_T (and c_T) of the last window into the carried state.
void carry_state(Workspace& ws, int steps);
// Zeroes the carried state. Call it before each pass over a split, and after
// the weights change between two forward passes on an evaluation workspace.
void reset_state(Workspace& ws);

}  // namespace lstm

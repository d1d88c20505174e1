#pragma once
// Checkpoints: safetensors files holding the parameters, the resolved config
// and the vocabulary, so that lstm-eval and lstm-generate need nothing else.
// A training checkpoint adds what an exact resume needs: the optimizer's
// moments, the carried recurrent state and the loop's counters and random
// generator. docs/checkpoint-format.md lists every tensor and metadata key.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "config/settings.h"
#include "data/vocabulary.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "tensor/random.h"

namespace lstm {

inline constexpr const char* kCheckpointFormat = "lstm-lm";
inline constexpr int kCheckpointVersion = 1;

// The training loop's position, counters and generator: enough to continue bit for bit.
struct TrainingState {
  int epoch = 0;                 // 0-based epoch in progress
  std::int64_t position = 0;     // stream position of the next window in that epoch
  std::int64_t step = 0;         // updates done so far
  double lr = 0.0;               // lr in force
  double lr_scale = 1.0;         // product of the halvings after non-finite rollbacks
  std::optional<double> best_valid;       // lowest validation perplexity so far
  std::optional<double> best_valid_loss;  // its loss (nats per token), which decides
  int rollbacks = 0;             // rollbacks since the last good epoch end
  Rng::State dropout_rng{};
  double elapsed_s = 0.0;        // training wall time before this process
  std::int64_t tokens_trained = 0;
  std::int64_t clipped_steps = 0;  // in the epoch in progress
  std::int64_t epoch_steps = 0;    // in the epoch in progress
};

class Optimizer;

struct CheckpointInputs {
  LanguageModel* model;
  const nlohmann::json* config;  // resolved config
  const Vocabulary* vocab;
  // For training checkpoints; null for a parameters-only file.
  const TrainingState* state = nullptr;
  Optimizer* optimizer = nullptr;
  Workspace* train_workspace = nullptr;  // carried h (and c) of the train streams
};

void save_checkpoint(const std::filesystem::path& path, const CheckpointInputs& inputs);

struct LoadedCheckpoint {
  std::filesystem::path path;
  Settings settings;
  Vocabulary vocab;
  std::unique_ptr<LanguageModel> model;
  std::optional<TrainingState> state;
  SafetensorsFile file;  // the rest (optimizer moments, carried state)
};

// Reads and validates a checkpoint, and checks every parameter's shape
// against its config. Throws CheckpointError naming the file and the problem.
LoadedCheckpoint load_checkpoint(const std::filesystem::path& path);

// Restores the optimizer moments and carried state of a training checkpoint.
void restore_training_buffers(const LoadedCheckpoint& ckpt, Optimizer& optimizer, Workspace& train_ws);

// A checkpoint file as given, or <dir>/checkpoints/<name>.safetensors when
// `path` is a run directory.
std::filesystem::path resolve_checkpoint_path(const std::filesystem::path& path, const std::string& name);

}  // namespace lstm

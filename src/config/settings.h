#pragma once
// The run configuration: one JSON file, every key listed in config/schema.cpp
// with its type, default and allowed range, overridable with --set.

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/model_config.h"

namespace lstm {

struct DataSettings {
  std::string dir;         // folder with train/valid/test files, e.g. "data/ptb"
  std::string train_file;  // explicit paths; empty means "look in dir"
  std::string valid_file;
  std::string test_file;
  int max_vocab_size = 0;  // 0 = no limit
  int min_count = 1;       // words seen fewer times are left out of the vocabulary
  std::string unk_token;   // empty = unseen words are an error
};

enum class OptimizerKind { kSgd, kAdam };
enum class LrSchedule { kPlateau, kEpoch };

struct TrainSettings {
  int batch_size = 20;            // B streams
  int bptt = 35;                  // T steps per window
  int epochs = 4;
  std::int64_t max_steps = 0;     // 0 = no limit
  double lr = 20.0;
  double lr_decay = 1.0;          // divisor; 1 = constant lr
  LrSchedule lr_schedule = LrSchedule::kPlateau;
  int lr_decay_start = 1;         // first epoch (1-based) divided, "epoch" schedule
  double clip_norm = 0.25;        // 0 = off
  LossReduction loss_reduction = LossReduction::kMean;
  std::uint64_t seed = 1;
  int log_interval = 100;         // steps
  OptimizerKind optimizer = OptimizerKind::kSgd;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  double weight_decay = 0.0;      // L2 coefficient
  int threads = 0;                // 0 = all cores
  std::int64_t checkpoint_interval = 0;  // steps; 0 = only at epoch ends
  int max_bad_steps = 5;          // consecutive non-finite steps before a rollback
  std::int64_t log_gradflow_interval = 0;  // steps; 0 = off
};

struct EvalSettings {
  int batch_size = 10;  // streams
  int bptt = 35;        // window length; does not change the result
};

struct Settings {
  DataSettings data;
  ModelConfig model;  // vocab_size is filled in once the vocabulary is built
  TrainSettings train;
  EvalSettings eval;
  std::string run_dir;
  nlohmann::json resolved;  // every key with its final value, nested
};

// Reads a config file, applies "key.path=value" overrides and validates
// every key. Throws ConfigError naming the key and value on any problem.
Settings load_settings(const std::filesystem::path& path, const std::vector<std::string>& overrides);

// Validates an already parsed config document (used for checkpoints and by
// load_settings). `source` names the origin in error messages.
Settings settings_from_json(const nlohmann::json& document, const std::vector<std::string>& overrides,
                            const std::string& source);

// Documentation of every key, for --help and the README: "key (type, default): text".
std::string describe_config_keys();

}  // namespace lstm

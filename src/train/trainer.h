#pragma once

#include <filesystem>
#include <optional>

#include "config/settings.h"
#include "tensor/random.h"
#include "train/run_log.h"

namespace lstm {

struct TrainOptions {
  Settings settings;
  std::optional<std::filesystem::path> resume;  // checkpoint file or run directory
  ConsoleOptions console;
};

// Exit codes of an interrupted run: 128 + the signal number, as shells report it.
inline constexpr int kExitInterrupted = 130;  // SIGINT
inline constexpr int kExitTerminated = 143;   // SIGTERM

// Trains, validates after every epoch, checkpoints and tests the best
// checkpoint. Returns the process exit code: 0, or 130/143 after SIGINT/SIGTERM
// (a checkpoint was written first). Throws on errors.
int run_training(const TrainOptions& options);

// The generator that initializes a fresh model of train.seed, shared by
// lstm-train and the tools that start from a config.
Rng initialization_rng(std::uint64_t seed);

// Requests a stop after the current step. Safe to call from a signal handler.
void request_stop(int signal_number);

}  // namespace lstm

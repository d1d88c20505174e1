#pragma once
// The output of a training run: spdlog lines on the console and in
// <run_dir>/train.log, and one JSON object per line in <run_dir>/metrics.jsonl.
// On a terminal, a progress bar replaces the per-interval console lines.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <string>

namespace lstm {

struct ConsoleOptions {
  spdlog::level::level_enum level = spdlog::level::info;
  bool quiet = false;         // only warnings and errors on the console
  bool progress_bar = false;  // draw a bar (stdout is a terminal)
};

// Creates the console logger used by every command, writing to stdout.
void setup_console_logging(const ConsoleOptions& options);

class RunLog {
 public:
  // Adds <run_dir>/train.log to the logger and opens metrics.jsonl for
  // appending. When resuming, records after `keep_until_step` are dropped
  // first, so the file reads as if the run had never stopped.
  RunLog(const std::filesystem::path& run_dir, const ConsoleOptions& options,
         std::optional<std::int64_t> keep_until_step);
  ~RunLog();

  void metrics(const nlohmann::json& record);
  // An interval line: on the bar when there is one, else logged.
  void progress(const std::string& line, int epoch, int epochs, std::int64_t window, std::int64_t windows,
                double tokens_per_s, double eta_s, double perplexity, double lr);
  // Removes the bar before other console output.
  void clear_bar();

 private:
  std::ofstream metrics_;
  ConsoleOptions options_;
  bool bar_visible_ = false;
};

}  // namespace lstm

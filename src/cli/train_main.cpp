// lstm-train: trains a language model from a JSON config.

#include <unistd.h>

#include <csignal>
#include <cstdlib>

#include "cli/common.h"
#include "config/settings.h"
#include "io/checkpoint.h"
#include "train/trainer.h"
#include "util/error.h"

namespace {

extern "C" void on_stop_signal(int signal_number) {
  static volatile std::sig_atomic_t received = 0;
  if (received != 0) _exit(128 + signal_number);  // a second signal stops at once
  received = 1;
  lstm::request_stop(signal_number);
}

}  // namespace

int main(int argc, char** argv) {
  lstm::prefer_passive_openmp_wait(argv);
  CLI::App app{"Train a word-level RNN/LSTM/GRU language model from a JSON config."};
  app.footer("Config keys (override any with --set KEY=VALUE):\n" + lstm::describe_config_keys());
  app.get_formatter()->column_width(34);
  lstm::add_version_flag(app);
  std::string config_path, run_dir, resume, log_level = "info", progress = "auto";
  std::vector<std::string> overrides;
  bool quiet = false;
  app.add_option("--config", config_path, "JSON config file (see configs/)");
  app.add_option("--set", overrides,
                 "override a config key, KEY=VALUE; VALUE is read as JSON, else as a string (repeatable)")
      ->type_name("KEY=VALUE");
  app.add_option("--run-dir", run_dir, "output folder; overrides run_dir of the config");
  app.add_option("--resume", resume,
                 "continue a run from a checkpoint file or a run directory (its checkpoints/last.safetensors)");
  app.add_option("--log-level", log_level, "console log level: trace, debug, info, warn, error (default: info)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  app.add_flag("--quiet", quiet, "print only warnings and errors on the console");
  app.add_option("--progress", progress,
                 "progress bar: auto (when stdout is a terminal), on or off (default: auto)")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  if (const int code = lstm::parse_command_line(app, argc, argv); code >= 0) return code;

  return lstm::run_reporting_errors([&]() -> int {
    lstm::TrainOptions options;
    if (!resume.empty()) {
      if (!config_path.empty()) {
        throw lstm::ConfigError("--resume continues with the config stored in the checkpoint: drop --config "
                                "and change keys such as train.epochs with --set");
      }
      const auto path = lstm::resolve_checkpoint_path(resume, "last");
      const lstm::LoadedCheckpoint ckpt = lstm::load_checkpoint(path);
      options.settings = lstm::settings_from_json(ckpt.settings.resolved, overrides, path.string());
      options.resume = resume;
    } else {
      if (config_path.empty()) throw lstm::ConfigError("missing --config FILE (or --resume RUN_DIR): see --help");
      options.settings = lstm::load_settings(config_path, overrides);
    }
    if (!run_dir.empty()) {
      if (!resume.empty()) throw lstm::ConfigError("--run-dir cannot move a resumed run: it continues in its own folder");
      options.settings.run_dir = run_dir;
      options.settings.resolved["run_dir"] = run_dir;
    }
    options.console.level = spdlog::level::from_str(log_level);
    options.console.quiet = quiet;
    options.console.progress_bar = progress == "on" || (progress == "auto" && ::isatty(STDOUT_FILENO));
    lstm::setup_console_logging(options.console);
    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
    return lstm::run_training(options);
  });
}

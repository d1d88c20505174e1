// lstm-gradflow: how the gradient of a last-step loss decays (or grows) with
// the distance back in time, for a checkpoint or a freshly initialized model.

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "analysis/gradflow.h"
#include "cli/common.h"
#include "config/settings.h"
#include "data/corpus.h"
#include "io/checkpoint.h"
#include "tensor/gemm.h"
#include "tensor/random.h"
#include "train/trainer.h"
#include "util/error.h"

namespace {

namespace fs = std::filesystem;

constexpr const char* kPlotScript = "plot_gradflow.py";
constexpr const char* kPythonHint =
    "plotting needs python3 with matplotlib: sudo apt-get install python3-matplotlib, and set "
    "LSTM_PYTHON=/usr/bin/python3 if another python3 comes first on PATH";

// The plot script in the source tree this binary was built from, else in
// <prefix>/share/lstm-lm/scripts next to an installed <prefix>/bin.
std::vector<fs::path> plot_script_candidates(const char* argv0) {
  std::vector<fs::path> candidates;
#ifdef LSTM_SOURCE_DIR
  candidates.push_back(fs::path(LSTM_SOURCE_DIR) / "scripts" / kPlotScript);
#endif
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) exe = fs::absolute(argv0, ec);
  if (!ec) candidates.push_back(exe.parent_path().parent_path() / "share" / "lstm-lm" / "scripts" / kPlotScript);
  return candidates;
}

// Reads the tokens of a split of the config (train, valid, test) or of a text file.
std::vector<lstm::TokenId> read_split(const std::string& data, const lstm::Settings& settings,
                                      const lstm::Vocabulary& vocab, fs::path* file) {
  if (data != "train" && data != "valid" && data != "test") {
    *file = data;
  } else {
    const lstm::SplitPaths paths = lstm::resolve_split_paths(settings.data);
    if (data == "train") {
      *file = paths.train;
    } else if (data == "valid") {
      *file = paths.valid;
    } else {
      *file = paths.test;
    }
  }
  return lstm::encode(lstm::read_tokens(*file), vocab, settings.data.unk_token).ids;
}

}  // namespace

int main(int argc, char** argv) {
  lstm::prefer_passive_openmp_wait(argv);
  CLI::App app{
      "Measure gradient flow through time: put the loss on the last of T steps only, backpropagate, and "
      "report the mean norm of dL/dh (and dL/dc for lstm) at each distance k back from that step."};
  lstm::add_version_flag(app);
  std::string checkpoint, config_path, data = "valid", csv_path, plot_path, label;
  std::vector<std::string> overrides;
  lstm::GradflowOptions options;
  int threads = 0;
  auto* checkpoint_option = app.add_option(
      "--checkpoint", checkpoint, "checkpoint file, or a run directory (its checkpoints/best.safetensors)");
  auto* config_option = app.add_option("--config", config_path,
                                       "JSON config: measure a fresh model, initialized as lstm-train would");
  auto* set_option = app.add_option("--set", overrides,
                                    "override a key of --config, KEY=VALUE (repeatable)")
                         ->type_name("KEY=VALUE");
  checkpoint_option->excludes(config_option, set_option);
  set_option->needs(config_option);
  app.add_option("--data", data,
                 "split of the config (train, valid, test) or a text file; windows are consecutive "
                 "(default: valid)");
  app.add_option("--steps", options.steps, "window length T in steps; distances are 0..T-1 (default: 100)")
      ->check(CLI::PositiveNumber);
  app.add_option("--batches", options.batches, "windows averaged (default: 10)")->check(CLI::PositiveNumber);
  app.add_option("--batch-size", options.batch_size, "streams B per window (default: 20)")
      ->check(CLI::PositiveNumber);
  app.add_option("--csv", csv_path,
                 "write label,cell,layer,kind,distance,norm rows for every distance to this file");
  app.add_option("--plot", plot_path,
                 "draw the curves into this PNG with scripts/plot_gradflow.py (python3 with matplotlib; "
                 "the LSTM_PYTHON environment variable picks the interpreter, default python3); the CSV "
                 "goes to --csv, else next to the PNG with the extension .csv");
  app.add_option("--label", label, "name of the curves in the CSV and the plot (default: the cell name)");
  lstm::add_threads_option(app, threads);
  if (const int code = lstm::parse_command_line(app, argc, argv); code >= 0) return code;

  return lstm::run_reporting_errors([&]() -> int {
    if (checkpoint.empty() && config_path.empty()) {
      throw lstm::ConfigError("missing --checkpoint PATH or --config FILE: see --help");
    }
    lstm::set_num_threads(threads);

    // 1. The model: a checkpoint as trained, or a fresh initialization.
    lstm::Settings settings;
    lstm::Vocabulary vocab;
    std::unique_ptr<lstm::LanguageModel> model;
    std::string source;
    if (!checkpoint.empty()) {
      const fs::path path = lstm::resolve_checkpoint_path(checkpoint, "best");
      lstm::LoadedCheckpoint ckpt = lstm::load_checkpoint(path);
      settings = ckpt.settings;
      vocab = ckpt.vocab;
      model = std::move(ckpt.model);
      source = "checkpoint " + path.string();
    } else {
      settings = lstm::load_settings(config_path, overrides);
      vocab = lstm::load_corpus(settings.data).vocab;
      settings.model.vocab_size = vocab.size();
      model = std::make_unique<lstm::LanguageModel>(settings.model);
      lstm::Rng rng = lstm::initialization_rng(settings.train.seed);
      model->initialize(rng);
      source = "fresh model from " + config_path + " (train.seed " + std::to_string(settings.train.seed) + ")";
    }
    if (label.empty()) label = lstm::cell_name(settings.model.cell);

    // 2. The measurement.
    fs::path file;
    const std::vector<lstm::TokenId> ids = read_split(data, settings, vocab, &file);
    const lstm::GradflowResult result = lstm::measure_gradient_flow(*model, ids, options);
    std::printf("%s: %s, %d layer(s), H=%d; loss at the last of %d steps, mean over %d windows of %d streams "
                "from %s\n",
                source.c_str(), lstm::cell_name(settings.model.cell), settings.model.num_layers,
                settings.model.hidden_size, options.steps, options.batches, options.batch_size,
                file.string().c_str());
    std::fputs(lstm::format_gradflow_report(result).c_str(), stdout);

    // 3. The CSV and the plot.
    fs::path csv = csv_path;
    if (csv.empty() && !plot_path.empty()) csv = fs::path(plot_path).replace_extension(".csv");
    if (!csv.empty()) {
      lstm::write_gradflow_csv(csv, label, result);
      std::printf("wrote %s\n", csv.string().c_str());
    }
    if (plot_path.empty()) return 0;

    std::fflush(stdout);
    fs::path script;
    std::string searched;
    for (const auto& candidate : plot_script_candidates(argv[0])) {
      std::error_code ec;
      if (fs::is_regular_file(candidate, ec)) {
        script = candidate;
        break;
      }
      searched += (searched.empty() ? "" : ", ") + candidate.string();
    }
    if (script.empty()) {
      std::fprintf(stderr, "error: plot script %s not found (looked in %s). The CSV is in %s\n", kPlotScript,
                   searched.c_str(), csv.string().c_str());
      return 1;
    }
    const char* python_env = std::getenv("LSTM_PYTHON");
    const std::string python = python_env != nullptr && *python_env != '\0' ? python_env : "python3";
    const int status = lstm::run_plot_script(python, script, {csv}, plot_path);
    if (status == -1) {
      std::fprintf(stderr, "error: cannot run %s: %s. The CSV is in %s\n", python.c_str(), kPythonHint,
                   csv.string().c_str());
      return 1;
    }
    if (status != 0) {
      // The script has already printed why, with the install hint when matplotlib is missing.
      std::fprintf(stderr, "error: %s %s failed with exit code %d. The CSV is in %s\n", python.c_str(),
                   script.string().c_str(), status, csv.string().c_str());
      return 1;
    }
    std::printf("wrote %s\n", plot_path.c_str());
    return 0;
  });
}

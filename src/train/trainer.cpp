#include "train/trainer.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <spdlog/spdlog.h>

#include "data/batcher.h"
#include "data/corpus.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "util/version.h"
#include "model/model.h"
#include "tensor/gemm.h"
#include "tensor/packed_gemm.h"
#include "train/evaluate.h"
#include "train/optimizer.h"
#include "util/error.h"

namespace lstm {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::atomic<int> g_stop_signal{0};

// Seeds of the two generators derived from train.seed, so that dropout draws
// do not shift the initialization and the other way round.
constexpr std::uint64_t kInitStream = 0x1217a5c3e51b2d09ULL;
constexpr std::uint64_t kDropoutStream = 0x6c8e9cf570932bd5ULL;

// A gradient norm this large on the first report of a run marks an explosion.
constexpr double kExplodingNorm = 1e4;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double epoch_lr(const TrainSettings& t, int epoch_index, double lr_scale) {
  const int epoch = epoch_index + 1;  // 1-based, as in the config
  double lr = t.lr;
  if (t.lr_schedule == LrSchedule::kEpoch && epoch >= t.lr_decay_start) {
    lr /= std::pow(t.lr_decay, epoch - t.lr_decay_start + 1);
  }
  return lr * lr_scale;
}

std::string format_seconds(double s) {
  const long total = static_cast<long>(s);
  char text[32];
  std::snprintf(text, sizeof text, "%ld:%02ld:%02ld", total / 3600, (total / 60) % 60, total % 60);
  return text;
}

class Training {
 public:
  Training(const TrainOptions& options);
  int run();

 private:
  void prepare_run_dir();
  void log_header() const;
  void save_last();
  void save_best();
  void rollback(std::int64_t failing_step);
  EvalResult validate();
  int interrupted(int signal_number);
  void finish(bool stopped_early);
  void record_gradflow(int steps, double grad_norm, bool clipped);

  const TrainOptions& options_;
  Settings s_;
  fs::path run_dir_, last_path_, best_path_;
  std::optional<LoadedCheckpoint> resumed_;
  Corpus corpus_;
  std::unique_ptr<LanguageModel> model_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<Workspace> train_ws_, eval_ws_;
  std::unique_ptr<StreamBatcher> batcher_;
  std::unique_ptr<RunLog> log_;
  TrainingState st_;
  Rng dropout_rng_;
  Clock::time_point process_start_ = Clock::now();
  double train_seconds_ = 0.0;          // time in training steps, this process
  std::int64_t process_tokens_ = 0;     // tokens trained, this process
  std::optional<double> last_valid_;
  bool warned_explosion_ = false;
};

Training::Training(const TrainOptions& options) : options_(options), s_(options.settings) {
  set_num_threads(s_.train.threads);
  if (options.resume) {
    const fs::path path = resolve_checkpoint_path(*options.resume, "last");
    resumed_ = load_checkpoint(path);
    if (!resumed_->state) {
      throw CheckpointError("checkpoint " + path.string() +
                            " holds parameters only, not a training state: resume from a run "
                            "directory or its checkpoints/last.safetensors");
    }
  }

  // Everything that depends on input is checked before any file is written.
  corpus_ = load_corpus(s_.data);
  if (resumed_ && resumed_->vocab.words() != corpus_.vocab.words()) {
    throw DataError("the vocabulary built from " + corpus_.paths.train.string() +
                    " differs from the one in checkpoint " + resumed_->path.string() +
                    ": resume with the data the run was started on");
  }
  s_.model.vocab_size = corpus_.vocab.size();
  batcher_ = std::make_unique<StreamBatcher>(&corpus_.train.ids, s_.train.batch_size);
  if (batcher_->positions() < s_.train.bptt) {
    throw DataError("train split " + corpus_.paths.train.string() + " has " +
                    std::to_string(corpus_.train.ids.size()) + " tokens, fewer than train.batch_size x (train.bptt + 1) = " +
                    std::to_string(static_cast<std::int64_t>(s_.train.batch_size) * (s_.train.bptt + 1)) +
                    ": lower train.batch_size or train.bptt, or use a longer corpus");
  }
  for (const auto* split : {&corpus_.valid, &corpus_.test}) {
    if (static_cast<std::int64_t>(split->ids.size()) / s_.eval.batch_size < 2) {
      throw DataError(std::string(split == &corpus_.valid ? "valid" : "test") + " split has " +
                      std::to_string(split->ids.size()) + " tokens, too few for eval.batch_size = " +
                      std::to_string(s_.eval.batch_size) + " streams: lower eval.batch_size");
    }
  }

  model_ = std::make_unique<LanguageModel>(s_.model);
  optimizer_ = std::make_unique<Optimizer>(s_.train, model_->params().total_size());
  train_ws_ = std::make_unique<Workspace>(s_.model, s_.train.batch_size, s_.train.bptt);
  eval_ws_ = std::make_unique<Workspace>(s_.model, s_.eval.batch_size, s_.eval.bptt, WorkspaceUse::kEvaluation);
  if (resumed_) {
    if (resumed_->model->params().total_size() != model_->params().total_size()) {
      throw CheckpointError("checkpoint " + resumed_->path.string() + " does not match the model of its config");
    }
    model_->params().values() = resumed_->model->params().values();
    restore_training_buffers(*resumed_, *optimizer_, *train_ws_);
    st_ = *resumed_->state;
    dropout_rng_.set_state(st_.dropout_rng);
  } else {
    Rng init_rng = initialization_rng(s_.train.seed);
    model_->initialize(init_rng);
    dropout_rng_.reseed(s_.train.seed ^ kDropoutStream);
    st_.lr = epoch_lr(s_.train, 0, 1.0);
  }

  run_dir_ = resumed_ ? resumed_->path.parent_path().parent_path() : fs::path(s_.run_dir);
  if (run_dir_.empty()) run_dir_ = ".";
  last_path_ = run_dir_ / "checkpoints" / "last.safetensors";
  best_path_ = run_dir_ / "checkpoints" / "best.safetensors";
  prepare_run_dir();
  log_ = std::make_unique<RunLog>(run_dir_, options.console,
                                  resumed_ ? std::optional<std::int64_t>(st_.step) : std::nullopt);
}

void Training::prepare_run_dir() {
  std::error_code ec;
  if (!resumed_ && fs::exists(last_path_, ec)) {
    throw ConfigError("run directory " + run_dir_.string() +
                      " already holds a run (checkpoints/last.safetensors): resume it with --resume " +
                      run_dir_.string() + ", or choose another run_dir");
  }
  fs::create_directories(run_dir_ / "checkpoints", ec);
  if (ec) {
    throw ConfigError("cannot create run directory " + run_dir_.string() + ": " + ec.message() +
                      ": choose a writable run_dir or --run-dir");
  }
  json resolved = s_.resolved;
  resolved["run_dir"] = run_dir_.string();
  const std::string text = resolved.dump(2) + "\n";
  try {
    write_file_atomically(run_dir_ / "config.json", {text});
  } catch (const CheckpointError& e) {
    throw ConfigError(std::string(e.what()) + ": choose a writable run_dir");
  }
}

void Training::log_header() const {
  spdlog::info("lstm-train {} ({}), {} threads, {} recurrent and decoder products, other matrix products by {}",
               kVersion, kGitCommit, num_threads(), packed_products_name(), gemm_backend());
  spdlog::info("  run_dir            {}", run_dir_.string());
  spdlog::info("  model              {} x{} layers, E={} H={} V={}, dropout {}{}{}",
               cell_name(s_.model.cell), s_.model.num_layers, s_.model.embedding_size,
               s_.model.hidden_size, s_.model.vocab_size, s_.model.dropout,
               s_.model.variational_dropout ? " (variational)" : "", s_.model.tie_weights ? ", tied" : "");
  spdlog::info("  parameters         {}", model_->params().total_size());
  spdlog::info("  train/valid/test   {} / {} / {} tokens", corpus_.train.ids.size(),
               corpus_.valid.ids.size(), corpus_.test.ids.size());
  const std::int64_t unk = corpus_.train.unk_mapped + corpus_.valid.unk_mapped + corpus_.test.unk_mapped;
  if (unk > 0) {
    spdlog::info("  mapped to {}      {} / {} / {} tokens", s_.data.unk_token, corpus_.train.unk_mapped,
                 corpus_.valid.unk_mapped, corpus_.test.unk_mapped);
  }
  spdlog::info("  batch x bptt       {} x {}, {} windows per epoch", s_.train.batch_size, s_.train.bptt,
               batcher_->num_windows(s_.train.bptt));
  spdlog::info("  optimizer          {}, lr {}, clip_norm {}", s_.train.optimizer == OptimizerKind::kAdam ? "adam" : "sgd",
               st_.lr, s_.train.clip_norm);
  if (resumed_) {
    spdlog::info("  resumed from       {} (epoch {}, step {})", resumed_->path.string(), st_.epoch + 1, st_.step);
  }
}

void Training::save_last() {
  st_.dropout_rng = dropout_rng_.state();
  st_.elapsed_s += seconds_since(process_start_);
  process_start_ = Clock::now();
  CheckpointInputs in{model_.get(), &s_.resolved, &corpus_.vocab, &st_, optimizer_.get(), train_ws_.get()};
  save_checkpoint(last_path_, in);
}

void Training::save_best() {
  CheckpointInputs in{model_.get(), &s_.resolved, &corpus_.vocab};
  save_checkpoint(best_path_, in);
}

void Training::rollback(std::int64_t failing_step) {
  if (st_.rollbacks >= 1) {
    throw TrainingError("training diverged: " + std::to_string(s_.train.max_bad_steps) +
                        " consecutive non-finite steps up to step " + std::to_string(failing_step) +
                        ", again after restoring the last checkpoint at half the lr: lower train.lr or "
                        "set train.clip_norm");
  }
  LoadedCheckpoint ckpt = load_checkpoint(last_path_);
  model_->params().values() = ckpt.model->params().values();
  restore_training_buffers(ckpt, *optimizer_, *train_ws_);
  const double elapsed = st_.elapsed_s;
  st_ = *ckpt.state;
  st_.elapsed_s = elapsed;
  st_.rollbacks += 1;
  st_.lr_scale *= 0.5;
  st_.lr *= 0.5;
  dropout_rng_.set_state(st_.dropout_rng);
  log_->clear_bar();
  spdlog::warn("{} consecutive non-finite steps up to step {}: restored {} (step {}) and halved the lr to {}",
               s_.train.max_bad_steps, failing_step, last_path_.string(), st_.step, st_.lr);
}

EvalResult Training::validate() {
  const auto start = Clock::now();
  EvalResult valid = evaluate(*model_, *eval_ws_, corpus_.valid.ids);
  const double ppl = valid.perplexity();
  last_valid_ = ppl;
  // Compared by loss: a finite loss above ~709 nats has an infinite perplexity.
  const bool improved = std::isfinite(valid.loss()) && (!st_.best_valid_loss || valid.loss() < *st_.best_valid_loss);
  if (improved) {
    st_.best_valid = ppl;
    st_.best_valid_loss = valid.loss();
    save_best();
  }
  const double clipped_fraction =
      st_.epoch_steps > 0 ? static_cast<double>(st_.clipped_steps) / static_cast<double>(st_.epoch_steps) : 0.0;
  log_->clear_bar();
  spdlog::info("{:-^78}", "");
  spdlog::info("| end of epoch {:3d} | step {:7d} | valid ppl {:9.2f} | clipped {:5.1f}% | {:.1f} s{}",
               st_.epoch + 1, st_.step, ppl, 100.0 * clipped_fraction, seconds_since(start),
               improved ? " | best" : "");
  spdlog::info("{:-^78}", "");
  log_->metrics({{"step", st_.step},
                 {"epoch", st_.epoch + 1},
                 {"split", "valid"},
                 {"perplexity", ppl},
                 {"loss", valid.loss()},
                 {"tokens", valid.tokens},
                 {"lr", st_.lr},
                 {"clipped_fraction", clipped_fraction},
                 {"elapsed_s", st_.elapsed_s + seconds_since(process_start_)}});
  if (!improved && s_.train.lr_schedule == LrSchedule::kPlateau && s_.train.lr_decay > 1.0) {
    st_.lr /= s_.train.lr_decay;
    spdlog::info("validation perplexity did not improve: lr divided by {} to {}", s_.train.lr_decay, st_.lr);
  }
  return valid;
}

int Training::interrupted(int signal_number) {
  save_last();
  log_->clear_bar();
  spdlog::warn("stopped by signal {} at step {}; checkpoint written to {}", signal_number, st_.step,
               last_path_.string());
  // program_invocation_name is argv[0], so the hint works whether or not the tool is installed.
  spdlog::warn("resume with: {} --resume {}", program_invocation_name, run_dir_.string());
  return signal_number == SIGINT ? kExitInterrupted : kExitTerminated;
}

// Records |dL/dh_t| of the first layer at the first, middle and last step of
// the window just trained (steps long).
void Training::record_gradflow(int steps, double grad_norm, bool clipped) {
  const RecurrentCache& cache = train_ws_->layers[0];
  const int used = steps;
  json record = {{"step", st_.step},
                 {"epoch", st_.epoch + 1},
                 {"split", "gradflow"},
                 {"layer", 0},
                 {"dh_first", cache.dh_norm[0]},
                 {"dh_middle", cache.dh_norm[used / 2]},
                 {"dh_last", cache.dh_norm[used - 1]},
                 {"grad_norm", grad_norm},
                 {"clipped", clipped}};
  if (cache.cell == CellType::kLstm) {
    record["dc_first"] = cache.dc_norm[0];
    record["dc_last"] = cache.dc_norm[used - 1];
  }
  log_->metrics(record);
}

int Training::run() {
  log_header();
  if (!resumed_) save_last();  // the starting point, for rollbacks and resumes

  const TrainSettings& t = s_.train;
  const std::int64_t windows = batcher_->num_windows(t.bptt);
  const std::int64_t total_windows = windows * t.epochs;
  const int B = t.batch_size;
  int bad_steps = 0;
  bool stopped_early = false;
  double interval_loss = 0.0, interval_seconds = 0.0;
  std::int64_t interval_tokens = 0;

  // A run resumed from its max_steps checkpoint goes straight to the end.
  if (t.max_steps > 0 && st_.step >= t.max_steps) stopped_early = true;
  while (st_.epoch < t.epochs && !stopped_early) {
    if (st_.position == 0) {
      reset_state(*train_ws_);
      st_.clipped_steps = 0;
      st_.epoch_steps = 0;
      if (t.lr_schedule == LrSchedule::kEpoch) st_.lr = epoch_lr(t, st_.epoch, st_.lr_scale);
      log_->clear_bar();
      spdlog::info("epoch {}/{}: lr {}", st_.epoch + 1, t.epochs, st_.lr);
    }
    while (st_.position < batcher_->positions()) {
      const auto step_start = Clock::now();
      const int steps = batcher_->fill(st_.position, t.bptt, train_ws_->inputs.data(), train_ws_->targets.data());
      model_->params().zero_grads();
      const double loss_sum = model_forward(*model_, *train_ws_, steps, /*training=*/true, &dropout_rng_,
                                            t.loss_reduction);
      model_backward(*model_, *train_ws_, steps);
      const double grad_norm = global_norm(model_->params().grads());
      const double loss = loss_sum / (static_cast<double>(steps) * B);

      if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
        ++bad_steps;
        log_->clear_bar();
        spdlog::warn("non-finite {} at step {} (loss {}, gradient norm {}): update skipped",
                     std::isfinite(loss) ? "gradient norm" : "loss", st_.step + 1, loss, grad_norm);
        st_.position += steps;
        reset_state(*train_ws_);
        if (bad_steps >= t.max_bad_steps) {
          rollback(st_.step + 1);
          bad_steps = 0;
        }
        continue;
      }
      bad_steps = 0;
      if (!warned_explosion_ && grad_norm > kExplodingNorm) {
        warned_explosion_ = true;
        log_->clear_bar();
        spdlog::warn("exploding gradient at step {}: norm {:.3g} before clipping{}", st_.step + 1, grad_norm,
                     t.clip_norm > 0.0 ? "" : " (clipping is off: set train.clip_norm)");
      }
      const float clip = clip_factor(grad_norm, t.clip_norm);
      const bool clipped = clip != 1.0f;
      optimizer_->step(model_->params().values(), model_->params().grads(), st_.lr, clip);
      carry_state(*train_ws_, steps);

      ++st_.step;
      ++st_.epoch_steps;
      st_.clipped_steps += clipped ? 1 : 0;
      st_.position += steps;
      st_.tokens_trained += static_cast<std::int64_t>(steps) * B;
      process_tokens_ += static_cast<std::int64_t>(steps) * B;
      const double step_seconds = seconds_since(step_start);
      train_seconds_ += step_seconds;
      interval_loss += loss_sum;
      interval_tokens += static_cast<std::int64_t>(steps) * B;
      interval_seconds += step_seconds;

      if (t.log_gradflow_interval > 0 && st_.step % t.log_gradflow_interval == 0) {
        record_gradflow(steps, grad_norm, clipped);
      }
      if (st_.step % t.log_interval == 0) {
        const double ppl = std::exp(interval_loss / static_cast<double>(interval_tokens));
        const double tokens_per_s = static_cast<double>(interval_tokens) / interval_seconds;
        const std::int64_t window = (st_.position + t.bptt - 1) / t.bptt;
        const std::int64_t done = st_.epoch * windows + window;
        const double eta = (train_seconds_ / std::max<double>(1.0, static_cast<double>(st_.epoch_steps))) *
                           static_cast<double>(total_windows - done);
        const double elapsed = st_.elapsed_s + seconds_since(process_start_);
        const std::string line =
            fmt::format("| epoch {:3d} | {:5d}/{:5d} windows | lr {:8.4g} | {:7.0f} tok/s | loss {:6.3f} | "
                        "ppl {:9.2f} | grad norm {:7.3f}",
                        st_.epoch + 1, window, windows, st_.lr, tokens_per_s,
                        interval_loss / static_cast<double>(interval_tokens), ppl, grad_norm);
        log_->progress(line, st_.epoch + 1, t.epochs, window, windows, tokens_per_s, eta, ppl, st_.lr);
        log_->metrics({{"step", st_.step},
                       {"epoch", st_.epoch + 1},
                       {"split", "train"},
                       {"perplexity", ppl},
                       {"loss", interval_loss / static_cast<double>(interval_tokens)},
                       {"lr", st_.lr},
                       {"grad_norm", grad_norm},
                       {"clipped", clipped},
                       {"tokens_per_s", tokens_per_s},
                       {"elapsed_s", elapsed}});
        interval_loss = 0.0;
        interval_tokens = 0;
        interval_seconds = 0.0;
      }
      if (t.max_steps > 0 && st_.step >= t.max_steps) {
        stopped_early = true;
        break;
      }
      if (g_stop_signal.load() != 0) return interrupted(g_stop_signal.load());
      if (t.checkpoint_interval > 0 && st_.step % t.checkpoint_interval == 0) save_last();
    }
    if (stopped_early) break;
    validate();
    st_.epoch += 1;
    st_.position = 0;
    st_.rollbacks = 0;
    save_last();
    if (g_stop_signal.load() != 0) return interrupted(g_stop_signal.load());
  }
  finish(stopped_early);
  return 0;
}

void Training::finish(bool stopped_early) {
  if (stopped_early) {
    log_->clear_bar();
    spdlog::info("reached train.max_steps = {}", s_.train.max_steps);
    validate();
    save_last();
    spdlog::info("checkpoint written to {}", last_path_.string());
  }
  if (!st_.best_valid_loss) {
    throw TrainingError("no epoch reached a finite validation loss, so there is no best checkpoint to test: "
                        "lower train.lr or set train.clip_norm");
  }
  // Test the best checkpoint as stored, so lstm-eval on it reproduces this number.
  LoadedCheckpoint best = load_checkpoint(best_path_);
  Workspace test_ws(best.settings.model, s_.eval.batch_size, s_.eval.bptt, WorkspaceUse::kEvaluation);
  const EvalResult test = evaluate(*best.model, test_ws, corpus_.test.ids);
  spdlog::info("{:=^78}", "");
  spdlog::info("| end of training | test ppl {:9.2f} (best checkpoint, valid ppl {:.2f}) |", test.perplexity(),
               st_.best_valid.value_or(NAN));
  spdlog::info("{:=^78}", "");
  const double elapsed = st_.elapsed_s + seconds_since(process_start_);
  log_->metrics({{"step", st_.step},
                 {"epoch", stopped_early ? st_.epoch + 1 : st_.epoch},
                 {"split", "test"},
                 {"perplexity", test.perplexity()},
                 {"loss", test.loss()},
                 {"tokens", test.tokens},
                 {"checkpoint", "best"},
                 {"elapsed_s", elapsed}});
  json summary = {
      {"best_valid_perplexity", st_.best_valid.value_or(NAN)},
      {"last_valid_perplexity", last_valid_ ? json(*last_valid_) : json(nullptr)},
      {"test_perplexity", test.perplexity()},
      {"test_loss", test.loss()},
      {"epochs", st_.epoch},
      {"steps", st_.step},
      {"wall_time_s", elapsed},
      {"tokens_per_s", train_seconds_ > 0.0 ? static_cast<double>(process_tokens_) / train_seconds_ : 0.0},
      {"parameters", model_->params().total_size()},
      {"threads", num_threads()},
      {"stopped_early", stopped_early},
      {"unk_mapped", {{"train", corpus_.train.unk_mapped}, {"valid", corpus_.valid.unk_mapped},
                      {"test", corpus_.test.unk_mapped}}},
      {"version", kVersion},
      {"git_commit", kGitCommit}};
  write_file_atomically(run_dir_ / "summary.json", {summary.dump(2) + "\n"});
  spdlog::info("wall time {}, summary in {}", format_seconds(elapsed), (run_dir_ / "summary.json").string());
}

}  // namespace

Rng initialization_rng(std::uint64_t seed) { return Rng(seed ^ kInitStream); }

void request_stop(int signal_number) { g_stop_signal.store(signal_number); }

int run_training(const TrainOptions& options) {
  Training training(options);
  return training.run();
}

}  // namespace lstm

// Kill-and-resume exactness: a run stopped at any point and resumed with
// --resume must end with the same parameters, bit for bit, as a run that
// was never stopped.

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "io/safetensors.h"
#include "test_files.h"
#include "test_process.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

using namespace lstm::test;

const fs::path kSourceDir = LSTM_SOURCE_DIR;
const fs::path kTrain = fs::path(LSTM_BINARY_DIR) / "bin" / "lstm-train";

// Starts lstm-train with `args` in this process's working directory, its
// stdout and stderr going to capture_dir/TAG.stdout and capture_dir/TAG.stderr.
Running start_train(const std::vector<std::string>& args, const fs::path& capture_dir, const std::string& tag) {
  return start_process(kTrain, args, /*cwd=*/{}, capture_dir / (tag + ".stdout"), capture_dir / (tag + ".stderr"));
}

Outcome run_train(const std::vector<std::string>& args, const fs::path& capture_dir, const std::string& tag) {
  return wait_for(start_train(args, capture_dir, tag));
}

// The step of the last complete record in a metrics.jsonl, or -1.
std::int64_t last_recorded_step(const fs::path& metrics) {
  const std::string text = read_bytes(metrics);
  const auto end = text.rfind('\n');
  if (end == std::string::npos) return -1;
  const auto begin = text.rfind('\n', end - 1);
  const std::string line = text.substr(begin == std::string::npos ? 0 : begin + 1, end - (begin == std::string::npos ? 0 : begin + 1));
  const json record = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (record.is_discarded() || !record.contains("step")) return -1;
  return record["step"].get<std::int64_t>();
}

// Waits until the run has recorded step `step` in run_dir/metrics.jsonl, then
// sends `signal_number`, and returns how the process ended. A record is
// written after every step (train.log_interval = 1), so the signal arrives
// within a step or two of `step` however busy the machine is.
Outcome signal_after_step(const Running& running, const fs::path& run_dir, std::int64_t step, int signal_number,
                          bool* signalled) {
  *signalled = false;
  const auto deadline = Clock::now() + std::chrono::seconds(300);
  while (Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(running.pid, &status, WNOHANG) == running.pid) return outcome_of(running, status);
    if (last_recorded_step(run_dir / "metrics.jsonl") >= step) {
      ::kill(running.pid, signal_number);
      *signalled = true;
      return wait_for(running);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ::kill(running.pid, SIGKILL);
  return wait_for(running);
}

// Compares every parameter tensor (not the optimizer moments or the carried
// state) of two checkpoints; returns a description of the differences.
std::string parameter_differences(const fs::path& expected_path, const fs::path& actual_path) {
  const lstm::SafetensorsFile expected = lstm::read_safetensors(expected_path);
  const lstm::SafetensorsFile actual = lstm::read_safetensors(actual_path);
  auto is_parameter = [](const std::string& name) {
    return name.rfind("optimizer.", 0) != 0 && name.rfind("state.", 0) != 0;
  };
  std::string differences;
  std::size_t compared = 0;
  for (const auto& [name, tensor] : expected.tensors) {
    if (!is_parameter(name)) continue;
    const auto it = actual.tensors.find(name);
    if (it == actual.tensors.end()) {
      differences += name + " missing; ";
      continue;
    }
    if (it->second.shape != tensor.shape) {
      differences += name + " has another shape; ";
      continue;
    }
    ++compared;
    std::vector<float> a(tensor.count), b(tensor.count);
    expected.copy_tensor(name, a.data(), a.size());
    actual.copy_tensor(name, b.data(), b.size());
    if (std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) != 0) {
      double max_diff = 0.0;
      std::size_t differing = 0;
      for (std::size_t i = 0; i < a.size(); ++i) {
        if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) ++differing;
        max_diff = std::max(max_diff, std::fabs(static_cast<double>(a[i]) - b[i]));
      }
      differences += name + ": " + std::to_string(differing) + " of " + std::to_string(a.size()) +
                     " values differ, max |diff| " + std::to_string(max_diff) + "; ";
    }
  }
  for (const auto& [name, tensor] : actual.tensors) {
    if (is_parameter(name) && expected.tensors.count(name) == 0) differences += name + " unexpected; ";
  }
  if (compared == 0) differences += "no parameter tensors compared; ";
  return differences;
}

std::int64_t checkpoint_step(const fs::path& path) {
  const lstm::SafetensorsFile file = lstm::read_safetensors(path);
  return json::parse(file.metadata.at("training_state"))["step"].get<std::int64_t>();
}

// The tiny config for two epochs with dropout, mid-epoch checkpoints every
// 7 steps and a metrics record after every step.
std::vector<std::string> run_args(const fs::path& run_dir) {
  return {"--config", (kSourceDir / "configs" / "tiny.json").string(),
          "--set", "data.dir=" + (kSourceDir / "data" / "sample").string(),
          "--set", "train.epochs=2",
          "--set", "train.checkpoint_interval=7",
          "--set", "model.dropout=0.3",
          "--set", "train.threads=2",
          "--set", "train.log_interval=1",
          "--run-dir", run_dir.string()};
}

class Resume : public ::testing::Test {
 protected:
  // The uninterrupted reference run, once per process.
  static void SetUpTestSuite() {
    work_ = new TempDir("resume");
    reference_ = work_->path() / "reference";
    const Outcome outcome = run_train(run_args(reference_), work_->path(), "reference");
    reference_ok_ = outcome.exit_code == 0;
    reference_error_ = outcome.err;
    if (reference_ok_) total_steps_ = json::parse(read_bytes(reference_ / "summary.json"))["steps"].get<std::int64_t>();
  }
  static void TearDownTestSuite() { delete work_; }

  void SetUp() override {
    ASSERT_TRUE(reference_ok_) << "reference run failed: " << reference_error_;
    ASSERT_GT(total_steps_, 100);
  }

  // Stops a fresh run with `signal_number` once it has recorded `step`, then
  // resumes it to the end and compares the final parameters with the reference.
  void stop_and_resume(const std::string& tag, std::int64_t step, int signal_number, int expected_exit_code) {
    SCOPED_TRACE(tag + ": stopped after step " + std::to_string(step) + " of " + std::to_string(total_steps_));
    const fs::path run_dir = work_->path() / tag;
    const Running running = start_train(run_args(run_dir), work_->path(), tag);
    bool signalled = false;
    const Outcome stopped = signal_after_step(running, run_dir, step, signal_number, &signalled);
    ASSERT_TRUE(signalled) << "the run ended (exit " << stopped.exit_code << ") before step " << step
                           << " was recorded: " << stopped.err;
    if (signal_number == SIGKILL) {
      ASSERT_EQ(stopped.signal, SIGKILL);
    } else {
      EXPECT_EQ(stopped.signal, 0);
      EXPECT_EQ(stopped.exit_code, expected_exit_code) << stopped.err;
      EXPECT_TRUE(stopped.err.empty()) << stopped.err;
      EXPECT_TRUE(contains(stopped.out, "--resume " + run_dir.string())) << stopped.out;
    }
    ASSERT_FALSE(fs::exists(run_dir / "summary.json")) << "the run was not stopped before its end";
    const std::int64_t saved_step = checkpoint_step(run_dir / "checkpoints" / "last.safetensors");
    EXPECT_LT(saved_step, total_steps_);
    if (signal_number != SIGKILL) {
      EXPECT_GE(saved_step, step) << "the checkpoint written on the signal is behind the recorded step";
    }

    const Outcome resumed = run_train({"--resume", run_dir.string()}, work_->path(), tag + "-resumed");
    ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
    EXPECT_EQ(checkpoint_step(run_dir / "checkpoints" / "last.safetensors"), total_steps_);
    const std::string differences =
        parameter_differences(reference_ / "checkpoints" / "last.safetensors", run_dir / "checkpoints" / "last.safetensors");
    EXPECT_TRUE(differences.empty()) << differences;

    const json expected_summary = json::parse(read_bytes(reference_ / "summary.json"));
    const json actual_summary = json::parse(read_bytes(run_dir / "summary.json"));
    EXPECT_EQ(actual_summary["test_perplexity"], expected_summary["test_perplexity"]);
    EXPECT_EQ(actual_summary["best_valid_perplexity"], expected_summary["best_valid_perplexity"]);
  }

  static TempDir* work_;
  static fs::path reference_;
  static bool reference_ok_;
  static std::string reference_error_;
  static std::int64_t total_steps_;
};

TempDir* Resume::work_ = nullptr;
fs::path Resume::reference_;
bool Resume::reference_ok_ = false;
std::string Resume::reference_error_;
std::int64_t Resume::total_steps_ = 0;

TEST_F(Resume, SigkillEarly) { stop_and_resume("kill-early", total_steps_ * 15 / 100, SIGKILL, 0); }

TEST_F(Resume, SigkillNearEpochEnd) { stop_and_resume("kill-middle", total_steps_ / 2 + 1, SIGKILL, 0); }

TEST_F(Resume, SigkillLate) { stop_and_resume("kill-late", total_steps_ * 80 / 100, SIGKILL, 0); }

TEST_F(Resume, SigintExits130) { stop_and_resume("sigint", total_steps_ * 35 / 100, SIGINT, 130); }

TEST_F(Resume, SigtermExits143) { stop_and_resume("sigterm", total_steps_ * 65 / 100, SIGTERM, 143); }

TEST_F(Resume, FromBestCheckpointRefused) {
  const fs::path best = reference_ / "checkpoints" / "best.safetensors";
  const std::string before = read_bytes(reference_ / "metrics.jsonl");
  const Outcome outcome = run_train({"--resume", best.string()}, work_->path(), "from-best");
  EXPECT_EQ(outcome.exit_code, 1) << outcome.err;
  EXPECT_EQ(outcome.err.rfind("error: ", 0), 0u) << outcome.err;
  EXPECT_TRUE(contains(outcome.err, best.string())) << outcome.err;
  EXPECT_TRUE(contains(outcome.err, "parameters only")) << outcome.err;
  EXPECT_EQ(read_bytes(reference_ / "metrics.jsonl"), before);
}

}  // namespace

// lstm-train and lstm-eval as a user runs them. Bad input must end with a
// non-zero exit code, one "error:" line on stderr and no change to any file.
// A good tiny run must write every output file.

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "config/settings.h"
#include "data/corpus.h"
#include "data/vocabulary.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "tensor/random.h"
#include "test_files.h"
#include "test_process.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using namespace lstm::test;

const fs::path kSourceDir = LSTM_SOURCE_DIR;
const fs::path kTrain = fs::path(LSTM_BINARY_DIR) / "bin" / "lstm-train";
const fs::path kEval = fs::path(LSTM_BINARY_DIR) / "bin" / "lstm-eval";
const fs::path kBench = fs::path(LSTM_BINARY_DIR) / "bin" / "lstm-bench";

// Every file and folder under root: folders by name, files by size, mtime
// and contents.
using Tree = std::map<std::string, std::string>;

Tree snapshot(const fs::path& root) {
  Tree tree;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    const std::string name = entry.path().lexically_relative(root).string();
    if (entry.is_directory()) {
      tree[name] = "<folder>";
    } else {
      const auto mtime = entry.last_write_time().time_since_epoch().count();
      tree[name] = std::to_string(mtime) + ":" + read_bytes(entry.path());
    }
  }
  return tree;
}

std::string tree_changes(const Tree& before, const Tree& after) {
  std::string changes;
  for (const auto& [name, value] : before) {
    const auto it = after.find(name);
    if (it == after.end()) {
      changes += "  removed " + name + "\n";
    } else if (it->second != value) {
      changes += "  changed " + name + "\n";
    }
  }
  for (const auto& [name, value] : after) {
    if (before.count(name) == 0) changes += "  created " + name + "\n";
  }
  return changes;
}

// Writes a parameters-only checkpoint of a small model trained on nothing,
// whose config and vocabulary come from the corpus in data_dir.
void write_checkpoint(const fs::path& path, const fs::path& data_dir) {
  const json config = {{"data", {{"dir", data_dir.string()}}},
                       {"model", {{"cell", "lstm"}, {"embedding_size", 4}, {"hidden_size", 4}}},
                       {"eval", {{"batch_size", 2}}}};
  lstm::Settings settings = lstm::settings_from_json(config, {}, "test config");
  const lstm::Corpus corpus = lstm::load_corpus(settings.data);
  settings.model.vocab_size = corpus.vocab.size();
  lstm::LanguageModel model(settings.model);
  lstm::Rng rng(5);
  model.initialize(rng);
  fs::create_directories(path.parent_path());
  lstm::save_checkpoint(path, {&model, &settings.resolved, &corpus.vocab});
}

// Expects a failed run: the given exit code, one "error:" line on stderr.
void expect_one_line_error(const Outcome& outcome, int exit_code) {
  EXPECT_EQ(outcome.signal, 0) << outcome.err;
  EXPECT_EQ(outcome.exit_code, exit_code) << outcome.err;
  EXPECT_EQ(outcome.err.rfind("error: ", 0), 0u) << "stderr: " << outcome.err;
  ASSERT_FALSE(outcome.err.empty());
  EXPECT_EQ(outcome.err.back(), '\n') << outcome.err;
  EXPECT_EQ(std::count(outcome.err.begin(), outcome.err.end(), '\n'), 1) << "stderr: " << outcome.err;
}

// A work folder with a good config, a corpus, broken inputs and an earlier
// run. Each test runs one bad command in it and checks that nothing changed.
class CliBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    const fs::path ws = work_.path();
    fs::create_directories(ws / "data");
    for (const char* split : {"train.txt", "valid.txt", "test.txt"}) {
      fs::copy_file(kSourceDir / "data" / "sample" / split, ws / "data" / split);
    }
    good_config_ = ws / "good.json";
    write_bytes(good_config_, json{{"run_dir", (ws / "runs" / "fresh").string()},
                                   {"data", {{"dir", (ws / "data").string()}}},
                                   {"model", {{"embedding_size", 8}, {"hidden_size", 8}}},
                                   {"train", {{"batch_size", 8}, {"bptt", 10}, {"epochs", 1}, {"max_steps", 5}}},
                                   {"eval", {{"batch_size", 4}}}}
                                  .dump(2));
    write_bytes(ws / "broken.json", "{\n  \"train\": {\"lr\": 1.0,}\n}\n");
    write_bytes(ws / "wrong_type.json", R"({"model": {"tie_weights": 1}})");
    write_bytes(ws / "overflow.json", R"({"train": {"lr": 1e400}})");

    // A corpus folder without a test split.
    write_bytes(ws / "partial" / "train.txt", read_bytes(ws / "data" / "train.txt"));
    write_bytes(ws / "partial" / "valid.txt", read_bytes(ws / "data" / "valid.txt"));
    // A corpus whose train split is empty.
    write_bytes(ws / "empty" / "train.txt", "");
    write_bytes(ws / "empty" / "valid.txt", "a b\n");
    write_bytes(ws / "empty" / "test.txt", "a b\n");
    // 40 train tokens, fewer than 8 streams x 11 positions.
    std::string few;
    for (int i = 0; i < 8; ++i) few += "the cat sat on\n";
    write_bytes(ws / "short" / "train.txt", few);
    write_bytes(ws / "short" / "valid.txt", few);
    write_bytes(ws / "short" / "test.txt", few);
    // Valid and test splits with a word that train lacks.
    for (const char* split : {"valid", "test"}) {
      const fs::path folder = ws / (std::string("oov_") + split);
      for (const char* name : {"train", "valid", "test"}) {
        std::string text = read_bytes(ws / "data" / (std::string(name) + ".txt"));
        if (std::string(name) == split) text += "the zyzzyva said hello\n";
        write_bytes(folder / (std::string(name) + ".txt"), text);
      }
    }
    write_bytes(ws / "oov.txt", "the zyzzyva\n");

    // A regular file where the run folder's parent should be.
    write_bytes(ws / "file", "not a folder\n");

    // An earlier run, with a checkpoint.
    old_run_ = ws / "runs" / "old";
    write_checkpoint(old_run_ / "checkpoints" / "last.safetensors", ws / "data");
    fs::copy_file(old_run_ / "checkpoints" / "last.safetensors", old_run_ / "checkpoints" / "best.safetensors");
    write_bytes(old_run_ / "config.json", "{}\n");
    write_bytes(old_run_ / "metrics.jsonl", "{\"step\": 1}\n");
    write_bytes(old_run_ / "train.log", "earlier run\n");

    // Damaged checkpoints for lstm-eval.
    const std::string good = read_bytes(old_run_ / "checkpoints" / "best.safetensors");
    write_bytes(ws / "ckpt" / "truncated.safetensors", good.substr(0, good.size() / 2));
    write_bytes(ws / "ckpt" / "short.safetensors", good.substr(0, 5));
    lstm::SafetensorsFile file = lstm::read_safetensors(old_run_ / "checkpoints" / "best.safetensors");
    std::map<std::string, std::string> metadata = file.metadata;
    metadata["format"] = "not-lstm";
    std::vector<lstm::TensorToWrite> tensors;
    for (const auto& [name, stored] : file.tensors) {
      tensors.push_back({name, stored.shape, reinterpret_cast<const float*>(file.data.data() + stored.offset)});
    }
    lstm::write_safetensors(ws / "ckpt" / "bad_magic.safetensors", tensors, metadata);

    before_ = snapshot(ws);
  }

  // Runs a command that must fail and checks the exit code, stderr and files.
  Outcome expect_failure(const fs::path& program, const std::vector<std::string>& args, int exit_code) {
    const Outcome outcome = run_program(program, args, work_.path(), capture_.path());
    expect_one_line_error(outcome, exit_code);
    const std::string changes = tree_changes(before_, snapshot(work_.path()));
    EXPECT_TRUE(changes.empty()) << "files changed by the failed run:\n" << changes;
    return outcome;
  }

  Outcome train_failure(std::vector<std::string> extra, int exit_code) {
    std::vector<std::string> args = {"--config", good_config_.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return expect_failure(kTrain, args, exit_code);
  }

  std::string path(const std::string& relative) const { return (work_.path() / relative).string(); }

  TempDir work_{"cli"};
  TempDir capture_{"cli"};
  fs::path good_config_;
  fs::path old_run_;
  Tree before_;
};

TEST_F(CliBadInput, MissingConfigFile) {
  const Outcome o = expect_failure(kTrain, {"--config", path("absent.json")}, 2);
  EXPECT_TRUE(contains(o.err, path("absent.json"))) << o.err;
}

TEST_F(CliBadInput, MissingConfigOption) {
  expect_failure(kTrain, {}, 2);
}

TEST_F(CliBadInput, MalformedJson) {
  const Outcome o = expect_failure(kTrain, {"--config", path("broken.json")}, 2);
  EXPECT_TRUE(contains(o.err, "line 2")) << o.err;
}

TEST_F(CliBadInput, NumberOverflow) {
  const Outcome o = expect_failure(kTrain, {"--config", path("overflow.json")}, 2);
  EXPECT_TRUE(contains(o.err, path("overflow.json"))) << o.err;
}

TEST_F(CliBadInput, UnknownKey) {
  const Outcome o = train_failure({"--set", "model.hiden_size=8"}, 2);
  EXPECT_TRUE(contains(o.err, "model.hidden_size")) << o.err;
}

TEST_F(CliBadInput, WrongTypeInFile) {
  const Outcome o = expect_failure(kTrain, {"--config", path("wrong_type.json")}, 2);
  EXPECT_TRUE(contains(o.err, "model.tie_weights")) << o.err;
}

TEST_F(CliBadInput, WrongTypeInOverride) {
  const Outcome o = train_failure({"--set", "train.bptt=\"35\""}, 2);
  EXPECT_TRUE(contains(o.err, "train.bptt")) << o.err;
}

TEST_F(CliBadInput, OutOfRangeValues) {
  const char* overrides[] = {"train.lr=0",         "train.lr=-1",         "train.batch_size=0",
                             "train.bptt=0",       "model.dropout=1.0",   "model.dropout=-0.1",
                             "train.clip_norm=-1", "model.cell=transformer"};
  for (const char* item : overrides) {
    SCOPED_TRACE(item);
    const Outcome o = train_failure({"--set", item}, 2);
    const std::string key = std::string(item).substr(0, std::string(item).find('='));
    EXPECT_TRUE(contains(o.err, key)) << o.err;
  }
}

TEST_F(CliBadInput, MissingDataFolder) {
  const Outcome o = train_failure({"--set", "data.dir=" + path("nowhere")}, 1);
  EXPECT_TRUE(contains(o.err, path("nowhere"))) << o.err;
}

TEST_F(CliBadInput, MissingSplit) {
  const Outcome o = train_failure({"--set", "data.dir=" + path("partial")}, 1);
  EXPECT_TRUE(contains(o.err, "test")) << o.err;
}

TEST_F(CliBadInput, EmptyCorpus) {
  const Outcome o = train_failure({"--set", "data.dir=" + path("empty")}, 1);
  EXPECT_TRUE(contains(o.err, path("empty/train.txt"))) << o.err;
}

TEST_F(CliBadInput, CorpusShorterThanWindow) {
  const Outcome o = train_failure({"--set", "data.dir=" + path("short")}, 1);
  EXPECT_TRUE(contains(o.err, "train.batch_size")) << o.err;
}

TEST_F(CliBadInput, ValidWordOutsideVocabulary) {
  const Outcome o = train_failure({"--set", "data.dir=" + path("oov_valid")}, 1);
  EXPECT_TRUE(contains(o.err, "\"zyzzyva\"")) << o.err;
  EXPECT_TRUE(contains(o.err, path("oov_valid/valid.txt"))) << o.err;
}

TEST_F(CliBadInput, TestWordOutsideVocabulary) {
  const Outcome o = train_failure({"--set", "data.dir=" + path("oov_test")}, 1);
  EXPECT_TRUE(contains(o.err, "\"zyzzyva\"")) << o.err;
  EXPECT_TRUE(contains(o.err, path("oov_test/test.txt"))) << o.err;
}

TEST_F(CliBadInput, RunDirUnderRegularFile) {
  const Outcome o = train_failure({"--run-dir", path("file/run")}, 2);
  EXPECT_TRUE(contains(o.err, path("file/run"))) << o.err;
}

TEST_F(CliBadInput, ExistingRunRefused) {
  const Outcome o = train_failure({"--run-dir", old_run_.string()}, 2);
  EXPECT_TRUE(contains(o.err, "--resume")) << o.err;
}

TEST_F(CliBadInput, ResumeWithConfigRefused) {
  expect_failure(kTrain, {"--config", good_config_.string(), "--resume", old_run_.string()}, 2);
}

TEST_F(CliBadInput, ResumeMissingRun) {
  const Outcome o = expect_failure(kTrain, {"--resume", path("runs/none")}, 1);
  EXPECT_TRUE(contains(o.err, path("runs/none"))) << o.err;
}

TEST_F(CliBadInput, ResumeParametersOnlyRefused) {
  const Outcome o = expect_failure(kTrain, {"--resume", (old_run_ / "checkpoints" / "best.safetensors").string()}, 1);
  EXPECT_TRUE(contains(o.err, "parameters only")) << o.err;
}

TEST_F(CliBadInput, EvalMissingCheckpoint) {
  const Outcome o = expect_failure(kEval, {"--checkpoint", path("ckpt/absent.safetensors")}, 1);
  EXPECT_TRUE(contains(o.err, path("ckpt/absent.safetensors"))) << o.err;
}

TEST_F(CliBadInput, EvalRunDirWithoutBest) {
  const Outcome o = expect_failure(kEval, {"--checkpoint", path("data")}, 1);
  EXPECT_TRUE(contains(o.err, "best.safetensors")) << o.err;
}

TEST_F(CliBadInput, EvalTruncatedCheckpoint) {
  for (const char* name : {"ckpt/truncated.safetensors", "ckpt/short.safetensors"}) {
    SCOPED_TRACE(name);
    const Outcome o = expect_failure(kEval, {"--checkpoint", path(name)}, 1);
    EXPECT_TRUE(contains(o.err, path(name))) << o.err;
    EXPECT_TRUE(contains(o.err, "truncated")) << o.err;
  }
}

TEST_F(CliBadInput, EvalBadMagic) {
  const Outcome o = expect_failure(kEval, {"--checkpoint", path("ckpt/bad_magic.safetensors")}, 1);
  EXPECT_TRUE(contains(o.err, "bad magic")) << o.err;
}

TEST_F(CliBadInput, EvalWordOutsideVocabulary) {
  const Outcome o = expect_failure(kEval, {"--checkpoint", old_run_.string(), "--data", path("oov.txt")}, 1);
  EXPECT_TRUE(contains(o.err, "\"zyzzyva\"")) << o.err;
}

TEST_F(CliBadInput, UnknownOption) {
  const Outcome o = train_failure({"--bogus"}, 2);
  EXPECT_TRUE(contains(o.err, "--bogus")) << o.err;
}

TEST_F(CliBadInput, EvalThreadsOutOfRange) {
  const Outcome o = expect_failure(kEval, {"--checkpoint", old_run_.string(), "--threads", "-1"}, 2);
  EXPECT_TRUE(contains(o.err, "--threads")) << o.err;
  EXPECT_TRUE(contains(o.err, "-1")) << o.err;
}

TEST_F(CliBadInput, BenchNumbersOutOfRange) {
  if (!fs::exists(kBench)) GTEST_SKIP() << kBench << " is not built (LSTM_BUILD_BENCH=OFF)";
  const std::pair<std::string, std::string> cases[] = {
      {"--steps", "0"}, {"--steps", "-3"}, {"--vocab", "0"}, {"--warmup", "-1"}, {"--threads", "2000"}};
  for (const auto& [option, value] : cases) {
    SCOPED_TRACE(option + " " + value);
    const Outcome o = expect_failure(kBench, {"--config", good_config_.string(), option, value}, 2);
    EXPECT_TRUE(contains(o.err, option)) << o.err;
    EXPECT_TRUE(contains(o.err, value)) << o.err;
  }
}

TEST_F(CliBadInput, EvalGoodCheckpointWorks) {
  // The same work folder and checkpoint do evaluate when nothing is wrong.
  const Outcome o = run_program(kEval, {"--checkpoint", old_run_.string(), "--json"}, work_.path(), capture_.path());
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_TRUE(o.err.empty()) << o.err;
  EXPECT_TRUE(json::parse(o.out).contains("perplexity")) << o.out;
}

TEST(CliBench, JsonReportsEveryMeasurement) {
  if (!fs::exists(kBench)) GTEST_SKIP() << kBench << " is not built (LSTM_BUILD_BENCH=OFF)";
  TempDir capture("cli");
  const Outcome o = run_program(kBench,
                                {"--config", (kSourceDir / "configs" / "tiny.json").string(), "--vocab", "60",
                                 "--steps", "2", "--warmup", "0", "--threads", "1", "--json"},
                                capture.path(), capture.path());
  ASSERT_EQ(o.exit_code, 0) << o.err;
  const json report = json::parse(o.out);
  const std::vector<json::json_pointer> positive = {
      json::json_pointer("/train_tokens_per_s"),
      json::json_pointer("/eval_tokens_per_s"),
      json::json_pointer("/train_peak_gflops"),
      json::json_pointer("/train_fraction_of_bound"),
      json::json_pointer("/eval_fraction_of_bound"),
      json::json_pointer("/decoder_product_gflops/logits"),
      json::json_pointer("/decoder_product_gflops/dw"),
      json::json_pointer("/decoder_product_gflops/dh"),
      json::json_pointer("/softmax_us_per_column/eval"),
      json::json_pointer("/softmax_us_per_column/train"),
      json::json_pointer("/softmax_us_per_column/logits_product_at_sgemm_rate"),
      json::json_pointer("/peak_rss_bytes")};
  for (const auto& pointer : positive) {
    ASSERT_TRUE(report.contains(pointer)) << pointer.to_string() << " missing from " << o.out;
    EXPECT_GT(report.at(pointer).get<double>(), 0.0) << pointer.to_string();
  }
  // GFLOP/s is tokens/s times the counted work per token.
  const double train_gflops =
      report.at("train_tokens_per_s").get<double>() * report.at("train_flops_per_token").get<double>() / 1e9;
  EXPECT_NEAR(report.at("train_gflops").get<double>(), train_gflops, 1e-9 * train_gflops);
}

TEST(CliHelp, TrainListsEveryOption) {
  TempDir capture("cli");
  const Outcome o = run_program(kTrain, {"--help"}, capture.path(), capture.path());
  EXPECT_EQ(o.exit_code, 0) << o.err;
  for (const char* option : {"--config", "--set", "--run-dir", "--resume", "--log-level", "--quiet", "--progress",
                             "--version", "--help"}) {
    EXPECT_TRUE(contains(o.out, option)) << option << " missing from:\n" << o.out;
  }
  // The config keys are documented there too.
  for (const char* key : {"train.lr", "train.bptt", "model.cell", "model.dropout", "data.unk_token", "eval.batch_size"}) {
    EXPECT_TRUE(contains(o.out, key)) << key << " missing from:\n" << o.out;
  }
}

TEST(CliHelp, EvalListsEveryOption) {
  TempDir capture("cli");
  const Outcome o = run_program(kEval, {"--help"}, capture.path(), capture.path());
  EXPECT_EQ(o.exit_code, 0) << o.err;
  for (const char* option : {"--checkpoint", "--data", "--batch-size", "--bptt", "--threads", "--json", "--version",
                             "--help"}) {
    EXPECT_TRUE(contains(o.out, option)) << option << " missing from:\n" << o.out;
  }
}

TEST(CliHelp, VersionPrinted) {
  TempDir capture("cli");
  const std::regex version(R"(lstm-lm \d+\.\d+\.\d+)");
  std::vector<fs::path> programs = {kTrain, kEval};
  if (fs::exists(kBench)) programs.push_back(kBench);  // absent with LSTM_BUILD_BENCH=OFF
  for (const fs::path& program : programs) {
    SCOPED_TRACE(program.string());
    const Outcome o = run_program(program, {"--version"}, capture.path(), capture.path());
    EXPECT_EQ(o.exit_code, 0) << o.err;
    EXPECT_TRUE(std::regex_search(o.out, version)) << o.out;
  }
}

// One short training run of configs/tiny.json, shared by the tests below.
class CliTinyRun : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    work_ = new TempDir("cli");
    run_dir_ = work_->path() / "run";
    fs::create_directories(work_->path() / "capture");
    outcome_ = new Outcome(run_program(kTrain,
                                       {"--config", (kSourceDir / "configs" / "tiny.json").string(), "--set",
                                        "data.dir=" + (kSourceDir / "data" / "sample").string(), "--set",
                                        "train.max_steps=60", "--set", "train.epochs=1", "--run-dir", run_dir_.string()},
                                       work_->path(), work_->path() / "capture"));
  }
  static void TearDownTestSuite() {
    delete outcome_;
    delete work_;
  }

  static std::vector<json> metrics() {
    std::vector<json> records;
    std::istringstream lines(read_bytes(run_dir_ / "metrics.jsonl"));
    std::string line;
    while (std::getline(lines, line)) records.push_back(json::parse(line));
    return records;
  }

  static TempDir* work_;
  static fs::path run_dir_;
  static Outcome* outcome_;
};

TempDir* CliTinyRun::work_ = nullptr;
fs::path CliTinyRun::run_dir_;
Outcome* CliTinyRun::outcome_ = nullptr;

TEST_F(CliTinyRun, ExitsCleanly) {
  EXPECT_EQ(outcome_->signal, 0);
  EXPECT_EQ(outcome_->exit_code, 0) << outcome_->err;
  EXPECT_TRUE(outcome_->err.empty()) << outcome_->err;
}

TEST_F(CliTinyRun, WritesEveryOutput) {
  for (const char* name : {"config.json", "metrics.jsonl", "train.log", "summary.json",
                           "checkpoints/best.safetensors", "checkpoints/last.safetensors"}) {
    EXPECT_TRUE(fs::is_regular_file(run_dir_ / name)) << name;
    EXPECT_GT(fs::file_size(run_dir_ / name), 0u) << name;
  }
  const json config = json::parse(read_bytes(run_dir_ / "config.json"));
  EXPECT_EQ(config["train"]["max_steps"], json(60));
  EXPECT_EQ(config["run_dir"], json(run_dir_.string()));
  const json summary = json::parse(read_bytes(run_dir_ / "summary.json"));
  EXPECT_EQ(summary["steps"], json(60));
  EXPECT_TRUE(summary["test_perplexity"].is_number());
  EXPECT_TRUE(contains(read_bytes(run_dir_ / "train.log"), "test ppl"));
}

TEST_F(CliTinyRun, MetricsRecordsComplete) {
  const std::vector<json> records = metrics();
  ASSERT_FALSE(records.empty());
  std::map<std::string, int> per_split;
  for (const json& r : records) {
    SCOPED_TRACE(r.dump());
    ASSERT_TRUE(r.is_object());
    EXPECT_TRUE(r["step"].is_number_integer());
    EXPECT_TRUE(r["epoch"].is_number_integer());
    ASSERT_TRUE(r["split"].is_string());
    ASSERT_TRUE(r["perplexity"].is_number());
    EXPECT_TRUE(std::isfinite(r["perplexity"].get<double>()));
    EXPECT_GT(r["perplexity"].get<double>(), 1.0);
    const std::string split = r["split"];
    per_split[split] += 1;
    if (split == "train") {
      for (const char* key : {"lr", "grad_norm", "tokens_per_s", "elapsed_s", "loss"}) {
        ASSERT_TRUE(r.contains(key)) << key;
        EXPECT_TRUE(r[key].is_number()) << key;
      }
    }
  }
  EXPECT_EQ(per_split["train"], 1);  // log_interval 50 within 60 steps
  EXPECT_EQ(per_split["valid"], 1);
  EXPECT_EQ(per_split["test"], 1);
}

TEST_F(CliTinyRun, TestRecordNamesLastEpoch) {
  // Records number epochs from 1; the test record after a run stopped by
  // train.max_steps should carry the epoch of the valid record before it.
  std::int64_t valid_epoch = -1, test_epoch = -1;
  for (const json& r : metrics()) {
    if (r["split"] == "valid") valid_epoch = r["epoch"].get<std::int64_t>();
    if (r["split"] == "test") test_epoch = r["epoch"].get<std::int64_t>();
  }
  EXPECT_EQ(valid_epoch, 1);
  EXPECT_EQ(test_epoch, valid_epoch) << "the test record says epoch " << test_epoch;
}

TEST_F(CliTinyRun, EvalMatchesTestRecord) {
  double test_perplexity = NAN;
  for (const json& r : metrics()) {
    if (r["split"] == "test") test_perplexity = r["perplexity"].get<double>();
  }
  ASSERT_TRUE(std::isfinite(test_perplexity));
  const Outcome o =
      run_program(kEval, {"--checkpoint", run_dir_.string(), "--json"}, work_->path(), work_->path() / "capture");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  const json result = json::parse(o.out);
  ASSERT_TRUE(result["perplexity"].is_number()) << o.out;
  ASSERT_TRUE(result["loss"].is_number()) << o.out;
  ASSERT_TRUE(result["tokens"].is_number_integer()) << o.out;
  EXPECT_NEAR(result["perplexity"].get<double>(), test_perplexity, 0.01);
  EXPECT_NEAR(std::exp(result["loss"].get<double>()), result["perplexity"].get<double>(), 1e-6 * test_perplexity);
  EXPECT_GT(result["tokens"].get<std::int64_t>(), 0);
}

TEST_F(CliTinyRun, StdoutHasNoTerminalCodes) {
  ASSERT_FALSE(outcome_->out.empty());
  EXPECT_EQ(outcome_->out.find('\x1b'), std::string::npos);
  EXPECT_EQ(outcome_->out.find('\r'), std::string::npos);
}

}  // namespace

// Non-finite steps: a ReLU RNN at lr 1e5 without clipping overflows within a
// few steps. The run skips those updates, restores its last checkpoint at half
// the lr after train.max_bad_steps of them, and stops with an error naming
// the step when that fails again.
TEST(CliDivergence, RollsBackThenStopsNamingStep) {
  TempDir work("cli");
  TempDir capture("cli");
  const Outcome outcome =
      run_program(kTrain,
                  {"--config", (kSourceDir / "configs" / "tiny.json").string(), "--run-dir",
                   (work.path() / "run").string(), "--set", "model.cell=rnn_relu", "--set", "train.lr=100000",
                   "--set", "train.clip_norm=0", "--set", "train.max_bad_steps=3", "--set", "train.threads=1"},
                  kSourceDir, capture.path());
  EXPECT_EQ(outcome.exit_code, 1) << outcome.err;
  EXPECT_TRUE(contains(outcome.out, "update skipped")) << outcome.out;
  EXPECT_TRUE(contains(outcome.out, "halved the lr")) << outcome.out;
  EXPECT_TRUE(contains(outcome.err, "error: training diverged")) << outcome.err;
  EXPECT_TRUE(contains(outcome.err, "up to step ")) << outcome.err;
}

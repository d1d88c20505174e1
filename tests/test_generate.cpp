// Sampling and sentence scoring (analysis/generate) on a tiny LSTM trained
// for 100 steps on data/sample, and the lstm-generate command line.

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "analysis/generate.h"
#include "config/settings.h"
#include "data/corpus.h"
#include "io/checkpoint.h"
#include "test_files.h"
#include "train/evaluate.h"
#include "train/run_log.h"
#include "train/trainer.h"
#include "util/error.h"

namespace lstm {
namespace {

namespace fs = std::filesystem;

using test::read_bytes;
using test::write_bytes;

// Trains configs/tiny.json for 100 steps once; every test loads its best checkpoint.
class GenerateTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::path(testing::TempDir()) / ("generate_test_" + std::to_string(::getpid())));
    fs::remove_all(*dir_);
    const std::string source = LSTM_SOURCE_DIR;
    TrainOptions options;
    options.settings = load_settings(source + "/configs/tiny.json",
                                     {"data.dir=" + source + "/data/sample", "run_dir=" + (*dir_ / "run").string(),
                                      "train.max_steps=100", "train.threads=1"});
    options.console.quiet = true;
    setup_console_logging(options.console);
    ASSERT_EQ(run_training(options), 0);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }

  void SetUp() override {
    ckpt_ = std::make_unique<LoadedCheckpoint>(load_checkpoint(checkpoint_path()));
  }

  static fs::path checkpoint_path() { return *dir_ / "run" / "checkpoints" / "best.safetensors"; }
  LanguageModel& model() { return *ckpt_->model; }
  const Vocabulary& vocab() { return ckpt_->vocab; }

  static fs::path* dir_;
  std::unique_ptr<LoadedCheckpoint> ckpt_;
};

fs::path* GenerateTest::dir_ = nullptr;

SampleOptions sample_options(std::uint64_t seed, int words, double temperature = 1.0, int top_k = 0) {
  SampleOptions options;
  options.seed = seed;
  options.words = words;
  options.temperature = temperature;
  options.top_k = top_k;
  return options;
}

// ---------------------------------------------------------------------------
// sampling

TEST_F(GenerateTest, SameSeedSameText) {
  const auto prompt = encode_prompt("the", vocab());
  const auto first = sample_words(model(), vocab(), prompt, sample_options(7, 60));
  const auto second = sample_words(model(), vocab(), prompt, sample_options(7, 60));
  EXPECT_EQ(first.size(), 60u);
  EXPECT_EQ(first, second);
}

TEST_F(GenerateTest, DifferentSeedsDiffer) {
  const auto first = sample_words(model(), vocab(), {}, sample_options(7, 60));
  const auto second = sample_words(model(), vocab(), {}, sample_options(8, 60));
  EXPECT_NE(first, second);
}

// top_k = 1 must take the argmax at every step. The reference feeds the
// prompt and the sampled words as one window through model_forward and reads
// the argmax of each step's logits.
TEST_F(GenerateTest, TopKOneIsGreedy) {
  const auto prompt = encode_prompt("the forecast for", vocab());
  const int words = 30;
  const auto sampled = sample_words(model(), vocab(), prompt, sample_options(3, words, 0.7, 1));
  ASSERT_EQ(sampled.size(), static_cast<std::size_t>(words));

  std::vector<TokenId> sequence = prompt;
  sequence.insert(sequence.end(), sampled.begin(), sampled.end());
  const int steps = static_cast<int>(sequence.size()) - 1;  // the last sampled word is never fed
  Workspace ws(model().config(), 1, steps);
  for (int t = 0; t < steps; ++t) {
    ws.inputs[t] = sequence[t];
    ws.targets[t] = sequence[t + 1];
  }
  model_forward(model(), ws, steps, /*training=*/false, nullptr);
  for (int i = 0; i < words; ++i) {
    const int column = static_cast<int>(prompt.size()) - 1 + i;
    Eigen::Index argmax = 0;
    ws.logits.col(column).maxCoeff(&argmax);
    EXPECT_EQ(sampled[i], static_cast<TokenId>(argmax)) << "word " << i;
  }
}

// Sampling reads ws.logits after model_forward, so they must be the full
// decoder output W^T h + b, bias included.
TEST_F(GenerateTest, ForwardLeavesBiasedLogits) {
  const auto prompt = encode_prompt("the forecast for", vocab());
  const int steps = static_cast<int>(prompt.size());
  Workspace ws(model().config(), 1, steps);
  std::copy(prompt.begin(), prompt.end(), ws.inputs.begin());
  model_forward(model(), ws, steps, /*training=*/false, nullptr);

  const Eigen::VectorXd h = ws.layers.back().last_h(steps).col(0).cast<double>();
  const Eigen::VectorXd expected = model().decoder_weight().cast<double>().transpose() * h +
                                   model().decoder_bias().col(0).cast<double>();
  for (Eigen::Index v = 0; v < expected.size(); ++v) {
    EXPECT_NEAR(ws.logits(v, steps - 1), expected(v), 1e-4 * (1.0 + std::abs(expected(v)))) << "word " << v;
  }
}

TEST_F(GenerateTest, ZeroWordsSampleNothing) {
  EXPECT_TRUE(sample_words(model(), vocab(), {}, sample_options(1, 0)).empty());
}

TEST(SampleOptionsCheck, TemperatureMustBePositive) {
  for (const double temperature : {0.0, -1.5, std::nan(""), std::numeric_limits<double>::infinity()}) {
    try {
      validate_sample_options(sample_options(1, 10, temperature));
      ADD_FAILURE() << "temperature " << temperature << " accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("--temperature"), std::string::npos) << e.what();
    }
  }
  try {
    validate_sample_options(sample_options(1, 10, -1.5));
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("-1.5"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(validate_sample_options(sample_options(1, 10, 0.01)));
}

TEST(SampleOptionsCheck, NegativeTopKRejected) {
  EXPECT_THROW(validate_sample_options(sample_options(1, 10, 1.0, -1)), ConfigError);
  EXPECT_NO_THROW(validate_sample_options(sample_options(1, 10, 1.0, 0)));
}

// Frequencies of 20000 draws against softmax(logits / T), restricted to the top k.
TEST(DrawWord, FrequenciesFollowSoftmax) {
  const std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), -1.0f, std::log(4.0f)};
  const int draws = 20000;
  struct Case {
    double temperature;
    int top_k;
  };
  for (const Case c : {Case{1.0, 0}, Case{0.5, 0}, Case{2.0, 3}}) {
    std::vector<double> expected(logits.size(), 0.0);
    std::vector<std::size_t> order = {4, 2, 1, 0, 3};  // by decreasing logit
    const std::size_t candidate_count = c.top_k > 0 ? static_cast<std::size_t>(c.top_k) : logits.size();
    double total = 0.0;
    for (std::size_t i = 0; i < candidate_count; ++i) {
      expected[order[i]] = std::exp(logits[order[i]] / c.temperature);
      total += expected[order[i]];
    }
    Rng rng(99);
    std::vector<int> counts(logits.size(), 0);
    for (int n = 0; n < draws; ++n) {
      ++counts[draw_word(logits.data(), static_cast<int>(logits.size()), c.temperature, c.top_k, rng)];
    }
    for (std::size_t v = 0; v < logits.size(); ++v) {
      const double p = expected[v] / total;
      const double tolerance = 4.0 * std::sqrt(p * (1.0 - p) / draws) + 1e-12;  // 4 standard errors
      EXPECT_NEAR(static_cast<double>(counts[v]) / draws, p, tolerance)
          << "word " << v << ", temperature " << c.temperature << ", top_k " << c.top_k;
    }
  }
}

TEST(DrawWord, TopKOnePicksLowestIdOnTies) {
  const std::vector<float> logits = {1.0f, 3.0f, 3.0f, 2.0f};
  Rng rng(1);
  for (int n = 0; n < 10; ++n) EXPECT_EQ(draw_word(logits.data(), 4, 1.0, 1, rng), 1);
}

// ---------------------------------------------------------------------------
// prompt and output text

TEST_F(GenerateTest, OovPromptNamesEveryWord) {
  try {
    encode_prompt("the zzqx forecast yyqw zzqx", vocab());
    FAIL() << "out-of-vocabulary prompt accepted";
  } catch (const ConfigError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("\"zzqx\""), std::string::npos) << message;
    EXPECT_NE(message.find("\"yyqw\""), std::string::npos) << message;
    EXPECT_EQ(message.find("\"the\""), std::string::npos) << message;
  }
}

TEST_F(GenerateTest, PromptSplitsOnWhitespace) {
  const auto ids = encode_prompt("  the\tforecast  ", vocab());
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(vocab().word(ids[0]), "the");
  EXPECT_EQ(vocab().word(ids[1]), "forecast");
  EXPECT_TRUE(encode_prompt("   ", vocab()).empty());
}

TEST_F(GenerateTest, EosPrintsAsLineBreak) {
  const TokenId the = vocab().find("the"), eos = vocab().find(kEndOfSentence), night = vocab().find("night");
  ASSERT_GE(the, 0);
  ASSERT_GE(eos, 0);
  ASSERT_GE(night, 0);
  EXPECT_EQ(format_words({the, night, eos, night, the}, vocab()), "the night\nnight the\n");
  EXPECT_EQ(format_words({the, eos}, vocab()), "the\n");
  EXPECT_EQ(format_words({eos, the}, vocab()), "\nthe\n");
  EXPECT_EQ(format_words({}, vocab()), "");
}

// ---------------------------------------------------------------------------
// scoring

TEST_F(GenerateTest, ScorePerplexityMatchesEvaluate) {
  const fs::path file = *dir_ / "score.txt";
  write_bytes(file, "the forecast for ashford says wind in the night\n\nthe mice waited in the river\n"
                    "the bridge repairs was the main topic at the meeting in greenfield");
  const TokenizedText text = read_tokens(file);
  const ScoreResult result = score_sentences(model(), vocab(), text, "", 4);

  ASSERT_EQ(result.sentences.size(), 3u);
  EXPECT_EQ(result.sentences[0].line, 1);
  EXPECT_EQ(result.sentences[1].line, 3);
  EXPECT_EQ(result.sentences[2].line, 4);
  EXPECT_EQ(result.sentences[0].tokens, 10);  // 9 words and <eos>
  EXPECT_EQ(result.sentences[1].tokens, 7);
  EXPECT_EQ(result.sentences[2].tokens, 13);
  double log_prob = 0.0;
  std::int64_t tokens = 0;
  for (const auto& sentence : result.sentences) {
    EXPECT_LT(sentence.log_prob, 0.0);
    log_prob += sentence.log_prob;
    tokens += sentence.tokens;
  }
  EXPECT_EQ(result.tokens, tokens);
  EXPECT_EQ(result.tokens, static_cast<std::int64_t>(text.tokens.size()));
  EXPECT_NEAR(result.log_prob, log_prob, 1e-9 * std::abs(log_prob));
  EXPECT_NEAR(result.perplexity(), std::exp(-log_prob / static_cast<double>(tokens)), 1e-9 * result.perplexity());

  // evaluate() with one stream over "<eos>" + the file scores the same predictions.
  std::vector<TokenId> ids = {vocab().find(kEndOfSentence)};
  const EncodedText encoded = encode(text, vocab(), "");
  ids.insert(ids.end(), encoded.ids.begin(), encoded.ids.end());
  Workspace ws(model().config(), 1, 35);
  const EvalResult reference = evaluate(model(), ws, ids);
  EXPECT_EQ(reference.tokens, result.tokens);
  EXPECT_NEAR(result.perplexity(), reference.perplexity(), 1e-4 * reference.perplexity());

  // The window length does not change the result.
  const ScoreResult one_window = score_sentences(model(), vocab(), text, "", 64);
  EXPECT_NEAR(one_window.log_prob, result.log_prob, 1e-5 * std::abs(result.log_prob));
}

TEST_F(GenerateTest, ScoreOovWithoutUnkNamesWordAndLine) {
  const fs::path file = *dir_ / "score_oov.txt";
  write_bytes(file, "the forecast\nthe zzqx forecast\n");
  try {
    score_sentences(model(), vocab(), read_tokens(file), "", 35);
    FAIL() << "out-of-vocabulary word accepted without data.unk_token";
  } catch (const DataError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("\"zzqx\""), std::string::npos) << message;
    EXPECT_NE(message.find("line 2"), std::string::npos) << message;
  }
}

TEST_F(GenerateTest, ScoreOovMapsToUnkToken) {
  ASSERT_GE(vocab().find("<unk>"), 0);
  const fs::path file = *dir_ / "score_unk.txt";
  write_bytes(file, "the zzqx forecast\n");
  const ScoreResult result = score_sentences(model(), vocab(), read_tokens(file), "<unk>", 35);
  EXPECT_EQ(result.unk_mapped, 1);
  EXPECT_EQ(result.tokens, 4);
}

TEST_F(GenerateTest, ScoreEmptyFileRejected) {
  const fs::path file = *dir_ / "score_empty.txt";
  write_bytes(file, "\n\n");
  EXPECT_THROW(score_sentences(model(), vocab(), read_tokens(file), "", 35), DataError);
}

// ---------------------------------------------------------------------------
// lstm-generate command line

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};

CommandResult run_generate(const std::string& arguments, const fs::path& dir) {
  const fs::path binary = fs::path(LSTM_BINARY_DIR) / "bin" / "lstm-generate";
  const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string command = "'" + binary.string() + "' --threads 1 " + arguments + " > '" + out.string() +
                              "' 2> '" + err.string() + "'";
  const int status = std::system(command.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_bytes(out), read_bytes(err)};
}

TEST_F(GenerateTest, CliSameSeedSameText) {
  ASSERT_TRUE(fs::exists(fs::path(LSTM_BINARY_DIR) / "bin" / "lstm-generate")) << "build lstm-generate first";
  const std::string arguments =
      "--checkpoint '" + (*dir_ / "run").string() + "' --words 40 --seed 5 --prompt 'the'";
  const CommandResult first = run_generate(arguments, *dir_);
  const CommandResult second = run_generate(arguments, *dir_);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_FALSE(first.out.empty());
  EXPECT_EQ(first.out, second.out);

  // The text is the library's sample, formatted.
  const auto expected = sample_words(model(), vocab(), encode_prompt("the", vocab()), sample_options(5, 40));
  EXPECT_EQ(first.out, format_words(expected, vocab()));
}

TEST_F(GenerateTest, CliRejectsZeroTemperature) {
  const CommandResult result =
      run_generate("--checkpoint '" + checkpoint_path().string() + "' --temperature 0", *dir_);
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("invalid --temperature 0"), std::string::npos) << result.err;
}

TEST_F(GenerateTest, CliScorePrintsLinesAndPerplexity) {
  const fs::path file = *dir_ / "cli_score.txt";
  write_bytes(file, "the forecast for ashford\nthe mice waited\n");
  const CommandResult result = run_generate("--checkpoint '" + checkpoint_path().string() + "' --score '" +
                                                file.string() + "'",
                                            *dir_);
  ASSERT_EQ(result.exit_code, 0) << result.err;
  std::stringstream lines(result.out);
  std::string header, first, second, total;
  std::getline(lines, header);
  std::getline(lines, first);
  std::getline(lines, second);
  std::getline(lines, total);
  EXPECT_EQ(header, "line\tlog_prob\ttokens");
  EXPECT_EQ(first.substr(0, 2), "1\t");
  EXPECT_EQ(first.substr(first.rfind('\t')), "\t5");
  EXPECT_EQ(second.substr(0, 2), "2\t");
  EXPECT_EQ(second.substr(second.rfind('\t')), "\t4");
  EXPECT_EQ(total.rfind("perplexity ", 0), 0u) << total;
}

}  // namespace
}  // namespace lstm

// Model-level behaviour: the loss op, evaluation with carried state, the
// stream batcher, gradient clipping, dropout masks and initialization.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/batcher.h"
#include "layers/recurrent.h"
#include "model/model.h"
#include "ops/softmax_cross_entropy.h"
#include "tensor/packed_gemm.h"
#include "test_support.h"
#include "train/evaluate.h"
#include "train/optimizer.h"
#include "util/error.h"

namespace lstm {
namespace {

using test::cell_test_name;
using test::fill_uniform;
using test::kAllCells;
using test::make_config;
using test::random_ids;

// Loss of each column of logits, computed in double by the shifted
// log-sum-exp, as the reference for the float op.
std::vector<double> reference_losses(const Matrix& logits, const std::vector<TokenId>& targets) {
  std::vector<double> losses;
  for (Eigen::Index j = 0; j < logits.cols(); ++j) {
    const double max_logit = logits.col(j).cast<double>().maxCoeff();
    double sum = 0.0;
    for (Eigen::Index v = 0; v < logits.rows(); ++v) sum += std::exp(logits(v, j) - max_logit);
    losses.push_back(std::log(sum) + max_logit - logits(targets[j], j));
  }
  return losses;
}

// ---------------------------------------------------------------------------
// softmax_cross_entropy

TEST(SoftmaxCrossEntropy, MatchesDoubleReference) {
  constexpr double kRelTol = 1e-5;
  constexpr int kVocab = 13, kColumns = 6;
  Rng rng(1);
  Matrix logits(kVocab, kColumns);
  fill_uniform(logits, rng, 3.0f);
  const auto targets = random_ids(kColumns, kVocab, rng);
  const Matrix original = logits;
  const auto expected = reference_losses(logits, targets);

  std::vector<float> losses(kColumns);
  softmax_cross_entropy(logits, nullptr, targets.data(), losses.data(), std::nullopt);

  for (int j = 0; j < kColumns; ++j) {
    EXPECT_NEAR(losses[j], expected[j], kRelTol * std::abs(expected[j])) << "column " << j;
  }
  EXPECT_EQ(0, std::memcmp(logits.data(), original.data(), sizeof(float) * logits.size()))
      << "logits changed although no gradient was requested";
}

TEST(SoftmaxCrossEntropy, GradientIsScaledSoftmaxMinusOneHot) {
  constexpr double kAbsTol = 1e-6;  // on gradient entries of size up to kScale
  constexpr float kScale = 0.25f;
  constexpr int kVocab = 11, kColumns = 5;
  Rng rng(2);
  Matrix logits(kVocab, kColumns);
  fill_uniform(logits, rng, 3.0f);
  const auto targets = random_ids(kColumns, kVocab, rng);
  const Matrix original = logits;
  const auto expected_losses = reference_losses(original, targets);

  std::vector<float> losses(kColumns);
  softmax_cross_entropy(logits, nullptr, targets.data(), losses.data(), kScale);

  for (int j = 0; j < kColumns; ++j) {
    EXPECT_NEAR(losses[j], expected_losses[j], 1e-5 * std::abs(expected_losses[j]))
        << "column " << j;
    const double max_logit = original.col(j).cast<double>().maxCoeff();
    double sum = 0.0;
    for (int v = 0; v < kVocab; ++v) sum += std::exp(original(v, j) - max_logit);
    double column_sum = 0.0;
    for (int v = 0; v < kVocab; ++v) {
      const double probability = std::exp(original(v, j) - max_logit) / sum;
      const double expected = kScale * (probability - (v == targets[j] ? 1.0 : 0.0));
      EXPECT_NEAR(logits(v, j), expected, kAbsTol) << "row " << v << ", column " << j;
      column_sum += logits(v, j);
    }
    EXPECT_NEAR(column_sum, 0.0, kAbsTol) << "gradient column " << j << " does not sum to 0";
  }
}

TEST(SoftmaxCrossEntropy, WideVocabularyMatchesDoubleReference) {
  // Wide enough for the vectorized passes and a tail, and with logits spread
  // far enough that some probabilities underflow to zero.
  constexpr double kRelTol = 1e-6;
  constexpr float kScale = 0.5f;
  constexpr int kVocab = 1003, kColumns = 4;
  const float spreads[kColumns] = {1.0f, 10.0f, 60.0f, 200.0f};
  Rng rng(22);
  Matrix logits(kVocab, kColumns);
  for (int j = 0; j < kColumns; ++j) {
    Matrix column(kVocab, 1);
    fill_uniform(column, rng, spreads[j]);
    logits.col(j) = column;
  }
  const auto targets = random_ids(kColumns, kVocab, rng);
  const Matrix original = logits;
  const auto expected_losses = reference_losses(original, targets);

  std::vector<float> eval_losses(kColumns);
  Matrix untouched = logits;
  softmax_cross_entropy(untouched, nullptr, targets.data(), eval_losses.data(), std::nullopt);
  std::vector<float> losses(kColumns);
  softmax_cross_entropy(logits, nullptr, targets.data(), losses.data(), kScale);

  for (int j = 0; j < kColumns; ++j) {
    EXPECT_NEAR(losses[j], expected_losses[j], 1e-5 * std::max(1.0, std::abs(expected_losses[j]))) << "column " << j;
    EXPECT_EQ(losses[j], eval_losses[j]) << "column " << j << ": evaluation and training losses differ";
    // The shifted logits as the op computes them (a float subtraction, off by
    // up to half an ulp of the logit), so that the comparison tests the exp.
    const float max_logit = original.col(j).maxCoeff();
    std::vector<double> exps(kVocab);
    double sum = 0.0;
    for (int v = 0; v < kVocab; ++v) sum += exps[v] = std::exp(static_cast<double>(original(v, j) - max_logit));
    for (int v = 0; v < kVocab; ++v) {
      const double probability = exps[v] / sum;
      const double expected = kScale * (probability - (v == targets[j] ? 1.0 : 0.0));
      // Relative to the probability and to the entry, with a floor at the
      // smallest normal float, where the op flushes to zero.
      EXPECT_NEAR(logits(v, j), expected, kRelTol * (kScale * probability + std::abs(expected)) + 1.2e-38)
          << "row " << v << ", column " << j;
    }
  }
}

TEST(SoftmaxCrossEntropy, BiasAddedToEveryColumn) {
  constexpr double kRelTol = 1e-5;
  constexpr double kAbsTol = 1e-6;  // on gradient entries of size up to 1
  constexpr int kVocab = 9, kColumns = 5;
  Rng rng(21);
  Matrix logits(kVocab, kColumns);
  fill_uniform(logits, rng, 3.0f);
  Vector bias(kVocab);
  fill_uniform(bias, rng, 2.0f);
  const auto targets = random_ids(kColumns, kVocab, rng);
  const Matrix biased = logits.colwise() + bias;
  const auto expected = reference_losses(biased, targets);

  Matrix unbiased_gradient = biased;
  std::vector<float> unbiased_losses(kColumns);
  softmax_cross_entropy(unbiased_gradient, nullptr, targets.data(), unbiased_losses.data(), 1.0f);
  std::vector<float> losses(kColumns);
  softmax_cross_entropy(logits, bias.data(), targets.data(), losses.data(), 1.0f);

  for (int j = 0; j < kColumns; ++j) {
    EXPECT_NEAR(losses[j], expected[j], kRelTol * std::abs(expected[j])) << "column " << j;
  }
  EXPECT_LE((logits - unbiased_gradient).cwiseAbs().maxCoeff(), kAbsTol)
      << "the gradient with a bias differs from the gradient of the pre-biased logits";
}

// Maxima handed over by the product's epilogue (PackedMatrix::multiply_logits)
// replace the softmax's own pass for them and change no bit of the result.
TEST(SoftmaxCrossEntropy, GivenColumnMaximaGiveTheSameBits) {
  constexpr int kVocab = 1003, kColumns = 6, kLanes = PackedMatrix::kMaxLanes;
  Rng rng(23);
  Matrix logits(kVocab, kColumns);
  fill_uniform(logits, rng, 8.0f);
  const auto targets = random_ids(kColumns, kVocab, rng);
  // Each column's maximum sits in a different lane, the rest below it.
  std::vector<float> lanes(static_cast<std::size_t>(kColumns) * kLanes);
  for (int j = 0; j < kColumns; ++j) {
    for (int l = 0; l < kLanes; ++l) lanes[j * kLanes + l] = logits.col(j).minCoeff() - static_cast<float>(l);
    lanes[j * kLanes + j % kLanes] = logits.col(j).maxCoeff();
  }
  for (const std::optional<float> scale : {std::optional<float>(), std::optional<float>(0.25f)}) {
    Matrix own = logits, given = logits;
    std::vector<float> own_losses(kColumns), given_losses(kColumns);
    softmax_cross_entropy(own, nullptr, targets.data(), own_losses.data(), scale);
    softmax_cross_entropy(given, nullptr, targets.data(), given_losses.data(), scale, Threads::kAll, lanes.data());
    EXPECT_EQ(given_losses, own_losses) << (scale ? "training" : "evaluation");
    EXPECT_EQ(std::memcmp(given.data(), own.data(), sizeof(float) * own.size()), 0)
        << (scale ? "training" : "evaluation");
  }
}

// The AVX-512 passes compute each exp as the AVX2 ones do and add the
// vectors of 8 in the same order, so losses and gradients keep every bit.
TEST(SoftmaxCrossEntropy, Avx512PassesGiveTheAvx2Bits) {
  if (!avx512_kernel_available()) {
    GTEST_SKIP() << "this build has no AVX-512 kernel (the CPU lacks AVX-512F, or the build is portable)";
  }
  // 1003 leaves a remainder after the 32-float blocks and a tail of 3. The
  // spread of 100 sends some exps below the smallest normal float.
  constexpr int kVocab = 1003, kColumns = 5;
  Rng rng(29);
  Matrix logits(kVocab, kColumns);
  fill_uniform(logits, rng, 100.0f);
  const auto targets = random_ids(kColumns, kVocab, rng);
  for (const std::optional<float> scale : {std::optional<float>(), std::optional<float>(0.25f)}) {
    Matrix avx2 = logits, avx512 = logits;
    std::vector<float> avx2_losses(kColumns), avx512_losses(kColumns);
    set_avx512_kernels(false);
    softmax_cross_entropy(avx2, nullptr, targets.data(), avx2_losses.data(), scale);
    set_avx512_kernels(true);
    softmax_cross_entropy(avx512, nullptr, targets.data(), avx512_losses.data(), scale);
    EXPECT_EQ(avx512_losses, avx2_losses) << (scale ? "training" : "evaluation");
    EXPECT_EQ(std::memcmp(avx512.data(), avx2.data(), sizeof(float) * avx2.size()), 0)
        << (scale ? "training" : "evaluation");
  }
}

TEST(SoftmaxCrossEntropy, HugeLogitsStayFinite) {
  // Relative to the reference, with an absolute floor of the same size for
  // losses near zero, plus one float ulp of the largest logit. The op adds the
  // maximum logit back before it subtracts the target's, and that sum rounds
  // to the ulp of 1e4 (2^-10).
  constexpr double kRelTol = 1e-5;
  constexpr int kVocab = 13, kColumns = 4;
  Rng rng(3);
  Matrix logits(kVocab, kColumns);
  fill_uniform(logits, rng, 1e4f);
  std::vector<TokenId> targets = random_ids(kColumns, kVocab, rng);
  logits.col(1).setConstant(1e4f);   // every exp(z) overflows without the shift
  logits.col(2).setConstant(-1e4f);  // every exp(z) underflows without the shift
  Eigen::Index argmax = 0;
  logits.col(3).maxCoeff(&argmax);
  targets[3] = static_cast<TokenId>(argmax);  // loss near zero
  const auto expected = reference_losses(logits, targets);
  std::vector<double> ulps;
  for (int j = 0; j < kColumns; ++j) {
    const float largest = logits.col(j).cwiseAbs().maxCoeff();
    ulps.push_back(std::nextafter(largest, 2.0f * largest) - largest);
  }

  std::vector<float> losses(kColumns);
  softmax_cross_entropy(logits, nullptr, targets.data(), losses.data(), 1.0f);

  for (int j = 0; j < kColumns; ++j) {
    ASSERT_TRUE(std::isfinite(losses[j])) << "column " << j << " loss " << losses[j];
    EXPECT_NEAR(losses[j], expected[j], kRelTol * std::max(1.0, std::abs(expected[j])) + ulps[j])
        << "column " << j;
  }
  EXPECT_TRUE(logits.allFinite()) << "gradient has inf or NaN";
  for (int j = 0; j < kColumns; ++j) {
    EXPECT_NEAR(logits.col(j).cast<double>().sum(), 0.0, 1e-6) << "gradient column " << j;
  }
}

// ---------------------------------------------------------------------------
// Evaluation

struct SplitCase {
  int tokens;
  int batch;
  int bptt;
};

// Lengths, stream counts and windows, including a short last window
// (103 tokens, 3 streams, bptt 7: 33 positions = 4 * 7 + 5), one window longer
// than the split, and windows of one step.
constexpr SplitCase kSplitCases[] = {
    {103, 3, 7}, {60, 1, 35}, {200, 4, 1}, {64, 5, 9}, {41, 2, 40},
};

std::int64_t expected_scored_tokens(const SplitCase& split) {
  return (static_cast<std::int64_t>(split.tokens / split.batch) - 1) * split.batch;
}

class ZeroDecoder : public testing::TestWithParam<CellType> {};

TEST_P(ZeroDecoder, PerplexityEqualsVocabularySize) {
  // A zero decoder gives equal logits, so every token costs exactly log(V).
  constexpr double kRelTol = 1e-4;
  constexpr int kVocab = 17;
  ModelConfig config = make_config(GetParam(), kVocab, 6, 5, 2);
  LanguageModel model(config);
  Rng rng(4);
  model.initialize(rng);
  model.decoder_weight().setZero();
  model.decoder_bias().setZero();

  for (const SplitCase& split : kSplitCases) {
    SCOPED_TRACE("tokens " + std::to_string(split.tokens) + ", batch " +
                 std::to_string(split.batch) + ", bptt " + std::to_string(split.bptt));
    const auto ids = random_ids(split.tokens, kVocab, rng);
    Workspace ws(config, split.batch, split.bptt);
    const EvalResult result = evaluate(model, ws, ids);
    EXPECT_EQ(result.tokens, expected_scored_tokens(split));
    EXPECT_NEAR(result.perplexity(), kVocab, kRelTol * kVocab);
  }
}

INSTANTIATE_TEST_SUITE_P(Cells, ZeroDecoder, testing::ValuesIn(kAllCells), cell_test_name);

class EvaluationWindows : public testing::TestWithParam<CellType> {};

TEST_P(EvaluationWindows, LossesIndependentOfBptt) {
  // Only the grouping of columns in the matrix products changes with bptt.
  constexpr double kAbsTol = 1e-5;
  constexpr int kVocab = 23, kTokens = 157, kBatch = 4;
  constexpr int kBptts[] = {1, 3, 7, 35};
  const ModelConfig config = make_config(GetParam(), kVocab, 6, 5, 2);
  LanguageModel model(config);
  Rng rng(5);
  // Large uniform weights make each loss depend strongly on the carried state.
  fill_uniform(model.params().values(), rng, 0.5f);
  const auto ids = random_ids(kTokens, kVocab, rng);
  const std::int64_t expected_tokens = (kTokens / kBatch - 1) * kBatch;

  std::vector<float> reference;
  for (int bptt : kBptts) {
    SCOPED_TRACE("bptt " + std::to_string(bptt));
    Workspace ws(config, kBatch, bptt);
    std::vector<float> losses;
    const EvalResult result = evaluate(model, ws, ids, &losses);
    ASSERT_EQ(result.tokens, expected_tokens);
    ASSERT_EQ(static_cast<std::int64_t>(losses.size()), expected_tokens);
    double sum = 0.0;
    for (float loss : losses) sum += loss;
    EXPECT_NEAR(result.loss_sum, sum, 1e-9 * std::abs(sum) + 1e-9)
        << "loss_sum is not the sum of the per-token losses";
    if (reference.empty()) {
      reference = losses;
      continue;
    }
    for (std::size_t i = 0; i < losses.size(); ++i) {
      EXPECT_NEAR(losses[i], reference[i], kAbsTol)
          << "token " << i << " (stream " << i / (kTokens / kBatch - 1) << ")";
    }
  }

  // The check above means something only if the state matters: restarting
  // from a zero state at every token must change some losses.
  const StreamBatcher batcher(&ids, kBatch);
  Workspace ws(config, kBatch, 1);
  double largest_change = 0.0;
  for (std::int64_t position = 0; position < batcher.positions(); ++position) {
    reset_state(ws);
    batcher.fill(position, 1, ws.inputs.data(), ws.targets.data());
    model_forward(model, ws, 1, /*training=*/false, nullptr);
    for (int b = 0; b < kBatch; ++b) {
      const double change = std::abs(ws.column_loss[b] - reference[b * batcher.positions() + position]);
      largest_change = std::max(largest_change, change);
    }
  }
  EXPECT_GT(largest_change, 100 * kAbsTol) << "the carried state does not affect the losses";
}

INSTANTIATE_TEST_SUITE_P(Cells, EvaluationWindows, testing::ValuesIn(kAllCells), cell_test_name);

class EvaluationWorkspace : public testing::TestWithParam<CellType> {};

TEST_P(EvaluationWorkspace, SameLossesInLessMemoryAndNoBackward) {
  constexpr int kVocab = 19, kTokens = 121, kBatch = 3, kBptt = 5;
  ModelConfig config = make_config(GetParam(), kVocab, 6, 5, 2);
  config.dropout = 0.3f;
  LanguageModel model(config);
  Rng rng(8);
  model.initialize(rng);
  const auto ids = random_ids(kTokens, kVocab, rng);

  Workspace training_ws(config, kBatch, kBptt);
  Workspace eval_ws(config, kBatch, kBptt, WorkspaceUse::kEvaluation);
  std::vector<float> training_losses, eval_losses;
  const EvalResult from_training = evaluate(model, training_ws, ids, &training_losses);
  const EvalResult from_eval = evaluate(model, eval_ws, ids, &eval_losses);
  EXPECT_EQ(from_eval.tokens, from_training.tokens);
  EXPECT_EQ(from_eval.loss_sum, from_training.loss_sum);
  EXPECT_EQ(eval_losses, training_losses);

  // Without the backward buffers (gate gradients, dropout masks, dL/dh) the
  // workspace must be clearly smaller.
  EXPECT_LT(workspace_bytes(eval_ws), workspace_bytes(training_ws) * 3 / 4)
      << workspace_bytes(eval_ws) << " of " << workspace_bytes(training_ws) << " bytes";

  StreamBatcher batcher(&ids, kBatch);
  batcher.fill(0, kBptt, eval_ws.inputs.data(), eval_ws.targets.data());
  EXPECT_THROW(model_forward(model, eval_ws, kBptt, /*training=*/true, &rng), std::logic_error);
  model_forward(model, eval_ws, kBptt, /*training=*/false, nullptr);
  EXPECT_THROW(model_backward(model, eval_ws, kBptt), std::logic_error);
}

// An evaluation workspace packs the weights once per pass, and evaluate()
// starts each pass with reset_state(). So a pass after the weights changed
// must see the new weights, as a fresh workspace does.
TEST_P(EvaluationWorkspace, PassAfterWeightChangeUsesNewWeights) {
  constexpr int kVocab = 23, kTokens = 401, kBatch = 4, kBptt = 9;  // 36 columns: the packed decoder
  static_assert(kBatch * kBptt >= kPackedDecoderColumns);
  const ModelConfig config = make_config(GetParam(), kVocab, 6, 5, 2);
  LanguageModel model(config);
  Rng rng(9);
  model.initialize(rng);
  const auto ids = random_ids(kTokens, kVocab, rng);

  Workspace reused(config, kBatch, kBptt, WorkspaceUse::kEvaluation);
  const EvalResult before = evaluate(model, reused, ids);
  model.params().values() *= 1.5f;
  const EvalResult after = evaluate(model, reused, ids);
  Workspace fresh(config, kBatch, kBptt, WorkspaceUse::kEvaluation);
  const EvalResult want = evaluate(model, fresh, ids);
  EXPECT_EQ(after.loss_sum, want.loss_sum);
  EXPECT_NE(after.loss_sum, before.loss_sum) << "scaling the weights did not change the loss";
}

// A window too narrow for the packed decoder (generation feeds one token) must
// not leave a wider window after it with an unpacked W^T.
TEST_P(EvaluationWorkspace, NarrowWindowThenWideWindow) {
  constexpr int kVocab = 23, kSteps = 40;
  static_assert(kSteps >= kPackedDecoderColumns);
  const ModelConfig config = make_config(GetParam(), kVocab, 6, 5, 2);
  LanguageModel model(config);
  Rng rng(10);
  model.initialize(rng);
  const auto ids = random_ids(kSteps + 2, kVocab, rng);

  // The same two windows on an evaluation workspace and on a training one,
  // which packs at every window.
  std::vector<float> losses[2];
  Workspace evaluation(config, 1, kSteps, WorkspaceUse::kEvaluation);
  Workspace training(config, 1, kSteps);
  Workspace* workspaces[2] = {&evaluation, &training};
  for (int w = 0; w < 2; ++w) {
    Workspace& ws = *workspaces[w];
    reset_state(ws);
    ws.inputs[0] = ids[0];
    ws.targets[0] = ids[1];
    model_forward(model, ws, 1, /*training=*/false, nullptr);
    losses[w].push_back(ws.column_loss[0]);
    carry_state(ws, 1);
    std::copy(ids.begin() + 1, ids.begin() + 1 + kSteps, ws.inputs.begin());
    std::copy(ids.begin() + 2, ids.end(), ws.targets.begin());
    model_forward(model, ws, kSteps, /*training=*/false, nullptr);
    losses[w].insert(losses[w].end(), ws.column_loss.data(), ws.column_loss.data() + kSteps);
  }
  EXPECT_EQ(losses[0], losses[1]);
}

INSTANTIATE_TEST_SUITE_P(Cells, EvaluationWorkspace, testing::ValuesIn(kAllCells), cell_test_name);

// With two threads, an LSTM whose Wh is over 4 MiB evaluates with each step
// split by hidden units. Its losses must be those of the split by streams up
// to rounding (Eigen's logistic rounds differently at the ends of a block),
// and the same bits on every pass.
TEST(EvaluationWorkspaceUnitSplit, MatchesStreamSplit) {
  constexpr int kVocab = 31, kTokens = 241, kBatch = 3, kBptt = 7, kHidden = 520;
  set_num_threads(2);
  const ModelConfig config = make_config(CellType::kLstm, kVocab, 8, kHidden, 2);
  LanguageModel model(config);
  Rng rng(11);
  model.initialize(rng);
  const auto ids = random_ids(kTokens, kVocab, rng);

  Workspace by_units(config, kBatch, kBptt, WorkspaceUse::kEvaluation);
  set_unit_split(false);
  Workspace by_streams(config, kBatch, kBptt, WorkspaceUse::kEvaluation);
  set_unit_split(true);
  for (int l = 0; l < 2; ++l) {
    ASSERT_EQ(by_units.layers[l].unit_first.size(), 3u) << "layer " << l << " is not split in two";
    ASSERT_TRUE(by_streams.layers[l].unit_first.empty());
  }

  std::vector<float> by_units_losses, by_streams_losses, again;
  const EvalResult result = evaluate(model, by_units, ids, &by_units_losses);
  evaluate(model, by_streams, ids, &by_streams_losses);
  evaluate(model, by_units, ids, &again);
  EXPECT_EQ(again, by_units_losses);
  ASSERT_EQ(by_units_losses.size(), by_streams_losses.size());
  ASSERT_EQ(static_cast<std::int64_t>(by_units_losses.size()), result.tokens);
  for (std::size_t i = 0; i < by_units_losses.size(); ++i) {
    EXPECT_NEAR(by_units_losses[i], by_streams_losses[i], 1e-5f * std::max(1.0f, by_streams_losses[i]))
        << "token " << i;
  }
  set_num_threads(0);
}

// ---------------------------------------------------------------------------
// StreamBatcher

TEST(StreamBatcher, StreamsWindowsAndTargets) {
  struct Case {
    int tokens, batch, bptt;
  };
  for (const Case c : {Case{26, 3, 3}, Case{24, 3, 3}, Case{10, 1, 4}, Case{50, 7, 2}}) {
    SCOPED_TRACE("tokens " + std::to_string(c.tokens) + ", batch " + std::to_string(c.batch) +
                 ", bptt " + std::to_string(c.bptt));
    std::vector<TokenId> ids(c.tokens);
    for (int i = 0; i < c.tokens; ++i) ids[i] = 1000 + i;  // a token's id gives its index
    const StreamBatcher batcher(&ids, c.batch);
    const std::int64_t stream_length = c.tokens / c.batch;
    const std::int64_t positions = stream_length - 1;
    EXPECT_EQ(batcher.stream_length(), stream_length);
    EXPECT_EQ(batcher.positions(), positions);
    EXPECT_EQ(batcher.tokens(), positions * c.batch);
    EXPECT_EQ(batcher.num_windows(c.bptt), (positions + c.bptt - 1) / c.bptt);

    std::vector<TokenId> inputs(c.batch * c.bptt, -1), targets(c.batch * c.bptt, -1);
    std::int64_t windows = 0, steps_total = 0;
    for (std::int64_t position = 0; position < positions; position += c.bptt) {
      const int steps = batcher.fill(position, c.bptt, inputs.data(), targets.data());
      const std::int64_t expected_steps = std::min<std::int64_t>(c.bptt, positions - position);
      ASSERT_EQ(steps, expected_steps) << "window at position " << position;
      for (int t = 0; t < steps; ++t) {
        for (int b = 0; b < c.batch; ++b) {
          const TokenId expected = static_cast<TokenId>(1000 + b * stream_length + position + t);
          EXPECT_EQ(inputs[t * c.batch + b], expected) << "step " << t << ", stream " << b;
          EXPECT_EQ(targets[t * c.batch + b], expected + 1) << "step " << t << ", stream " << b;
        }
      }
      ++windows;
      steps_total += steps;
    }
    EXPECT_EQ(windows, batcher.num_windows(c.bptt));
    EXPECT_EQ(steps_total * c.batch, batcher.tokens());
  }
}

TEST(StreamBatcher, LastWindowIsShorter) {
  std::vector<TokenId> ids(26);  // 3 streams of 8 tokens: 7 positions = 3 + 3 + 1
  for (int i = 0; i < 26; ++i) ids[i] = i;
  const StreamBatcher batcher(&ids, 3);
  std::vector<TokenId> inputs(9), targets(9);
  EXPECT_EQ(batcher.fill(0, 3, inputs.data(), targets.data()), 3);
  EXPECT_EQ(batcher.fill(3, 3, inputs.data(), targets.data()), 3);
  EXPECT_EQ(batcher.fill(6, 3, inputs.data(), targets.data()), 1);
  EXPECT_EQ(inputs[0], 6);
  EXPECT_EQ(inputs[1], 14);
  EXPECT_EQ(inputs[2], 22);
  EXPECT_EQ(targets[2], 23);  // tokens 24 and 25 are dropped
}

// ---------------------------------------------------------------------------
// Gradient clipping

Vector random_vector(Eigen::Index size, std::uint64_t seed) {
  Rng rng(seed);
  Vector v(size);
  fill_uniform(v, rng, 1.0f);
  return v;
}

TEST(Clipping, GlobalNormMatchesDouble) {
  constexpr double kRelTol = 1e-12;  // both sum float squares in double
  const Vector grads = random_vector(1001, 6);
  const double expected = std::sqrt(grads.cast<double>().squaredNorm());
  EXPECT_NEAR(global_norm(grads), expected, kRelTol * expected);
}

TEST(Clipping, ScalesToClipNorm) {
  constexpr double kRelTol = 1e-5;
  constexpr double kClip = 0.25;
  Vector grads = random_vector(1000, 7);
  const Vector before = grads;
  const double norm = global_norm(grads);
  ASSERT_GT(norm, kClip);

  EXPECT_TRUE(clip_gradients(grads, norm, kClip));
  EXPECT_NEAR(global_norm(grads), kClip, kRelTol * kClip);
  const double factor = kClip / norm;
  for (Eigen::Index i = 0; i < grads.size(); ++i) {
    EXPECT_NEAR(grads[i], before[i] * factor, 1e-6 * std::abs(before[i] * factor) + 1e-12)
        << "element " << i << " was not scaled by clip_norm / norm";
  }
}

TEST(Clipping, BelowClipNormBitIdentical) {
  Vector grads = random_vector(1000, 8);
  const Vector before = grads;
  const double norm = global_norm(grads);
  EXPECT_FALSE(clip_gradients(grads, norm, 2.0 * norm));
  EXPECT_FALSE(clip_gradients(grads, norm, norm));  // scaling starts above clip_norm
  EXPECT_EQ(0, std::memcmp(grads.data(), before.data(), sizeof(float) * grads.size()));
}

TEST(Clipping, ZeroClipNormDisables) {
  Vector grads = random_vector(1000, 9);
  const Vector before = grads;
  EXPECT_FALSE(clip_gradients(grads, global_norm(grads), 0.0));
  EXPECT_EQ(0, std::memcmp(grads.data(), before.data(), sizeof(float) * grads.size()));
}

// ---------------------------------------------------------------------------
// Dropout

constexpr float kDropout = 0.4f;
constexpr int kDropoutVocab = 50, kDropoutSize = 64, kDropoutBatch = 8, kDropoutSteps = 10;
constexpr int kDropoutColumns = kDropoutBatch * kDropoutSteps;

ModelConfig dropout_config(bool variational) {
  ModelConfig config =
      make_config(CellType::kLstm, kDropoutVocab, kDropoutSize, kDropoutSize, 2);
  config.dropout = kDropout;
  config.variational_dropout = variational;
  return config;
}

void fill_random_window(Workspace& ws, int vocab, Rng& rng) {
  ws.inputs = random_ids(ws.inputs.size(), vocab, rng);
  ws.targets = random_ids(ws.targets.size(), vocab, rng);
}

TEST(Dropout, MaskValuesAndDropRate) {
  // 3 masks of 64 x 80 = 15360 entries: the standard deviation of the dropped
  // fraction is sqrt(0.4 * 0.6 / 15360) = 0.004, so 0.03 is 7.5 of them
  // (4.4 for one mask of 5120 entries).
  constexpr double kRateTol = 0.03;
  const ModelConfig config = dropout_config(false);
  LanguageModel model(config);
  Rng rng(10);
  model.initialize(rng);
  Workspace ws(config, kDropoutBatch, kDropoutSteps);
  fill_random_window(ws, kDropoutVocab, rng);
  Rng dropout_rng(11);
  model_forward(model, ws, kDropoutSteps, /*training=*/true, &dropout_rng);

  ASSERT_TRUE(ws.dropout_active);
  ASSERT_EQ(ws.masks.size(), 3u);
  const float keep_scale = 1.0f / (1.0f - kDropout);
  std::int64_t dropped = 0, total = 0;
  for (std::size_t k = 0; k < ws.masks.size(); ++k) {
    const auto mask = ws.masks[k].leftCols(kDropoutColumns);
    std::int64_t dropped_here = 0, wrong_values = 0;
    for (Eigen::Index j = 0; j < mask.cols(); ++j) {
      for (Eigen::Index i = 0; i < mask.rows(); ++i) {
        if (mask(i, j) == 0.0f) {
          ++dropped_here;
        } else if (mask(i, j) != keep_scale) {
          ++wrong_values;
        }
      }
    }
    EXPECT_EQ(wrong_values, 0) << "mask " << k << " has entries other than 0 and 1/(1-p)";
    EXPECT_NEAR(static_cast<double>(dropped_here) / mask.size(), kDropout, kRateTol)
        << "mask " << k;
    dropped += dropped_here;
    total += mask.size();
  }
  EXPECT_GE(total, 5000);
  EXPECT_NEAR(static_cast<double>(dropped) / total, kDropout, kRateTol);

  // The embedding output is the looked-up vector times its mask.
  for (int j = 0; j < kDropoutColumns; ++j) {
    const Vector expected =
        model.embedding().col(ws.inputs[j]).array() * ws.masks[0].col(j).array();
    EXPECT_TRUE(ws.embedded.col(j) == expected) << "embedding column " << j;
  }
}

TEST(Dropout, EvaluationMatchesNoDropoutModel) {
  // The same arithmetic runs in both models, so the losses must be
  // bit-identical (tolerance 0).
  const ModelConfig config = dropout_config(false);
  LanguageModel model(config);
  Rng rng(12);
  model.initialize(rng);
  Workspace ws(config, kDropoutBatch, kDropoutSteps);
  fill_random_window(ws, kDropoutVocab, rng);

  const double first = model_forward(model, ws, kDropoutSteps, /*training=*/false, nullptr);
  EXPECT_FALSE(ws.dropout_active);
  const Vector first_losses = ws.column_loss;
  const double second = model_forward(model, ws, kDropoutSteps, /*training=*/false, nullptr);
  EXPECT_EQ(first, second);
  EXPECT_TRUE(ws.column_loss == first_losses) << "evaluation is not deterministic";

  ModelConfig plain_config = config;
  plain_config.dropout = 0.0f;
  LanguageModel plain(plain_config);
  plain.params().values() = model.params().values();
  Workspace plain_ws(plain_config, kDropoutBatch, kDropoutSteps);
  plain_ws.inputs = ws.inputs;
  plain_ws.targets = ws.targets;
  const double plain_loss = model_forward(plain, plain_ws, kDropoutSteps, false, nullptr);
  EXPECT_EQ(first, plain_loss);
  EXPECT_TRUE(plain_ws.column_loss == first_losses)
      << "evaluation with dropout configured differs from the model without dropout";

  // Training mode does apply the masks, so its loss differs.
  Rng dropout_rng(13);
  const double training_loss = model_forward(model, ws, kDropoutSteps, true, &dropout_rng);
  EXPECT_NE(training_loss, first);
}

TEST(Dropout, VariationalMaskRepeatsOverSteps) {
  const ModelConfig config = dropout_config(true);
  LanguageModel model(config);
  Rng rng(14);
  model.initialize(rng);
  Workspace ws(config, kDropoutBatch, kDropoutSteps);
  fill_random_window(ws, kDropoutVocab, rng);
  Rng dropout_rng(15);
  model_forward(model, ws, kDropoutSteps, /*training=*/true, &dropout_rng);

  ASSERT_EQ(ws.masks.size(), 3u);
  const float keep_scale = 1.0f / (1.0f - kDropout);
  for (std::size_t k = 0; k < ws.masks.size(); ++k) {
    const Matrix first_step = ws.masks[k].leftCols(kDropoutBatch);
    EXPECT_TRUE(((first_step.array() == 0.0f) || (first_step.array() == keep_scale)).all())
        << "mask " << k << " has entries other than 0 and 1/(1-p)";
    for (int t = 1; t < kDropoutSteps; ++t) {
      EXPECT_TRUE(ws.masks[k].middleCols(t * kDropoutBatch, kDropoutBatch) == first_step)
          << "mask " << k << " changes at step " << t;
    }
    // Each stream draws its own mask.
    EXPECT_FALSE(first_step.col(0) == first_step.col(1)) << "mask " << k;
  }
}

// ---------------------------------------------------------------------------
// Initialization

struct Moments {
  double mean, std;
};

Moments moments_of(const MatrixMap& m) {
  const Eigen::ArrayXd values = Eigen::Map<const Eigen::ArrayXf>(m.data(), m.size()).cast<double>();
  const double mean = values.mean();
  const double variance = (values - mean).square().sum() / static_cast<double>(values.size());
  return {mean, std::sqrt(variance)};
}

TEST(Initialization, BookScales) {
  // Every drawn tensor has at least 6144 entries, where the sample standard
  // deviation has a relative error of 1 / sqrt(2 n) < 0.9%, so 5% is more than
  // 5 of those. The mean must be within 5 standard errors of 0.
  constexpr double kStdRelTol = 0.05;
  constexpr double kMeanSigmas = 5.0;
  constexpr int kVocab = 1000, kEmbedding = 32, kHidden = 48;
  const ModelConfig config = make_config(CellType::kLstm, kVocab, kEmbedding, kHidden, 2);
  LanguageModel model(config);
  Rng rng(16);
  model.initialize(rng);

  struct Expected {
    std::string name;
    double std;
  };
  const std::vector<Expected> drawn = {
      {"embedding.weight", 0.01},
      {"rnn.0.weight_x", 1.0 / std::sqrt(kEmbedding)},
      {"rnn.0.weight_h", 1.0 / std::sqrt(kHidden)},
      {"rnn.1.weight_x", 1.0 / std::sqrt(kHidden)},
      {"rnn.1.weight_h", 1.0 / std::sqrt(kHidden)},
      {"decoder.weight", 1.0 / std::sqrt(kHidden)},
  };
  for (const Expected& e : drawn) {
    const MatrixMap values = model.params().value(e.name);
    const Moments m = moments_of(values);
    EXPECT_NEAR(m.std, e.std, kStdRelTol * e.std) << e.name;
    EXPECT_NEAR(m.mean, 0.0, kMeanSigmas * e.std / std::sqrt(values.size())) << e.name;
  }
  for (const std::string name : {"rnn.0.bias", "rnn.1.bias", "decoder.bias"}) {
    EXPECT_TRUE(model.params().value(name).isZero(0.0f)) << name << " is not all zero";
  }
}

TEST(Initialization, UniformWithinRange) {
  // U(-r, r) has standard deviation r / sqrt(3). The tensors have at least
  // 9216 entries, so the same 5% tolerance as for the book scheme applies.
  // The largest |value| of that many draws is above 0.99 r with
  // probability 1 - 0.99^9216.
  constexpr float kRange = 0.07f;
  constexpr double kStdRelTol = 0.05;
  ModelConfig config = make_config(CellType::kGru, 1000, 32, 48, 2);
  config.init = InitScheme::kUniform;
  config.init_range = kRange;
  LanguageModel model(config);
  Rng rng(17);
  model.initialize(rng);

  for (const std::string name : {"embedding.weight", "rnn.0.weight_x", "rnn.0.weight_h",
                                 "rnn.1.weight_x", "rnn.1.weight_h", "decoder.weight"}) {
    const MatrixMap values = model.params().value(name);
    const float largest = values.cwiseAbs().maxCoeff();
    EXPECT_LE(largest, kRange) << name;
    EXPECT_GT(largest, 0.99f * kRange) << name;
    EXPECT_NEAR(moments_of(values).std, kRange / std::sqrt(3.0), kStdRelTol * kRange / std::sqrt(3.0))
        << name;
  }
  for (const std::string name : {"rnn.0.bias", "rnn.1.bias", "decoder.bias"}) {
    EXPECT_TRUE(model.params().value(name).isZero(0.0f)) << name << " is not all zero";
  }
}

TEST(TiedWeights, SizeMismatchNamesBothSizes) {
  ModelConfig config = make_config(CellType::kLstm, 20, 32, 48, 1);
  config.tie_weights = true;
  try {
    LanguageModel model(config);
    FAIL() << "tie_weights with embedding_size 32 and hidden_size 48 was accepted";
  } catch (const ConfigError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("32"), std::string::npos) << message;
    EXPECT_NE(message.find("48"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace lstm

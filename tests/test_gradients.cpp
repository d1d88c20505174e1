// Numerical gradient checks: the hand-derived backward passes of the
// recurrent layers and of the whole model against central differences of the
// forward pass, on tiny sizes so that every parameter element is checked.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "layers/recurrent.h"
#include "model/model.h"
#include "tensor/gemm.h"
#include "tensor/packed_gemm.h"
#include "test_support.h"

namespace lstm {
namespace {

using test::cell_test_name;
using test::fill_uniform;
using test::kAllCells;
using test::make_config;
using test::random_ids;

// Central-difference step. The loss is computed in float, so its rounding
// noise (about 1e-7 of a loss near 2 nats) divided by 2 * kEps stays near
// 1e-5. The truncation error kEps^2 * f''' / 6 is estimated below 1e-4 relative.
constexpr float kEps = 1e-2f;
// Largest accepted |analytic - numeric| / max(kErrorFloor, |analytic| + |numeric|).
// The floor keeps gradients near zero from turning float noise into a large ratio.
constexpr double kRelTol = 2e-2;
constexpr double kErrorFloor = 1e-3;
// Every checked tensor must have at least one numerical gradient element of
// this size, so a check cannot pass by comparing zeros with zeros.
constexpr double kMinSignal = 1e-4;

// rnn_relu is not differentiable where a pre-activation is 0. An element whose
// +kEps and -kEps evaluations switch some unit between active and inactive
// straddles such a kink, so its central difference is skipped. At most this
// fraction of the elements of one test may be skipped.
constexpr double kMaxKinkFraction = 0.25;

// Activity flags (h > 0), one per element of each matrix appended.
using ActivationPattern = std::vector<bool>;

void append_pattern(ActivationPattern& pattern, const ConstMatRef& outputs) {
  for (Eigen::Index j = 0; j < outputs.cols(); ++j) {
    for (Eigen::Index i = 0; i < outputs.rows(); ++i) pattern.push_back(outputs(i, j) > 0.0f);
  }
}

double relative_error(double analytic, double numeric) {
  return std::abs(analytic - numeric) /
         std::max(kErrorFloor, std::abs(analytic) + std::abs(numeric));
}

// Compares analytic[i] with the central difference of loss() in values[i] for
// i < count, and reports the worst element of the tensor. pattern() returns
// the activation pattern of the last loss() call (empty for smooth cells).
// Returns the number of elements skipped at a ReLU kink.
template <typename LossFn, typename PatternFn>
Eigen::Index expect_gradient_matches(const std::string& label, float* values, const float* analytic,
                             Eigen::Index count, LossFn&& loss, PatternFn&& pattern) {
  double worst_error = 0.0, worst_analytic = 0.0, worst_numeric = 0.0, max_abs_numeric = 0.0;
  Eigen::Index worst_index = -1, kinks = 0;
  for (Eigen::Index i = 0; i < count; ++i) {
    const float saved = values[i];
    const float up = saved + kEps;
    const float down = saved - kEps;
    values[i] = up;
    const double loss_up = loss();
    const ActivationPattern pattern_up = pattern();
    values[i] = down;
    const double loss_down = loss();
    const ActivationPattern pattern_down = pattern();
    values[i] = saved;
    if (pattern_up != pattern_down) {
      ++kinks;
      continue;
    }

    // Divide by the step actually taken in float, not by 2 * kEps.
    const double numeric = (loss_up - loss_down) / (static_cast<double>(up) - down);
    max_abs_numeric = std::max(max_abs_numeric, std::abs(numeric));
    const double error = relative_error(analytic[i], numeric);
    if (error > worst_error || worst_index < 0) {
      worst_error = error;
      worst_index = i;
      worst_analytic = analytic[i];
      worst_numeric = numeric;
    }
  }
  EXPECT_LT(worst_error, kRelTol) << label << ": element " << worst_index << " has analytic "
                                  << worst_analytic << " but numeric " << worst_numeric;
  EXPECT_GT(max_abs_numeric, kMinSignal)
      << label << ": every numerical gradient is below " << kMinSignal
      << ", so the check is vacuous";
  return kinks;
}

void expect_few_kinks(const std::string& label, Eigen::Index kinks, Eigen::Index checked) {
  EXPECT_LE(static_cast<double>(kinks), kMaxKinkFraction * static_cast<double>(checked))
      << label << ": " << kinks << " of " << checked
      << " elements straddle a ReLU kink, too many to trust the check";
}

// ---------------------------------------------------------------------------
// One recurrent layer with the linear loss sum(W .* outputs).

class LayerGradient : public testing::TestWithParam<CellType> {};

TEST_P(LayerGradient, LinearLossAllInputs) {
  const CellType cell = GetParam();
  constexpr int kInput = 4, kHidden = 5, kBatch = 3, kSteps = 4;
  constexpr int kColumns = kBatch * kSteps;
  const int gates = gate_rows(cell, kHidden);
  set_num_threads(1);  // see ModelGradientFixture
  Rng rng(11);

  Matrix wx(gates, kInput), wh(gates, kHidden), b(gates, 1);
  fill_uniform(wx, rng, 0.5f);
  fill_uniform(wh, rng, 0.5f);
  fill_uniform(b, rng, 0.5f);
  Matrix input(kInput, kColumns);
  fill_uniform(input, rng, 1.0f);
  // Loss weights scaled by 1 / columns keep the loss near 1, so float
  // rounding in it stays small next to kErrorFloor.
  Matrix loss_weights(kHidden, kColumns);
  fill_uniform(loss_weights, rng, 1.0f / kColumns);

  RecurrentCache cache(cell, kInput, kHidden, kBatch, kSteps);
  fill_uniform(cache.initial_h(), rng, 0.5f);
  if (has_cell_state(cell)) fill_uniform(cache.initial_c(), rng, 0.5f);
  const RecurrentWeights weights{ConstMatrixMap(wx.data(), wx.rows(), wx.cols()),
                                 ConstMatrixMap(wh.data(), wh.rows(), wh.cols()),
                                 ConstMatrixMap(b.data(), b.rows(), b.cols())};

  auto loss = [&]() {
    recurrent_forward(cache, weights, input, kSteps);
    return (cache.outputs(kSteps).cast<double>().array() * loss_weights.cast<double>().array())
        .sum();
  };
  auto pattern = [&]() {
    ActivationPattern result;
    if (cell == CellType::kRnnRelu) append_pattern(result, cache.outputs(kSteps));
    return result;
  };

  Matrix grad_wx = Matrix::Zero(gates, kInput);
  Matrix grad_wh = Matrix::Zero(gates, kHidden);
  Matrix grad_b = Matrix::Zero(gates, 1);
  Matrix grad_input = Matrix::Zero(kInput, kColumns);
  RecurrentGrads grads{MatrixMap(grad_wx.data(), gates, kInput),
                       MatrixMap(grad_wh.data(), gates, kHidden), MatrixMap(grad_b.data(), gates, 1)};
  loss();
  MatRef d_input(grad_input);
  recurrent_backward(cache, weights, grads, input, loss_weights, &d_input, kSteps);
  // The gradient reaching the carried-in state is left in dh_next / dc_next.
  const Matrix grad_initial_h = cache.dh_next;
  const Matrix grad_initial_c = has_cell_state(cell) ? Matrix(cache.dc_next) : Matrix();

  const std::string name = cell_name(cell);
  Eigen::Index kinks = 0;
  kinks += expect_gradient_matches(name + " weight_x", wx.data(), grad_wx.data(), wx.size(),
                                   loss, pattern);
  kinks += expect_gradient_matches(name + " weight_h", wh.data(), grad_wh.data(), wh.size(),
                                   loss, pattern);
  kinks += expect_gradient_matches(name + " bias", b.data(), grad_b.data(), b.size(), loss,
                                   pattern);
  kinks += expect_gradient_matches(name + " d_input", input.data(), grad_input.data(),
                                   input.size(), loss, pattern);
  Eigen::Index checked = wx.size() + wh.size() + b.size() + input.size();

  Matrix initial_h = cache.initial_h();
  auto loss_from_initial_h = [&]() {
    cache.initial_h() = initial_h;
    return loss();
  };
  kinks += expect_gradient_matches(name + " dh_next (carried-in h)", initial_h.data(),
                                   grad_initial_h.data(), initial_h.size(), loss_from_initial_h,
                                   pattern);
  checked += initial_h.size();
  cache.initial_h() = initial_h;

  if (has_cell_state(cell)) {
    Matrix initial_c = cache.initial_c();
    auto loss_from_initial_c = [&]() {
      cache.initial_c() = initial_c;
      return loss();
    };
    kinks += expect_gradient_matches(name + " dc_next (carried-in c)", initial_c.data(),
                                     grad_initial_c.data(), initial_c.size(),
                                     loss_from_initial_c, pattern);
    checked += initial_c.size();
  }
  expect_few_kinks(name, kinks, checked);
}

INSTANTIATE_TEST_SUITE_P(Cells, LayerGradient, testing::ValuesIn(kAllCells), cell_test_name);

// ---------------------------------------------------------------------------
// The whole model: embedding, layers, dropout, decoder, softmax cross-entropy.

// A model with every parameter, biases included, drawn from U(-0.5, 0.5) so
// that every path carries a measurable gradient, and one random window.
class ModelGradientFixture {
 public:
  ModelGradientFixture(const ModelConfig& config, int batch, int steps, std::uint64_t seed)
      : model_(config), ws_(config, batch, steps), steps_(steps), dropout_seed_(seed + 1) {
    // The windows are tiny, and on a loaded machine each OpenMP parallel
    // region with two threads can wait milliseconds for a core.
    set_num_threads(1);
    Rng rng(seed);
    fill_uniform(model_.params().values(), rng, 0.5f);
    const auto inputs = random_ids(ws_.inputs.size(), config.vocab_size, rng);
    const auto targets = random_ids(ws_.targets.size(), config.vocab_size, rng);
    ws_.inputs = inputs;
    ws_.targets = targets;
  }

  LanguageModel& model() { return model_; }
  Workspace& workspace() { return ws_; }

  // Sets a random carried-in h (and c) in every layer.
  void randomize_state(Rng& rng) {
    for (auto& cache : ws_.layers) {
      fill_uniform(cache.initial_h(), rng, 0.5f);
      if (has_cell_state(cache.cell)) fill_uniform(cache.initial_c(), rng, 0.5f);
    }
  }

  // Mean loss of the window. Every call draws the same dropout masks because
  // it starts from a fresh copy of the same generator.
  double mean_loss() {
    Rng dropout_rng(dropout_seed_);
    const double sum = model_forward(model_, ws_, steps_, /*training=*/true, &dropout_rng);
    return sum / (static_cast<double>(steps_) * ws_.batch);
  }

  // Active units of every layer after the last forward pass (rnn_relu only).
  ActivationPattern pattern() {
    ActivationPattern result;
    if (model_.config().cell != CellType::kRnnRelu) return result;
    for (auto& cache : ws_.layers) append_pattern(result, cache.outputs(steps_));
    return result;
  }

  Vector analytic_gradient() {
    model_.params().zero_grads();
    mean_loss();
    model_backward(model_, ws_, steps_);
    return model_.params().grads();
  }

  // Checks every element of every parameter tensor.
  void check_every_parameter(const std::string& label) {
    const Vector analytic = analytic_gradient();
    Eigen::Index kinks = 0;
    for (const TensorEntry& entry : model_.params().entries()) {
      kinks += expect_gradient_matches(label + " " + entry.name,
                                       model_.params().values().data() + entry.offset,
                                       analytic.data() + entry.offset, entry.size,
                                       [&]() { return mean_loss(); }, [&]() { return pattern(); });
    }
    expect_few_kinks(label, kinks, model_.params().total_size());
  }

 private:
  LanguageModel model_;
  Workspace ws_;
  int steps_;
  std::uint64_t dropout_seed_;
};

constexpr int kVocab = 10, kEmbedding = 5, kHidden = 4, kBatch = 3, kSteps = 4;

class ModelGradient : public testing::TestWithParam<CellType> {};

TEST_P(ModelGradient, SingleLayer) {
  const ModelConfig config = make_config(GetParam(), kVocab, kEmbedding, kHidden, 1);
  ModelGradientFixture fixture(config, kBatch, kSteps, 21);
  fixture.check_every_parameter(std::string(cell_name(GetParam())) + " 1 layer");
}

TEST_P(ModelGradient, TwoStackedLayers) {
  const ModelConfig config = make_config(GetParam(), kVocab, kEmbedding, kHidden, 2);
  ModelGradientFixture fixture(config, kBatch, kSteps, 22);
  fixture.check_every_parameter(std::string(cell_name(GetParam())) + " 2 layers");
}

TEST_P(ModelGradient, RandomCarriedState) {
  const ModelConfig config = make_config(GetParam(), kVocab, kEmbedding, kHidden, 2);
  ModelGradientFixture fixture(config, kBatch, kSteps, 23);
  Rng state_rng(123);
  fixture.randomize_state(state_rng);
  fixture.check_every_parameter(std::string(cell_name(GetParam())) + " carried state");
}

TEST_P(ModelGradient, StandardDropoutFixedMask) {
  ModelConfig config = make_config(GetParam(), kVocab, kEmbedding, kHidden, 2);
  config.dropout = 0.3f;
  ModelGradientFixture fixture(config, kBatch, kSteps, 24);
  fixture.check_every_parameter(std::string(cell_name(GetParam())) + " dropout");
  EXPECT_TRUE(fixture.workspace().dropout_active) << "the training forward pass applied no dropout";
}

TEST_P(ModelGradient, VariationalDropoutFixedMask) {
  ModelConfig config = make_config(GetParam(), kVocab, kEmbedding, kHidden, 2);
  config.dropout = 0.3f;
  config.variational_dropout = true;
  ModelGradientFixture fixture(config, kBatch, kSteps, 25);
  fixture.check_every_parameter(std::string(cell_name(GetParam())) + " variational dropout");
  EXPECT_TRUE(fixture.workspace().dropout_active) << "the training forward pass applied no dropout";
}

INSTANTIATE_TEST_SUITE_P(Cells, ModelGradient, testing::ValuesIn(kAllCells), cell_test_name);

// Windows of at least kPackedDecoderColumns columns run the decoder through
// PackedMatrix (when the build has its kernel); the windows above are narrower.
class PackedDecoderGradient : public testing::TestWithParam<bool> {};

TEST_P(PackedDecoderGradient, LstmEveryParameter) {
  constexpr int kWideBatch = 4, kWideSteps = kPackedDecoderColumns / kWideBatch;
  const bool tied = GetParam();
  ModelConfig config = make_config(CellType::kLstm, kVocab, kHidden, kHidden, 1);
  config.tie_weights = tied;
  ModelGradientFixture fixture(config, kWideBatch, kWideSteps, 28);
  if (packed_kernel_available()) {
    ASSERT_GT(fixture.workspace().packed_w.bytes(), 0u) << "the packed decoder is not in use";
  }
  fixture.check_every_parameter(tied ? "packed decoder, tied" : "packed decoder");
}

INSTANTIATE_TEST_SUITE_P(Tying, PackedDecoderGradient, testing::Bool(),
                         [](const testing::TestParamInfo<bool>& info) { return info.param ? "tied" : "untied"; });

TEST(TiedGradient, LstmEveryParameter) {
  ModelConfig config = make_config(CellType::kLstm, kVocab, kHidden, kHidden, 2);
  config.tie_weights = true;
  ModelGradientFixture fixture(config, kBatch, kSteps, 26);
  ASSERT_FALSE(fixture.model().params().contains("decoder.weight"));
  fixture.check_every_parameter("tied lstm");
}

// The tied embedding is used twice, as lookup table and as decoder, so its
// gradient must be the sum of the two uses. An untied model whose decoder is a
// copy of the embedding computes the same loss and has one gradient per use.
class TiedGradientSum : public testing::TestWithParam<CellType> {};

TEST_P(TiedGradientSum, EqualsSumOfBothUses) {
  // Both models run the same float arithmetic on the same values, so only the
  // order of the two gradient accumulations may differ.
  constexpr double kAbsTol = 1e-6;
  constexpr double kRelTolSum = 1e-5;

  ModelConfig tied_config = make_config(GetParam(), kVocab, kHidden, kHidden, 2);
  tied_config.tie_weights = true;
  ModelConfig untied_config = tied_config;
  untied_config.tie_weights = false;

  ModelGradientFixture tied(tied_config, kBatch, kSteps, 27);
  ModelGradientFixture untied(untied_config, kBatch, kSteps, 27);
  untied.workspace().inputs = tied.workspace().inputs;
  untied.workspace().targets = tied.workspace().targets;
  ParamStore& tied_params = tied.model().params();
  ParamStore& untied_params = untied.model().params();
  for (const TensorEntry& entry : tied_params.entries()) {
    untied_params.value(entry.name) = tied_params.value(entry);
  }
  untied_params.value("decoder.weight") = tied_params.value("embedding.weight");

  const double tied_loss = tied.mean_loss();
  const double untied_loss = untied.mean_loss();
  EXPECT_NEAR(tied_loss, untied_loss, kAbsTol) << "the untied copy does not compute the same model";

  tied.analytic_gradient();
  untied.analytic_gradient();
  const Matrix expected =
      untied_params.grad("embedding.weight") + untied_params.grad("decoder.weight");
  const Matrix actual = tied_params.grad("embedding.weight");
  ASSERT_EQ(actual.rows(), expected.rows());
  ASSERT_EQ(actual.cols(), expected.cols());
  for (Eigen::Index j = 0; j < actual.cols(); ++j) {
    for (Eigen::Index i = 0; i < actual.rows(); ++i) {
      EXPECT_NEAR(actual(i, j), expected(i, j), kAbsTol + kRelTolSum * std::abs(expected(i, j)))
          << "embedding.weight gradient at row " << i << ", word " << j;
    }
  }
  EXPECT_GT(untied_params.grad("decoder.weight").norm(), kMinSignal);
  EXPECT_GT(untied_params.grad("embedding.weight").norm(), kMinSignal);

  // The other tensors see no difference between the two models.
  for (const TensorEntry& entry : tied_params.entries()) {
    if (entry.name == "embedding.weight") continue;
    const Matrix difference = tied_params.grad(entry) - untied_params.grad(entry.name);
    EXPECT_LE(difference.cwiseAbs().maxCoeff(),
              kAbsTol + kRelTolSum * untied_params.grad(entry.name).cwiseAbs().maxCoeff())
        << entry.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Cells, TiedGradientSum, testing::ValuesIn(kAllCells), cell_test_name);

}  // namespace
}  // namespace lstm

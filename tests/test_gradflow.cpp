// Gradient flow through time (analysis/gradflow): the recorded norms against
// hand-computed Jacobian products, the LSTM cell path, a known decay rate,
// the fit, and the lstm-gradflow command line.

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "analysis/gradflow.h"
#include "model/model.h"
#include "tensor/random.h"
#include "test_files.h"
#include "util/error.h"

namespace lstm {
namespace {

namespace fs = std::filesystem;

using test::read_bytes;

ModelConfig small_config(CellType cell, int vocab, int embedding, int hidden, int layers = 1) {
  ModelConfig config;
  config.cell = cell;
  config.vocab_size = vocab;
  config.embedding_size = embedding;
  config.hidden_size = hidden;
  config.num_layers = layers;
  return config;
}

template <typename MatrixLike>
void fill_uniform(MatrixLike&& m, Rng& rng, float range) {
  for (Eigen::Index j = 0; j < m.cols(); ++j) {
    for (Eigen::Index i = 0; i < m.rows(); ++i) m(i, j) = (2.0f * rng.uniform() - 1.0f) * range;
  }
}

std::vector<TokenId> random_ids(std::size_t count, int vocab, Rng& rng) {
  std::vector<TokenId> ids(count);
  for (auto& id : ids) id = static_cast<TokenId>(rng.below(static_cast<std::uint64_t>(vocab)));
  return ids;
}

void fill_random_window(GradflowWorkspace& ws, int vocab, Rng& rng) {
  ws.inputs = random_ids(ws.inputs.size(), vocab, rng);
  ws.targets = random_ids(ws.targets.size(), vocab, rng);
}

// ---------------------------------------------------------------------------
// backprop_last_step_loss

// For h_t = tanh(Wx x_t + Wh h_{t-1} + b), dL/dh_{t-1} = Wh^T diag(1 - h_t^2) dL/dh_t,
// and dL/dh_{T-1} = Wdec (softmax - onehot) / B. Both are recomputed here in
// double from the forward pass's h values.
TEST(GradflowBackprop, RnnNormsMatchJacobianProduct) {
  constexpr int kVocab = 7, kEmbedding = 4, kHidden = 3, kSteps = 12, kBatch = 2;
  constexpr double kRelTol = 1e-4;
  LanguageModel model(small_config(CellType::kRnn, kVocab, kEmbedding, kHidden));
  Rng rng(11);
  model.initialize(rng);
  fill_uniform(model.embedding(), rng, 1.0f);
  auto wh = model.params().value("rnn.0.weight_h");
  wh << 0.9f, -0.4f, 0.2f,
        0.3f, 0.8f, -0.5f,
       -0.2f, 0.4f, 0.7f;
  model.params().value("rnn.0.bias").setZero();

  GradflowWorkspace ws(model.config(), kBatch, kSteps);
  fill_random_window(ws, kVocab, rng);
  backprop_last_step_loss(model, ws);

  const RecurrentCache& cache = ws.layers[0];
  const Eigen::MatrixXd wh_d = wh.cast<double>();
  const Eigen::MatrixXd decoder = model.decoder_weight().cast<double>();  // H x V
  const Eigen::VectorXd decoder_bias = model.decoder_bias().col(0).cast<double>();
  auto h_at = [&](int t) -> Eigen::MatrixXd {
    return cache.hbuf.middleCols((t + 1) * kBatch, kBatch).cast<double>();
  };

  // dL/dh_{T-1} from the last step's softmax.
  Eigen::MatrixXd dh(kHidden, kBatch);
  for (int b = 0; b < kBatch; ++b) {
    Eigen::VectorXd logits = decoder.transpose() * h_at(kSteps - 1).col(b) + decoder_bias;
    Eigen::VectorXd p = (logits.array() - logits.maxCoeff()).exp();
    p /= p.sum();
    p(ws.targets[(kSteps - 1) * kBatch + b]) -= 1.0;
    dh.col(b) = decoder * p / kBatch;
  }
  for (int t = kSteps - 1; t >= 0; --t) {
    const double expected = dh.colwise().norm().mean();
    EXPECT_NEAR(cache.dh_norm[t], expected, kRelTol * expected) << "step " << t;
    const Eigen::MatrixXd h = h_at(t);
    dh = wh_d.transpose() * (dh.array() * (1.0 - h.array().square())).matrix();
  }
}

// With the forget gate at exactly 1 (bias +50) and Wh = 0, the loss at the
// last step reaches c_t only through c_{t+1} = f*c_t + i*g, so dL/dc_t is
// dL/dc_{T-1} at every distance and dL/dh_t is zero before the last step.
TEST(GradflowBackprop, LstmCellPathPassesDcUnchanged) {
  constexpr int kVocab = 6, kEmbedding = 4, kHidden = 3, kSteps = 25, kBatch = 3;
  LanguageModel model(small_config(CellType::kLstm, kVocab, kEmbedding, kHidden));
  Rng rng(5);
  model.initialize(rng);
  fill_uniform(model.embedding(), rng, 1.0f);
  model.params().value("rnn.0.weight_h").setZero();
  auto bias = model.params().value("rnn.0.bias");
  bias.setZero();
  bias.topRows(kHidden).setConstant(50.0f);  // forget gate rows come first

  GradflowWorkspace ws(model.config(), kBatch, kSteps);
  fill_random_window(ws, kVocab, rng);
  backprop_last_step_loss(model, ws);

  const RecurrentCache& cache = ws.layers[0];
  const double dc_last = cache.dc_norm[kSteps - 1];
  ASSERT_GT(dc_last, 1e-6);
  for (int t = 0; t < kSteps; ++t) {
    EXPECT_NEAR(cache.dc_norm[t] / dc_last, 1.0, 1e-5) << "distance " << kSteps - 1 - t;
  }
  for (int t = 0; t < kSteps - 1; ++t) EXPECT_EQ(cache.dh_norm[t], 0.0f) << "step " << t;
}

// The same model with a forget bias of 0 (f around 0.5) loses dL/dc quickly,
// so the test above cannot pass by accident.
TEST(GradflowBackprop, LstmOpenForgetGateDecaysDc) {
  constexpr int kVocab = 6, kEmbedding = 4, kHidden = 3, kSteps = 25, kBatch = 3;
  LanguageModel model(small_config(CellType::kLstm, kVocab, kEmbedding, kHidden));
  Rng rng(5);
  model.initialize(rng);
  fill_uniform(model.embedding(), rng, 1.0f);
  model.params().value("rnn.0.weight_h").setZero();
  model.params().value("rnn.0.bias").setZero();

  GradflowWorkspace ws(model.config(), kBatch, kSteps);
  fill_random_window(ws, kVocab, rng);
  backprop_last_step_loss(model, ws);

  const RecurrentCache& cache = ws.layers[0];
  EXPECT_LT(cache.dc_norm[0] / cache.dc_norm[kSteps - 1], 1e-2);
}

TEST(GradflowBackprop, ReturnsMeanLossOfLastStep) {
  constexpr int kVocab = 9, kSteps = 6, kBatch = 4;
  LanguageModel model(small_config(CellType::kGru, kVocab, 5, 6, 2));
  Rng rng(3);
  model.initialize(rng);

  GradflowWorkspace ws(model.config(), kBatch, kSteps);
  fill_random_window(ws, kVocab, rng);
  const double loss = backprop_last_step_loss(model, ws);

  // The same window through the full model: its last step's per-column losses.
  Workspace full(model.config(), kBatch, kSteps);
  full.inputs = ws.inputs;
  full.targets = ws.targets;
  model_forward(model, full, kSteps, /*training=*/false, nullptr);
  double expected = 0.0;
  for (int b = 0; b < kBatch; ++b) expected += full.column_loss[(kSteps - 1) * kBatch + b];
  expected /= kBatch;
  EXPECT_NEAR(loss, expected, 1e-5 * expected);
}

// ---------------------------------------------------------------------------
// measure_gradient_flow

// h_t = tanh(Wx x + 0.5 h_{t-1}) with inputs near zero keeps tanh' near 1, so
// each step back multiplies the gradient by Wh^T = 0.5 I.
TEST(GradflowMeasure, RnnScaledIdentityDecaysAtItsScale) {
  constexpr int kVocab = 8, kEmbedding = 4, kHidden = 5;
  constexpr double kScale = 0.5;
  LanguageModel model(small_config(CellType::kRnn, kVocab, kEmbedding, kHidden));
  Rng rng(17);
  model.initialize(rng);
  fill_uniform(model.embedding(), rng, 1e-4f);
  model.params().value("rnn.0.weight_h") = Matrix::Identity(kHidden, kHidden) * static_cast<float>(kScale);
  model.params().value("rnn.0.bias").setZero();
  const std::vector<TokenId> ids = random_ids(400, kVocab, rng);

  GradflowOptions options;
  options.steps = 30;
  options.batches = 2;
  options.batch_size = 4;
  const GradflowResult result = measure_gradient_flow(model, ids, options);

  ASSERT_EQ(result.curves.size(), 1u);
  const DecayFit fit = fit_decay(result.curves[0].norm);
  EXPECT_EQ(fit.fit_points, options.steps);
  EXPECT_NEAR(fit.rate, kScale, 0.02 * kScale);
  ASSERT_TRUE(fit.threshold_distance.has_value());
  EXPECT_FALSE(fit.exploding);
  EXPECT_EQ(*fit.threshold_distance, 10);  // 0.5^10 < 1e-3 < 0.5^9
}

TEST(GradflowMeasure, AveragesConsecutiveWindows) {
  constexpr int kVocab = 10, kSteps = 7, kBatch = 3, kBatches = 2;
  LanguageModel model(small_config(CellType::kLstm, kVocab, 4, 5, 2));
  Rng rng(23);
  model.initialize(rng);
  const std::vector<TokenId> ids = random_ids(100, kVocab, rng);

  GradflowOptions options;
  options.steps = kSteps;
  options.batches = kBatches;
  options.batch_size = kBatch;
  const GradflowResult result = measure_gradient_flow(model, ids, options);
  ASSERT_EQ(result.curves.size(), 4u);  // layers 0 and 1, h and c

  // Window n of stream b starts at token b*S + n*T, S = stream length.
  const int stream_length = static_cast<int>(ids.size()) / kBatch;
  std::vector<std::vector<double>> expected(result.curves.size(), std::vector<double>(kSteps, 0.0));
  GradflowWorkspace ws(model.config(), kBatch, kSteps);
  for (int n = 0; n < kBatches; ++n) {
    for (int t = 0; t < kSteps; ++t) {
      for (int b = 0; b < kBatch; ++b) {
        const int at = b * stream_length + n * kSteps + t;
        ws.inputs[t * kBatch + b] = ids[at];
        ws.targets[t * kBatch + b] = ids[at + 1];
      }
    }
    backprop_last_step_loss(model, ws);
    for (std::size_t i = 0; i < result.curves.size(); ++i) {
      const auto& curve = result.curves[i];
      const RecurrentCache& cache = ws.layers[curve.layer];
      const Vector& norms = curve.kind == 'h' ? cache.dh_norm : cache.dc_norm;
      for (int k = 0; k < kSteps; ++k) expected[i][k] += norms[kSteps - 1 - k] / kBatches;
    }
  }
  for (std::size_t i = 0; i < result.curves.size(); ++i) {
    for (int k = 0; k < kSteps; ++k) {
      EXPECT_NEAR(result.curves[i].norm[k], expected[i][k], 1e-6 * expected[i][k])
          << "layer " << result.curves[i].layer << " d" << result.curves[i].kind << " distance " << k;
    }
  }
}

TEST(GradflowMeasure, TooShortDataRejected) {
  LanguageModel model(small_config(CellType::kRnn, 5, 3, 3));
  Rng rng(1);
  model.initialize(rng);
  const std::vector<TokenId> ids = random_ids(100, 5, rng);
  GradflowOptions options;
  options.steps = 10;
  options.batches = 3;
  options.batch_size = 4;  // 4 streams of 25 tokens: 24 positions, 30 needed
  EXPECT_THROW(measure_gradient_flow(model, ids, options), DataError);
  options.batches = 2;
  EXPECT_NO_THROW(measure_gradient_flow(model, ids, options));
}

// ---------------------------------------------------------------------------
// fit_decay

std::vector<double> geometric(double rate, int count) {
  std::vector<double> norm(count);
  for (int k = 0; k < count; ++k) norm[k] = 0.3 * std::pow(rate, k);
  return norm;
}

TEST(GradflowFit, GeometricDecay) {
  const DecayFit fit = fit_decay(geometric(0.8, 50));
  EXPECT_NEAR(fit.rate, 0.8, 1e-12);
  EXPECT_EQ(fit.fit_points, 50);
  ASSERT_TRUE(fit.threshold_distance.has_value());
  EXPECT_EQ(*fit.threshold_distance, 31);  // 0.8^31 = 9.9e-4, 0.8^30 = 1.2e-3
  EXPECT_FALSE(fit.exploding);
}

TEST(GradflowFit, GeometricGrowth) {
  const DecayFit fit = fit_decay(geometric(1.5, 40));
  EXPECT_NEAR(fit.rate, 1.5, 1e-12);
  ASSERT_TRUE(fit.threshold_distance.has_value());
  EXPECT_EQ(*fit.threshold_distance, 18);  // 1.5^18 = 1478, 1.5^17 = 985
  EXPECT_TRUE(fit.exploding);
}

TEST(GradflowFit, ConstantHasNoThreshold) {
  const DecayFit fit = fit_decay(std::vector<double>(20, 2.0));
  EXPECT_NEAR(fit.rate, 1.0, 1e-12);
  EXPECT_FALSE(fit.threshold_distance.has_value());
}

TEST(GradflowFit, NonFiniteNormCountsAsGrowth) {
  std::vector<double> norm = geometric(0.9, 20);
  norm[5] = std::numeric_limits<double>::infinity();
  const DecayFit fit = fit_decay(norm);
  EXPECT_EQ(fit.fit_points, 5);
  EXPECT_NEAR(fit.rate, 0.9, 1e-12);
  ASSERT_TRUE(fit.threshold_distance.has_value());
  EXPECT_EQ(*fit.threshold_distance, 5);
  EXPECT_TRUE(fit.exploding);
}

TEST(GradflowFit, UnderflowEndsFit) {
  std::vector<double> norm = geometric(0.9, 20);
  norm[3] = 0.0;
  const DecayFit fit = fit_decay(norm);
  EXPECT_EQ(fit.fit_points, 3);
  ASSERT_TRUE(fit.threshold_distance.has_value());
  EXPECT_EQ(*fit.threshold_distance, 3);
  EXPECT_FALSE(fit.exploding);
}

TEST(GradflowFit, ZeroStartHasNoFit) {
  const DecayFit fit = fit_decay(std::vector<double>(10, 0.0));
  EXPECT_TRUE(std::isnan(fit.rate));
  EXPECT_EQ(fit.fit_points, 0);
  EXPECT_FALSE(fit.threshold_distance.has_value());
}

// ---------------------------------------------------------------------------
// write_gradflow_csv

TEST(GradflowCsv, LabelWithCommaRejected) {
  GradflowResult result;
  result.curves.push_back({0, 'h', {1.0, 0.5}});
  const fs::path path = fs::path(testing::TempDir()) / "gradflow_label.csv";
  EXPECT_THROW(write_gradflow_csv(path, "a,b", result), ConfigError);
  EXPECT_THROW(write_gradflow_csv(path, "", result), ConfigError);
  EXPECT_NO_THROW(write_gradflow_csv(path, "a b", result));
}

// ---------------------------------------------------------------------------
// lstm-gradflow command line

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, separator)) parts.push_back(part);
  return parts;
}

class GradflowCli : public testing::Test {
 protected:
  void SetUp() override {
    binary_ = fs::path(LSTM_BINARY_DIR) / "bin" / "lstm-gradflow";
    ASSERT_TRUE(fs::exists(binary_)) << binary_ << " is missing: build the lstm-gradflow target first";
    dir_ = fs::path(testing::TempDir()) / ("gradflow_cli_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs lstm-gradflow on configs/tiny.json with data/sample; returns the exit code.
  int run(const std::string& arguments, const std::string& environment = "") {
    const std::string source = LSTM_SOURCE_DIR;
    const std::string command = environment + " '" + binary_.string() + "' --config '" + source +
                                "/configs/tiny.json' --set 'data.dir=" + source + "/data/sample' --threads 1 " +
                                arguments + " > '" + (dir_ / "stdout.txt").string() + "' 2> '" +
                                (dir_ / "stderr.txt").string() + "'";
    const int status = std::system(command.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  fs::path binary_, dir_;
};

TEST_F(GradflowCli, WritesCsvWithEveryDistance) {
  const fs::path csv = dir_ / "tiny.csv";
  ASSERT_EQ(run("--steps 30 --batches 2 --label 'tiny fresh' --csv '" + csv.string() + "'"), 0)
      << read_bytes(dir_ / "stderr.txt");

  const std::vector<std::string> lines = split(read_bytes(csv), '\n');
  ASSERT_EQ(lines.size(), 1u + 2 * 30);  // header, then h and c of the one lstm layer
  EXPECT_EQ(lines[0], "label,cell,layer,kind,distance,norm");
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const std::vector<std::string> fields = split(lines[i], ',');
    ASSERT_EQ(fields.size(), 6u) << lines[i];
    EXPECT_EQ(fields[0], "tiny fresh");
    EXPECT_EQ(fields[1], "lstm");
    EXPECT_EQ(fields[2], "0");
    EXPECT_EQ(fields[3], i <= 30 ? "h" : "c");
    EXPECT_EQ(std::stoi(fields[4]), static_cast<int>((i - 1) % 30));
    const double norm = std::stod(fields[5]);
    EXPECT_TRUE(std::isfinite(norm)) << lines[i];
    EXPECT_GT(norm, 0.0) << lines[i];
  }
  const std::string output = read_bytes(dir_ / "stdout.txt");
  EXPECT_NE(output.find("layer 0 dh: rate "), std::string::npos) << output;
  EXPECT_NE(output.find("layer 0 dc: rate "), std::string::npos) << output;
}

TEST_F(GradflowCli, MissingModelIsUsageError) {
  const std::string command = "'" + binary_.string() + "' > /dev/null 2> '" + (dir_ / "stderr.txt").string() + "'";
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
  EXPECT_NE(read_bytes(dir_ / "stderr.txt").find("missing --checkpoint"), std::string::npos);
}

TEST_F(GradflowCli, PlotWithoutPythonStillWritesCsv) {
  const fs::path png = dir_ / "curves.png";
  EXPECT_EQ(run("--steps 10 --batches 1 --plot '" + png.string() + "'", "LSTM_PYTHON=/nonexistent/python3"), 1);
  EXPECT_TRUE(fs::exists(dir_ / "curves.csv"));
  EXPECT_FALSE(fs::exists(png));
  EXPECT_NE(read_bytes(dir_ / "stderr.txt").find("python3-matplotlib"), std::string::npos);
}

}  // namespace
}  // namespace lstm

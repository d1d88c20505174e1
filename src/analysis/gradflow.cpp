#include "analysis/gradflow.h"

#include <spawn.h>
#include <sys/wait.h>

#include <spdlog/fmt/fmt.h>

#include <cmath>
#include <limits>

#include "data/batcher.h"
#include "io/atomic_file.h"
#include "ops/softmax_cross_entropy.h"
#include "tensor/gemm.h"
#include "util/error.h"

extern char** environ;

namespace lstm {

namespace {

int layer_input_size(const ModelConfig& config, int layer) {
  return layer == 0 ? config.embedding_size : config.hidden_size;
}

// Distances shown on the console: 0, 1, 2, 5, 10, 20, 50, ... and the last one.
std::vector<int> report_distances(int steps) {
  std::vector<int> distances;
  for (int scale = 1; scale < steps; scale *= 10) {
    for (int mantissa : {1, 2, 5}) {
      if (mantissa * scale < steps) distances.push_back(mantissa * scale);
    }
  }
  distances.insert(distances.begin(), 0);
  if (distances.back() != steps - 1) distances.push_back(steps - 1);
  return distances;
}

}  // namespace

GradflowWorkspace::GradflowWorkspace(const ModelConfig& c, int batch_, int steps_)
    : batch(batch_), steps(steps_) {
  const int TB = batch * steps;
  const int G = gate_rows(c.cell, c.hidden_size);
  inputs.assign(TB, 0);
  targets.assign(TB, 0);
  embedded = Matrix::Zero(c.embedding_size, TB);
  for (int l = 0; l < c.num_layers; ++l) {
    layers.emplace_back(c.cell, layer_input_size(c, l), c.hidden_size, batch, steps);
    grad_wx.push_back(Matrix::Zero(G, layer_input_size(c, l)));
    grad_wh.push_back(Matrix::Zero(G, c.hidden_size));
    grad_b.push_back(Matrix::Zero(G, 1));
  }
  logits = Matrix::Zero(c.vocab_size, batch);
  loss = Vector::Zero(batch);
  d_output = Matrix::Zero(c.hidden_size, TB);
  d_input = Matrix::Zero(c.hidden_size, TB);
}

double backprop_last_step_loss(LanguageModel& model, GradflowWorkspace& ws) {
  const ModelConfig& c = model.config();
  const int B = ws.batch, T = ws.steps, TB = T * B, L = c.num_layers;
  const int last = (T - 1) * B;  // first column of the last step

  // 1. Embedding lookup, no dropout.
  auto emb = model.embedding();
  for (int j = 0; j < TB; ++j) ws.embedded.col(j) = emb.col(ws.inputs[j]);

  // 2. Recurrent layers from a zero state.
  auto layer_input = [&](int l) {
    return l == 0 ? ConstMatRef(ws.embedded) : ConstMatRef(ws.layers[l - 1].outputs(T));
  };
  for (int l = 0; l < L; ++l) {
    RecurrentCache& cache = ws.layers[l];
    cache.initial_h().setZero();
    if (cache.cell == CellType::kLstm) cache.initial_c().setZero();
    recurrent_forward(cache, model.layer_weights(l), layer_input(l), T);
  }

  // 3. Decoder and loss on the last step only: logits = W^T h_{T-1} + b (V x B),
  //    then dL/dlogits = (softmax - onehot) / B in place.
  gemm(Trans::kYes, Trans::kNo, 1.0f, model.decoder_weight(), ws.layers[L - 1].last_h(T), 0.0f, ws.logits);
  softmax_cross_entropy(ws.logits, model.decoder_bias().data(), ws.targets.data() + last, ws.loss.data(),
                        1.0f / static_cast<float>(B));
  double loss = 0.0;
  for (int b = 0; b < B; ++b) loss += ws.loss[b];

  // undo 3: dL/dh of the top layer is W dlogits at the last step, zero elsewhere.
  ws.d_output.setZero();
  gemm(Trans::kNo, Trans::kNo, 1.0f, model.decoder_weight(), ws.logits, 0.0f, ws.d_output.middleCols(last, B));

  // undo 2, top layer first. dL/d(input) of layer l is dL/d(output) of layer l-1.
  for (int l = L - 1; l >= 0; --l) {
    RecurrentGrads grads{MatrixMap(ws.grad_wx[l].data(), ws.grad_wx[l].rows(), ws.grad_wx[l].cols()),
                         MatrixMap(ws.grad_wh[l].data(), ws.grad_wh[l].rows(), ws.grad_wh[l].cols()),
                         MatrixMap(ws.grad_b[l].data(), ws.grad_b[l].rows(), 1)};
    MatRef d_input(ws.d_input);
    recurrent_backward(ws.layers[l], model.layer_weights(l), grads, layer_input(l), ws.d_output,
                       l > 0 ? &d_input : nullptr, T);
    if (l > 0) std::swap(ws.d_output, ws.d_input);
  }
  return loss / B;
}

GradflowResult measure_gradient_flow(LanguageModel& model, const std::vector<TokenId>& ids,
                                     const GradflowOptions& options) {
  const int T = options.steps, N = options.batches, B = options.batch_size;
  if (T < 1 || N < 1 || B < 1) {
    throw ConfigError(
        fmt::format("invalid --steps {}, --batches {} or --batch-size {}: each must be >= 1", T, N, B));
  }
  const StreamBatcher batcher(&ids, B);
  if (batcher.positions() < static_cast<std::int64_t>(N) * T) {
    const std::int64_t needed = static_cast<std::int64_t>(B) * (static_cast<std::int64_t>(N) * T + 1);
    throw DataError(fmt::format("the data has {} tokens, fewer than the {} that {} windows of {} steps in {} "
                                "streams need: lower --batches, --steps or --batch-size",
                                ids.size(), needed, N, T, B));
  }

  const ModelConfig& c = model.config();
  const bool has_c = has_cell_state(c.cell);
  GradflowResult result;
  result.cell = c.cell;
  result.options = options;
  for (int l = 0; l < c.num_layers; ++l) {
    result.curves.push_back({l, 'h', std::vector<double>(T, 0.0)});
    if (has_c) result.curves.push_back({l, 'c', std::vector<double>(T, 0.0)});
  }

  GradflowWorkspace ws(c, B, T);
  for (int n = 0; n < N; ++n) {
    batcher.fill(static_cast<std::int64_t>(n) * T, T, ws.inputs.data(), ws.targets.data());
    backprop_last_step_loss(model, ws);
    for (auto& curve : result.curves) {
      const RecurrentCache& cache = ws.layers[curve.layer];
      const Vector& norms = curve.kind == 'h' ? cache.dh_norm : cache.dc_norm;
      for (int k = 0; k < T; ++k) curve.norm[k] += norms[T - 1 - k];
    }
  }
  for (auto& curve : result.curves) {
    for (double& value : curve.norm) value /= N;
  }
  return result;
}

DecayFit fit_decay(const std::vector<double>& norm) {
  DecayFit fit;
  fit.rate = std::numeric_limits<double>::quiet_NaN();
  if (norm.empty() || !std::isfinite(norm[0]) || norm[0] <= kGradflowFloor) return fit;

  // Least squares of y = log norm[k] on x = k over the leading valid range.
  const int count = static_cast<int>(norm.size());
  while (fit.fit_points < count && std::isfinite(norm[fit.fit_points]) && norm[fit.fit_points] > kGradflowFloor) {
    ++fit.fit_points;
  }
  if (fit.fit_points >= 2) {
    double mean_x = 0.0, mean_y = 0.0;
    for (int k = 0; k < fit.fit_points; ++k) {
      mean_x += k;
      mean_y += std::log(norm[k]);
    }
    mean_x /= fit.fit_points;
    mean_y /= fit.fit_points;
    double covariance = 0.0, variance = 0.0;
    for (int k = 0; k < fit.fit_points; ++k) {
      covariance += (k - mean_x) * (std::log(norm[k]) - mean_y);
      variance += (k - mean_x) * (k - mean_x);
    }
    fit.rate = std::exp(covariance / variance);
  }

  for (int k = 1; k < count; ++k) {
    const bool grew = !std::isfinite(norm[k]) || norm[k] > 1e3 * norm[0];
    if (grew || norm[k] < 1e-3 * norm[0]) {
      fit.threshold_distance = k;
      fit.exploding = grew;
      break;
    }
  }
  return fit;
}

std::string format_gradflow_report(const GradflowResult& result) {
  const int T = result.options.steps;
  std::string text = fmt::format("{:>8}", "distance");
  for (const auto& curve : result.curves) {
    text += fmt::format("  {:>11}", fmt::format("|d{}| l{}", curve.kind, curve.layer));
  }
  text += '\n';
  for (const int k : report_distances(T)) {
    text += fmt::format("{:>8}", k);
    for (const auto& curve : result.curves) text += fmt::format("  {:>11.4e}", curve.norm[k]);
    text += '\n';
  }

  text += "rate = exp(least-squares slope of log norm over k); threshold distance = first k whose norm is "
          "below 1e-3 or above 1e3 times the k=0 norm\n";
  for (const auto& curve : result.curves) {
    const DecayFit fit = fit_decay(curve.norm);
    text += fmt::format("layer {} d{}: ", curve.layer, curve.kind);
    if (fit.fit_points >= 2) {
      text += fmt::format("rate {:.6f} per step (fit over k = 0..{})", fit.rate, fit.fit_points - 1);
    } else {
      text += "rate n/a per step (fewer than 2 leading norms are finite and > 1e-30)";
    }
    if (fit.threshold_distance) {
      text += fmt::format("; threshold distance: {} ({})\n", *fit.threshold_distance,
                          fit.exploding ? "above 1e3" : "below 1e-3");
    } else {
      text += fmt::format("; threshold distance: none within {} steps\n", T);
    }
  }
  return text;
}

void write_gradflow_csv(const std::filesystem::path& path, const std::string& label,
                        const GradflowResult& result) {
  if (label.empty() || label.find_first_of(",\"\r\n") != std::string::npos) {
    throw ConfigError("invalid --label \"" + label +
                      "\": it must be non-empty, without commas, quotes or line breaks");
  }
  std::string text = "label,cell,layer,kind,distance,norm\n";
  for (const auto& curve : result.curves) {
    for (std::size_t k = 0; k < curve.norm.size(); ++k) {
      text += fmt::format("{},{},{},{},{},{:.9g}\n", label, cell_name(result.cell), curve.layer, curve.kind, k,
                          curve.norm[k]);
    }
  }
  try {
    write_file_atomically(path, {text});
  } catch (const CheckpointError& e) {
    throw ConfigError(std::string(e.what()) + ": choose a writable --csv path");
  }
}

int run_plot_script(const std::string& python, const std::filesystem::path& script,
                    const std::vector<std::filesystem::path>& csv_files, const std::filesystem::path& out) {
  std::vector<std::string> args = {python, script.string()};
  for (const auto& csv : csv_files) args.push_back(csv.string());
  args.push_back("-o");
  args.push_back(out.string());
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);

  pid_t pid = 0;
  if (posix_spawnp(&pid, python.c_str(), nullptr, nullptr, argv.data(), environ) != 0) return -1;
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return -1;
  if (WIFEXITED(status)) {
    // posix_spawnp may report a missing interpreter only through the child's exit code 127.
    return WEXITSTATUS(status) == 127 ? -1 : WEXITSTATUS(status);
  }
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

}  // namespace lstm

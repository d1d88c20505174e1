// lstm-bench: times full training steps (forward, backward, clipping, update)
// and evaluation steps of a config's model on synthetic token ids, and
// compares the matrix work per second with a large single-precision product.
//
//   lstm-bench --config configs/ptb_lstm_small.json [--threads 2] [--json]
//   lstm-bench --sweep   (hidden 100/200/650/1500 x batch 1/20/64)

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <utility>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include <sys/resource.h>

#include "cli/common.h"
#include "config/settings.h"
#include "data/batcher.h"
#include "model/model.h"
#include "ops/softmax_cross_entropy.h"
#include "tensor/gemm.h"
#include "tensor/packed_gemm.h"
#include "tensor/parallel.h"
#include "train/optimizer.h"
#include "util/error.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace lstm;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median GFLOP/s of `repeats` calls of product, which does `flops` each,
// after one untimed call.
template <typename Product>
double median_gflops(double flops, int repeats, const Product& product) {
  product();
  std::vector<double> rates;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    product();
    rates.push_back(flops / std::chrono::duration<double>(Clock::now() - start).count() / 1e9);
  }
  return median(rates);
}

// Floating-point operations of the matrix products per token: each product
// of (m x k) by (k x n) counts 2mkn. Training runs every product three times
// (forward, and the two gradients of backward), evaluation once.
double matrix_flops_per_token(const ModelConfig& c, bool training) {
  double flops = 0.0;
  for (int l = 0; l < c.num_layers; ++l) {
    const double input = l == 0 ? c.embedding_size : c.hidden_size;
    flops += 2.0 * gate_rows(c.cell, c.hidden_size) * (input + c.hidden_size);
  }
  flops += 2.0 * c.hidden_size * c.vocab_size;
  return training ? 3.0 * flops : flops;
}

// The practical peak: a 1024^3 single-precision product through the build's
// backend on the library's own threads (OpenBLAS's threaded sgemm ran that
// product 1-5% faster than gemm()'s split among threads). The bench measures
// it again right after every timed step, so that a step and the peak it is
// divided by see the same machine. On a shared machine the peak itself moves
// by a third from minute to minute.
class PeakProbe {
 public:
  PeakProbe() : a_(Matrix::Random(kN, kN)), b_(Matrix::Random(kN, kN)), c_(Matrix::Zero(kN, kN)) {
    measure();  // warm-up
  }

  double measure() {
    const auto start = Clock::now();
    library_gemm(Trans::kNo, Trans::kNo, 1.0f, a_, b_, 0.0f, c_);
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    return 2.0 * kN * kN * kN / s / 1e9;
  }

 private:
  static constexpr int kN = 1024;
  Matrix a_, b_, c_;
};

// The same product through Eigen's own kernel, for the backend comparison.
double eigen_gemm_gflops(int repeats) {
  const int n = 1024;
  Matrix a = Matrix::Random(n, n), b = Matrix::Random(n, n), c = Matrix::Zero(n, n);
  c.noalias() = a * b;
  std::vector<double> rates;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    c.noalias() = a * b;
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    rates.push_back(2.0 * n * n * n / s / 1e9);
  }
  return median(rates);
}

// GFLOP/s of one recurrent step's product, op(Wh) (rows x depth) times the
// depth x cols state of one thread's streams, on one thread: through the
// packed kernel (when built) and through the BLAS.
struct ProductRates {
  double packed = 0.0;
  double blas = 0.0;
};

ProductRates time_recurrent_product(int rows, int depth, int cols, Trans trans, int repeats) {
  Matrix wh = trans == Trans::kNo ? Matrix::Random(rows, depth) : Matrix::Random(depth, rows);
  Matrix h = Matrix::Random(depth, cols), out = Matrix::Zero(rows, cols);
  PackedMatrix packed(rows, depth);
  packed.pack(wh, trans);
  const double flops = 2.0 * rows * depth * cols;
  auto rate = [&](const auto& product) { return median_gflops(flops, repeats, product); };
  ProductRates result;
  const int threads = num_threads();
  set_num_threads(1);
  if (packed_kernel_available()) result.packed = rate([&] { packed.multiply(h, 1.0f, out); });
  result.blas = rate([&] { gemm(trans, Trans::kNo, 1.0f, wh, h, 1.0f, out); });
  set_num_threads(threads);
  return result;
}

// GFLOP/s of the decoder's three products at a model's sizes, on all threads,
// as the steps run them: logits = W^T h, dW += h dlogits^T and dh = W dlogits,
// each with the copy of its packed operand, or through the BLAS. They are
// most of the matrix work of a small model, so their rates bound what a step
// of it can reach.
struct DecoderRates {
  double logits = 0.0;
  double weight_grad = 0.0;
  double input_grad = 0.0;
};

DecoderRates time_decoder_products(int hidden, int vocab, int columns, int repeats) {
  const Matrix w = Matrix::Random(hidden, vocab), h = Matrix::Random(hidden, columns);
  Matrix logits = Matrix::Random(vocab, columns), dw = Matrix::Zero(hidden, vocab), dh(hidden, columns);
  const double flops = 2.0 * hidden * vocab * columns;
  auto rate = [&](const auto& product) { return median_gflops(flops, repeats, product); };
  DecoderRates result;
  if (!packed_products()) {
    result.weight_grad = rate([&] { gemm(Trans::kNo, Trans::kYes, 1.0f, h, logits, 1.0f, dw); });
    result.input_grad = rate([&] { gemm(Trans::kNo, Trans::kNo, 1.0f, w, logits, 0.0f, dh); });
    result.logits = rate([&] { gemm(Trans::kYes, Trans::kNo, 1.0f, w, h, 0.0f, logits); });
    return result;
  }

  PackedMatrix packed_w(std::max(PackedMatrix::floats_for(vocab, hidden), PackedMatrix::floats_for(hidden, vocab)));
  PackedMatrix packed_h(hidden, columns);
  const int threads = num_threads();
  // Part `part` of [0, n) when split among the threads.
  auto range = [&](Eigen::Index part, int n) {
    const int first = static_cast<int>(n * part / threads);
    return std::pair<int, int>{first, static_cast<int>(n * (part + 1) / threads) - first};
  };
  result.weight_grad = rate([&] {
    packed_h.pack(h, Trans::kNo);
    parallel_for(threads, [&](Eigen::Index part) {
      const auto [v0, words] = range(part, vocab);
      packed_h.multiply_transposed(logits.middleRows(v0, words), 1.0f, dw.middleCols(v0, words));
    });
  });
  result.input_grad = rate([&] {
    packed_w.pack(w, Trans::kNo);
    parallel_for(threads, [&](Eigen::Index part) {
      const auto [j0, n] = range(part, columns);
      packed_w.multiply(logits.middleCols(j0, n), 0.0f, dh.middleCols(j0, n));
    });
  });
  result.logits = rate([&] {
    packed_w.pack(w, Trans::kYes);
    parallel_for(threads, [&](Eigen::Index part) {
      const auto [j0, n] = range(part, columns);
      packed_w.multiply(h.middleCols(j0, n), 0.0f, logits.middleCols(j0, n));
    });
  });
  return result;
}

// Microseconds per column of the softmax cross-entropy over V logits on one
// thread: the loss only (evaluation), and the loss with dL/dlogits (training).
// With the packed decoder the column maxima come from the product, as in the
// model. Its exp over all V logits is work that the matrix-product bound does
// not count, and at small H it is a visible share of a column's time.
struct SoftmaxTimes {
  double eval_us = 0.0;
  double train_us = 0.0;
};

SoftmaxTimes time_softmax(int vocab, int repeats) {
  constexpr int kColumns = 32;
  Rng rng(5);
  Matrix original(vocab, kColumns);
  for (Eigen::Index i = 0; i < original.size(); ++i) original.data()[i] = static_cast<float>(3.0 * rng.normal());
  std::vector<float> column_max(static_cast<std::size_t>(kColumns) * PackedMatrix::kMaxLanes);
  for (int j = 0; j < kColumns; ++j) {
    std::fill_n(column_max.begin() + j * PackedMatrix::kMaxLanes, PackedMatrix::kMaxLanes, original.col(j).maxCoeff());
  }
  const float* maxima = packed_products() ? column_max.data() : nullptr;
  std::vector<TokenId> targets(kColumns);
  for (int j = 0; j < kColumns; ++j) targets[j] = static_cast<TokenId>(rng.below(static_cast<std::uint64_t>(vocab)));
  std::vector<float> losses(kColumns);
  Matrix logits = original;
  // Median over repeats of one call's time per column. The copy that restores
  // the logits a training call overwrote is not timed.
  auto time_per_column = [&](std::optional<float> grad_scale) {
    std::vector<double> times;
    for (int r = 0; r <= repeats; ++r) {
      logits = original;
      const auto start = Clock::now();
      softmax_cross_entropy(logits, nullptr, targets.data(), losses.data(), grad_scale, Threads::kCaller, maxima);
      const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      if (r > 0) times.push_back(seconds * 1e6 / kColumns);
    }
    return median(times);
  };
  return {time_per_column(std::nullopt), time_per_column(1.0f / kColumns)};
}

struct StepTimes {
  double train_tokens_per_s = 0.0;
  double eval_tokens_per_s = 0.0;
  // Medians of the peak measured after each step, and of each step's GFLOP/s
  // divided by the peak measured right after it.
  double train_peak_gflops = 0.0;
  double eval_peak_gflops = 0.0;
  double train_fraction = 0.0;
  double eval_fraction = 0.0;
  // Bytes of the training process's main buffers.
  double parameter_bytes = 0.0;
  double gradient_bytes = 0.0;
  double optimizer_bytes = 0.0;
  double train_activation_bytes = 0.0;
  double eval_activation_bytes = 0.0;
};

double peak_rss_bytes() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) * 1024.0;  // ru_maxrss is in kB on Linux
}

StepTimes time_steps(const ModelConfig& model_config, const TrainSettings& train, int eval_batch, int warmup,
                     int steps, std::uint64_t seed, PeakProbe& probe) {
  LanguageModel model(model_config);
  Rng rng(seed);
  model.initialize(rng);
  // Synthetic ids, enough for every window to be distinct.
  std::vector<TokenId> ids(static_cast<std::size_t>(train.batch_size) * train.bptt * (steps + warmup + 2) + 1);
  for (auto& id : ids) id = static_cast<TokenId>(rng.below(static_cast<std::uint64_t>(model_config.vocab_size)));
  Optimizer optimizer(train, model.params().total_size());

  StepTimes result;
  result.parameter_bytes = static_cast<double>(model.params().values().size()) * sizeof(float);
  result.gradient_bytes = static_cast<double>(model.params().grads().size()) * sizeof(float);
  result.optimizer_bytes = static_cast<double>(optimizer.first_moment().size() + optimizer.second_moment().size()) *
                           sizeof(float);
  {
    Workspace ws(model_config, train.batch_size, train.bptt);
    result.train_activation_bytes = static_cast<double>(workspace_bytes(ws));
    StreamBatcher batcher(&ids, train.batch_size);
    const double flops = matrix_flops_per_token(model_config, /*training=*/true);
    std::vector<double> rates, peaks, fractions;
    std::int64_t position = 0;
    for (int s = 0; s < warmup + steps; ++s) {
      const auto start = Clock::now();
      const int T = batcher.fill(position, train.bptt, ws.inputs.data(), ws.targets.data());
      model.params().zero_grads();
      model_forward(model, ws, T, /*training=*/true, &rng);
      model_backward(model, ws, T);
      const double norm = global_norm(model.params().grads());
      optimizer.step(model.params().values(), model.params().grads(), 1e-3, clip_factor(norm, train.clip_norm));
      carry_state(ws, T);
      const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      if (s >= warmup) {
        rates.push_back(static_cast<double>(T) * train.batch_size / seconds);
        peaks.push_back(probe.measure());
        fractions.push_back(rates.back() * flops / 1e9 / peaks.back());
      }
      position += T;
    }
    result.train_tokens_per_s = median(rates);
    result.train_peak_gflops = median(peaks);
    result.train_fraction = median(fractions);
  }
  {
    Workspace ws(model_config, eval_batch, train.bptt, WorkspaceUse::kEvaluation);
    result.eval_activation_bytes = static_cast<double>(workspace_bytes(ws));
    StreamBatcher batcher(&ids, eval_batch);
    const double flops = matrix_flops_per_token(model_config, /*training=*/false);
    std::vector<double> rates, peaks, fractions;
    std::int64_t position = 0;
    for (int s = 0; s < warmup + steps; ++s) {
      const auto start = Clock::now();
      const int T = batcher.fill(position, train.bptt, ws.inputs.data(), ws.targets.data());
      model_forward(model, ws, T, /*training=*/false, nullptr);
      carry_state(ws, T);
      const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      if (s >= warmup) {
        rates.push_back(static_cast<double>(T) * eval_batch / seconds);
        peaks.push_back(probe.measure());
        fractions.push_back(rates.back() * flops / 1e9 / peaks.back());
      }
      position += T;
    }
    result.eval_tokens_per_s = median(rates);
    result.eval_peak_gflops = median(peaks);
    result.eval_fraction = median(fractions);
  }
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  lstm::prefer_passive_openmp_wait(argv);
  CLI::App app{"Time training and evaluation steps on synthetic ids; report tokens/s and the fraction "
               "of the matrix-product bound reached."};
  add_version_flag(app);
  std::string config_path;
  std::vector<std::string> overrides;
  int threads = 0, vocab = 10000, steps = 20, warmup = 5;
  bool as_json = false, sweep = false, blas_products = false, avx2_kernels = false;
  app.add_option("--config", config_path, "JSON config whose model, batch and bptt are timed");
  app.add_option("--set", overrides, "override a config key, KEY=VALUE (repeatable)");
  add_threads_option(app, threads);
  app.add_option("--vocab", vocab, "vocabulary size V of the synthetic ids (default: 10000)")
      ->check(CLI::Range(2, 1 << 24));
  app.add_option("--steps", steps, "timed steps, at least 1; the median is reported (default: 20)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--warmup", warmup, "untimed steps first (default: 5)")->check(CLI::Range(0, 100000));
  app.add_flag("--json", as_json, "print one JSON object");
  app.add_flag("--sweep", sweep,
               "sweep hidden size 100/200/650/1500 and batch size 1/20/64 (one-layer LSTM, E = H, bptt 35) in "
               "place of --config and --set; at most 2 untimed steps, and a quarter of --steps (at least 3) "
               "timed at H >= 650");
  auto* blas_flag = app.add_flag("--blas-products", blas_products,
               "run the recurrent step products and the decoder's three products through the BLAS instead of "
               "the packed kernel, for comparison");
  app.add_flag("--avx2-kernels", avx2_kernels,
               "run the packed products and the softmax with their AVX2 kernels on a CPU with AVX-512, for "
               "comparison (the results are the same bits); no effect on a CPU without AVX-512")
      ->excludes(blas_flag);
  if (const int code = parse_command_line(app, argc, argv); code >= 0) return code;

  return run_reporting_errors([&]() -> int {
    set_num_threads(threads);
    set_packed_products(!blas_products);
    set_avx512_kernels(!avx2_kernels);
    PeakProbe probe;
    const double eigen_peak = eigen_gemm_gflops(5);
    if (sweep) {
      std::printf("threads %d, %s, %s products; each fraction divides a training step's GFLOP/s by a 1024^3 "
                  "sgemm timed right after it (now %.1f GFLOP/s; eigen: %.1f GFLOP/s)\n",
                  num_threads(), gemm_backend(), packed_products_name(), probe.measure(), eigen_peak);
      std::printf("| hidden | batch | train tok/s | train GFLOP/s | fraction of bound | eval tok/s |\n");
      std::printf("|---:|---:|---:|---:|---:|---:|\n");
      for (int hidden : {100, 200, 650, 1500}) {
        for (int batch : {1, 20, 64}) {
          ModelConfig c;
          c.cell = CellType::kLstm;
          c.vocab_size = vocab;
          c.embedding_size = c.hidden_size = hidden;
          TrainSettings t;
          t.batch_size = batch;
          t.bptt = 35;
          // Fewer timed steps for the largest models keep the sweep within minutes.
          const int n = hidden >= 650 ? std::max(3, steps / 4) : steps;
          const StepTimes times = time_steps(c, t, batch, std::min(warmup, 2), n, 1, probe);
          const double gflops = times.train_tokens_per_s * matrix_flops_per_token(c, true) / 1e9;
          std::printf("| %d | %d | %.0f | %.1f | %.3f | %.0f |\n", hidden, batch, times.train_tokens_per_s, gflops,
                      times.train_fraction, times.eval_tokens_per_s);
          std::fflush(stdout);
        }
      }
      return 0;
    }
    if (config_path.empty()) throw ConfigError("missing --config FILE (or --sweep): see --help");
    Settings s = load_settings(config_path, overrides);
    s.model.vocab_size = vocab;
    const StepTimes times = time_steps(s.model, s.train, s.eval.batch_size, warmup, steps, s.train.seed, probe);
    const double train_flops = matrix_flops_per_token(s.model, true);
    const double eval_flops = matrix_flops_per_token(s.model, false);
    const double train_gflops = times.train_tokens_per_s * train_flops / 1e9;
    const double eval_gflops = times.eval_tokens_per_s * eval_flops / 1e9;
    // The per-step products of the first layer as the threads run them: each
    // thread takes ceil(B / threads) streams.
    const int gates = gate_rows(s.model.cell, s.model.hidden_size);
    const int per_thread = (s.train.batch_size + num_threads() - 1) / num_threads();
    const int eval_per_thread = (s.eval.batch_size + num_threads() - 1) / num_threads();
    const ProductRates forward =
        time_recurrent_product(gates, s.model.hidden_size, per_thread, Trans::kNo, 50);
    const ProductRates backward =
        time_recurrent_product(s.model.hidden_size, gates, per_thread, Trans::kYes, 50);
    const ProductRates eval_forward =
        time_recurrent_product(gates, s.model.hidden_size, eval_per_thread, Trans::kNo, 50);
    const int columns = s.train.batch_size * s.train.bptt;
    const DecoderRates decoder = time_decoder_products(s.model.hidden_size, vocab, columns, 9);
    const double decoder_peak = probe.measure();
    const SoftmaxTimes softmax = time_softmax(vocab, 20);
    // One column's logits product (2 H V flops) at one thread's share of the sgemm's rate.
    const double logits_column_us = 2.0 * s.model.hidden_size * vocab / (decoder_peak / num_threads() * 1e9) * 1e6;
    if (as_json) {
      const nlohmann::json out = {{"config", config_path},
                                  {"threads", num_threads()},
                                  {"backend", gemm_backend()},
                                  {"products", packed_products_name()},
                                  {"batch_size", s.train.batch_size},
                                  {"eval_batch_size", s.eval.batch_size},
                                  {"bptt", s.train.bptt},
                                  {"train_tokens_per_s", times.train_tokens_per_s},
                                  {"eval_tokens_per_s", times.eval_tokens_per_s},
                                  {"train_flops_per_token", train_flops},
                                  {"eval_flops_per_token", eval_flops},
                                  {"train_gflops", train_gflops},
                                  {"eval_gflops", eval_gflops},
                                  {"train_peak_gflops", times.train_peak_gflops},
                                  {"eval_peak_gflops", times.eval_peak_gflops},
                                  {"eigen_peak_gflops", eigen_peak},
                                  {"train_fraction_of_bound", times.train_fraction},
                                  {"eval_fraction_of_bound", times.eval_fraction},
                                  {"decoder_product_gflops",
                                   {{"logits", decoder.logits},
                                    {"dw", decoder.weight_grad},
                                    {"dh", decoder.input_grad},
                                    {"sgemm_after", decoder_peak}}},
                                  {"softmax_us_per_column",
                                   {{"eval", softmax.eval_us},
                                    {"train", softmax.train_us},
                                    {"logits_product_at_sgemm_rate", logits_column_us}}},
                                  {"parameter_bytes", times.parameter_bytes},
                                  {"gradient_bytes", times.gradient_bytes},
                                  {"optimizer_bytes", times.optimizer_bytes},
                                  {"train_activation_bytes", times.train_activation_bytes},
                                  {"eval_activation_bytes", times.eval_activation_bytes},
                                  {"peak_rss_bytes", peak_rss_bytes()},
                                  {"step_product_gflops",
                                   {{"train_forward", {{"packed", forward.packed}, {"blas", forward.blas}}},
                                    {"train_backward", {{"packed", backward.packed}, {"blas", backward.blas}}},
                                    {"eval_forward",
                                     {{"packed", eval_forward.packed}, {"blas", eval_forward.blas}}}}}};
      std::printf("%s\n", out.dump().c_str());
    } else {
      std::printf("config            %s (batch %d, eval batch %d, bptt %d, V %d, %d threads, %s products)\n",
                  config_path.c_str(), s.train.batch_size, s.eval.batch_size, s.train.bptt, vocab, num_threads(),
                  packed_products_name());
      std::printf("sgemm 1024^3      %.1f GFLOP/s after training steps, %.1f after evaluation steps (%s), "
                  "eigen %.1f GFLOP/s\n",
                  times.train_peak_gflops, times.eval_peak_gflops, gemm_backend(), eigen_peak);
      std::printf("train             %.0f tokens/s, %.2f MFLOP/token, %.1f GFLOP/s, %.3f of the bound\n",
                  times.train_tokens_per_s, train_flops / 1e6, train_gflops, times.train_fraction);
      std::printf("eval              %.0f tokens/s, %.2f MFLOP/token, %.1f GFLOP/s, %.3f of the bound\n",
                  times.eval_tokens_per_s, eval_flops / 1e6, eval_gflops, times.eval_fraction);
      std::printf("eval / train      %.2f\n", times.eval_tokens_per_s / times.train_tokens_per_s);
      std::printf("step product      GFLOP/s on one thread, packed / blas: train forward %dx%dx%d %.1f / %.1f, "
                  "train backward %dx%dx%d %.1f / %.1f, eval forward %dx%dx%d %.1f / %.1f\n",
                  gates, s.model.hidden_size, per_thread, forward.packed, forward.blas, s.model.hidden_size, gates,
                  per_thread, backward.packed, backward.blas, gates, s.model.hidden_size, eval_per_thread,
                  eval_forward.packed, eval_forward.blas);
      std::printf("decoder products  GFLOP/s, %s, %d threads: logits %dx%dx%d %.1f, dW %dx%dx%d %.1f, "
                  "dh %dx%dx%d %.1f; sgemm 1024^3 right after %.1f\n",
                  packed_products_name(), num_threads(), vocab, s.model.hidden_size, columns,
                  decoder.logits, s.model.hidden_size, columns, vocab, decoder.weight_grad, s.model.hidden_size,
                  vocab, columns, decoder.input_grad, decoder_peak);
      std::printf("softmax           us per column of %d logits on one thread: eval %.2f, train %.2f; the column's "
                  "logits product at the sgemm's rate per thread: %.2f\n",
                  vocab, softmax.eval_us, softmax.train_us, logits_column_us);
      const double mb = 1024.0 * 1024.0;
      std::printf("memory (MiB)      parameters %.1f, gradients %.1f, optimizer %.1f, train activations %.1f, "
                  "eval activations %.1f; peak RSS %.1f\n",
                  times.parameter_bytes / mb, times.gradient_bytes / mb, times.optimizer_bytes / mb,
                  times.train_activation_bytes / mb, times.eval_activation_bytes / mb, peak_rss_bytes() / mb);
    }
    return 0;
  });
}

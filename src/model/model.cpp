#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "ops/softmax_cross_entropy.h"
#include "tensor/gemm.h"
#include "tensor/memory.h"
#include "tensor/parallel.h"
#include "util/error.h"

namespace lstm {

namespace {

std::string layer_name(int layer, const char* what) {
  return "rnn." + std::to_string(layer) + "." + what;
}

int layer_input_size(const ModelConfig& c, int layer) {
  return layer == 0 ? c.embedding_size : c.hidden_size;
}

void fill_normal(MatrixMap m, Rng& rng, double scale) {
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(rng.normal() * scale);
}

void fill_uniform(MatrixMap m, Rng& rng, float range) {
  for (Eigen::Index i = 0; i < m.size(); ++i) {
    m.data()[i] = (2.0f * rng.uniform() - 1.0f) * range;
  }
}

// Fills mask (rows x T*B) with 0 or 1/(1-p). A variational mask is drawn for
// the B streams once and repeated at every step.
void draw_dropout_mask(Matrix& mask, int steps, int batch, float p, bool variational, Rng& rng) {
  const float keep_scale = 1.0f / (1.0f - p);
  const Eigen::Index count = mask.rows() * (variational ? batch : steps * batch);
  // A local copy keeps the generator's state in registers. The product with 0
  // or 1 leaves no branch to mispredict, because whether a unit is kept is a
  // coin toss that no branch predictor learns.
  Rng local = rng;
  float* out = mask.data();
  for (Eigen::Index i = 0; i < count; ++i) {
    const bool unit_kept = !(local.uniform() < p);
    out[i] = keep_scale * static_cast<float>(unit_kept);
  }
  rng = local;
  if (variational) {
    for (int t = 1; t < steps; ++t) mask.middleCols(t * batch, batch) = mask.leftCols(batch);
  }
}

// Writes x * mask, element by element, into out, which may be x. The threads
// take contiguous ranges of columns.
void apply_mask(const ConstMatRef& x, const Matrix& mask, MatRef out) {
  const Eigen::Index cols = x.cols();
  const int parts = num_threads();
  parallel_for(parts, [&](Eigen::Index part) {
    const Eigen::Index j0 = cols * part / parts;
    const Eigen::Index n = cols * (part + 1) / parts - j0;
    out.middleCols(j0, n).array() = x.middleCols(j0, n).array() * mask.middleCols(j0, n).array();
  });
}

}  // namespace

LanguageModel::LanguageModel(const ModelConfig& config) : config_(config) {
  const int V = config.vocab_size, E = config.embedding_size, H = config.hidden_size;
  if (config.tie_weights && E != H) {
    throw ConfigError("model.tie_weights needs model.embedding_size (" + std::to_string(E) +
                      ") equal to model.hidden_size (" + std::to_string(H) +
                      "): set them to the same value or turn tying off");
  }
  const int G = gate_rows(config.cell, H);
  params_.add_matrix("embedding.weight", E, V);
  for (int l = 0; l < config.num_layers; ++l) {
    params_.add_matrix(layer_name(l, "weight_x"), G, layer_input_size(config, l));
    params_.add_matrix(layer_name(l, "weight_h"), G, H);
    params_.add_vector(layer_name(l, "bias"), G);
  }
  if (!config.tie_weights) params_.add_matrix("decoder.weight", H, V);
  params_.add_vector("decoder.bias", V);
  params_.finalize();

  auto index_of = [&](const std::string& name) {
    const auto& entries = params_.entries();
    for (std::size_t i = 0; i < entries.size(); ++i) {
      if (entries[i].name == name) return i;
    }
    throw std::logic_error("parameter " + name + " was not laid out");
  };
  embedding_ = index_of("embedding.weight");
  decoder_weight_ = index_of(config.tie_weights ? "embedding.weight" : "decoder.weight");
  decoder_bias_ = index_of("decoder.bias");
  for (int l = 0; l < config.num_layers; ++l) {
    layers_.push_back({index_of(layer_name(l, "weight_x")), index_of(layer_name(l, "weight_h")),
                       index_of(layer_name(l, "bias"))});
  }
}

std::uint64_t LanguageModel::parameter_count(const ModelConfig& c) {
  const std::uint64_t V = static_cast<std::uint64_t>(c.vocab_size), E = static_cast<std::uint64_t>(c.embedding_size);
  const std::uint64_t H = static_cast<std::uint64_t>(c.hidden_size);
  const std::uint64_t G = static_cast<std::uint64_t>(gate_rows(c.cell, c.hidden_size));
  std::uint64_t count = V * E + V;
  for (int l = 0; l < c.num_layers; ++l) {
    count += G * static_cast<std::uint64_t>(layer_input_size(c, l)) + G * H + G;
  }
  if (!c.tie_weights) count += H * V;
  return count;
}

void LanguageModel::initialize(Rng& rng) {
  params_.values().setZero();
  const bool book = config_.init == InitScheme::kBook;
  const float range = config_.init_range;
  auto draw = [&](MatrixMap m, double fan_in, double book_scale_override = 0.0) {
    if (book) {
      fill_normal(m, rng, book_scale_override > 0.0 ? book_scale_override : 1.0 / std::sqrt(fan_in));
    } else {
      fill_uniform(m, rng, range);
    }
  };
  draw(embedding(), 0.0, /*book_scale_override=*/0.01);
  for (int l = 0; l < config_.num_layers; ++l) {
    draw(params_.value(layer_name(l, "weight_x")), layer_input_size(config_, l));
    draw(params_.value(layer_name(l, "weight_h")), config_.hidden_size);
  }
  if (!config_.tie_weights) draw(params_.value("decoder.weight"), config_.hidden_size);
}

RecurrentWeights LanguageModel::layer_weights(int layer) {
  const LayerEntries& e = layers_[static_cast<std::size_t>(layer)];
  auto wx = params_.value(entry(e.wx));
  auto wh = params_.value(entry(e.wh));
  auto b = params_.value(entry(e.b));
  return {ConstMatrixMap(wx.data(), wx.rows(), wx.cols()),
          ConstMatrixMap(wh.data(), wh.rows(), wh.cols()),
          ConstMatrixMap(b.data(), b.rows(), b.cols())};
}

RecurrentGrads LanguageModel::layer_grads(int layer) {
  const LayerEntries& e = layers_[static_cast<std::size_t>(layer)];
  return {params_.grad(entry(e.wx)), params_.grad(entry(e.wh)), params_.grad(entry(e.b))};
}

Workspace::Workspace(const ModelConfig& c, int batch_, int max_steps_, WorkspaceUse use_)
    : batch(batch_), max_steps(max_steps_), use(use_) {
  const int TB = batch * max_steps;
  const int E = c.embedding_size, H = c.hidden_size, V = c.vocab_size;
  const bool training = use == WorkspaceUse::kTraining;
  inputs.assign(TB, 0);
  targets.assign(TB, 0);
  embedded = Matrix::Zero(E, TB);
  for (int l = 0; l < c.num_layers; ++l) {
    layers.emplace_back(c.cell, layer_input_size(c, l), H, batch, max_steps, /*backward=*/training);
  }
  logits = zero_matrix(V, TB);
  column_loss = Vector::Zero(TB);
  const bool packed = packed_products() && TB >= kPackedDecoderColumns;
  if (packed) {
    column_max = Matrix::Zero(PackedMatrix::kMaxLanes, TB);
    packed_w = PackedMatrix(training ? std::max(PackedMatrix::floats_for(V, H), PackedMatrix::floats_for(H, V))
                                     : PackedMatrix::floats_for(V, H));
  }
  if (!training) return;

  if (packed) packed_top = PackedMatrix(H, TB);

  if (c.dropout > 0.0f) {
    masks.push_back(Matrix::Zero(E, TB));
    for (int l = 0; l < c.num_layers; ++l) {
      masks.push_back(Matrix::Zero(H, TB));
      dropped.push_back(Matrix::Zero(H, TB));
    }
  }
  d_hidden_a = Matrix::Zero(H, TB);
  d_hidden_b = Matrix::Zero(H, TB);
  d_embedded = Matrix::Zero(E, TB);
}

double model_forward(LanguageModel& model, Workspace& ws, int steps, bool training,
                     Rng* dropout_rng, LossReduction reduction) {
  const ModelConfig& c = model.config();
  const int B = ws.batch, TB = steps * B, L = c.num_layers;
  if (training && ws.use != WorkspaceUse::kTraining) {
    throw std::logic_error("model_forward in training mode on an evaluation workspace");
  }
  ws.dropout_active = training && c.dropout > 0.0f;
  const bool pack_every_window = ws.use == WorkspaceUse::kTraining;
  const bool pack_wh = pack_every_window || !ws.recurrent_packed;
  ws.recurrent_packed = true;

  // 1. Embedding lookup (and dropout on its output).
  auto emb = model.embedding();
  for (int j = 0; j < TB; ++j) ws.embedded.col(j) = emb.col(ws.inputs[j]);
  if (ws.dropout_active) {
    draw_dropout_mask(ws.masks[0], steps, B, c.dropout, c.variational_dropout, *dropout_rng);
    apply_mask(ws.embedded.leftCols(TB), ws.masks[0], ws.embedded.leftCols(TB));
  }

  // 2. Recurrent layers; each one's input is the previous output after dropout.
  for (int l = 0; l < L; ++l) {
    RecurrentCache& cache = ws.layers[l];
    const ConstMatRef input = l == 0 ? ConstMatRef(ws.embedded.leftCols(TB))
                              : ws.dropout_active ? ConstMatRef(ws.dropped[l - 1].leftCols(TB))
                                                  : ConstMatRef(ws.layers[l - 1].outputs(steps));
    recurrent_forward(cache, model.layer_weights(l), input, steps, pack_wh);
    if (ws.dropout_active) {
      draw_dropout_mask(ws.masks[l + 1], steps, B, c.dropout, c.variational_dropout, *dropout_rng);
      apply_mask(cache.outputs(steps), ws.masks[l + 1], ws.dropped[l].leftCols(TB));
    }
  }
  const ConstMatRef top = ws.dropout_active ? ConstMatRef(ws.dropped[L - 1].leftCols(TB))
                                            : ConstMatRef(ws.layers[L - 1].outputs(steps));

  // 3. Decoder: logits = W^T h (+ b, added inside the softmax pass).
  // 4. Softmax cross-entropy; in training, dL/dlogits of the mean loss.
  auto logits = ws.logits.leftCols(TB);
  std::optional<float> grad_scale;
  if (training) {
    grad_scale = 1.0f / static_cast<float>(reduction == LossReduction::kMean ? TB : B);
  }
  const float* bias = model.decoder_bias().data();
  if (ws.packed_w.bytes() > 0 && TB >= kPackedDecoderColumns) {
    // Each thread takes one range of columns, runs its product and then the
    // softmax over them. Narrower chunks would keep a chunk's logits in cache
    // for the softmax, but each chunk streams all of W. On a Xeon with 2 MiB
    // of L2 per core, chunks of H / 2 columns made the logits and softmax 10%
    // slower at H = 100 and 5% slower at H = 650.
    if (pack_every_window || !ws.decoder_packed) ws.packed_w.pack(model.decoder_weight(), Trans::kYes);
    ws.decoder_packed = true;
    const int threads = num_threads();
    parallel_for(threads, [&](Eigen::Index part) {
      const int j0 = static_cast<int>(TB * part / threads);
      const int n = static_cast<int>(TB * (part + 1) / threads) - j0;
      if (n == 0) return;
      auto block = logits.middleCols(j0, n);
      float* column_max = ws.column_max.col(j0).data();
      ws.packed_w.multiply_logits(top.middleCols(j0, n), bias, block, column_max);
      softmax_cross_entropy(block, nullptr, ws.targets.data() + j0, ws.column_loss.data() + j0, grad_scale,
                            Threads::kCaller, column_max);
    });
  } else {
    gemm(Trans::kYes, Trans::kNo, 1.0f, model.decoder_weight(), top, 0.0f, logits);
    softmax_cross_entropy(logits, bias, ws.targets.data(), ws.column_loss.data(), grad_scale);
  }
  double total = 0.0;
  for (int j = 0; j < TB; ++j) total += ws.column_loss[j];
  return total;
}

void model_backward(LanguageModel& model, Workspace& ws, int steps) {
  if (ws.use != WorkspaceUse::kTraining) throw std::logic_error("model_backward on an evaluation workspace");
  const ModelConfig& c = model.config();
  const int TB = steps * ws.batch, L = c.num_layers;
  const auto dlogits = ws.logits.leftCols(TB);
  const ConstMatRef top = ws.dropout_active ? ConstMatRef(ws.dropped[L - 1].leftCols(TB))
                                            : ConstMatRef(ws.layers[L - 1].outputs(steps));

  // undo 3: dW += h dlogits^T, db += sum of dlogits, dh = W dlogits.
  Matrix* d_out = &ws.d_hidden_a;
  Matrix* d_in = &ws.d_hidden_b;
  if (ws.packed_w.bytes() > 0 && TB >= kPackedDecoderColumns) {
    // Each thread takes a range of words for dW (its columns of dW) and a
    // range of columns for dh, so no element is summed across threads.
    ws.packed_top.pack(top, Trans::kNo);
    ws.packed_w.pack(model.decoder_weight(), Trans::kNo);
    const int threads = num_threads();
    const int V = c.vocab_size;
    auto dw = model.decoder_weight_grad();
    parallel_for(threads, [&](Eigen::Index part) {
      const int v0 = static_cast<int>(V * part / threads);
      const int words = static_cast<int>(V * (part + 1) / threads) - v0;
      if (words > 0) {
        ws.packed_top.multiply_transposed(dlogits.middleRows(v0, words), 1.0f, dw.middleCols(v0, words));
      }
      const int j0 = static_cast<int>(TB * part / threads);
      const int n = static_cast<int>(TB * (part + 1) / threads) - j0;
      if (n > 0) ws.packed_w.multiply(dlogits.middleCols(j0, n), 0.0f, d_out->middleCols(j0, n));
    });
  } else {
    gemm(Trans::kNo, Trans::kYes, 1.0f, top, dlogits, 1.0f, model.decoder_weight_grad());
    gemm(Trans::kNo, Trans::kNo, 1.0f, model.decoder_weight(), dlogits, 0.0f, d_out->leftCols(TB));
  }
  gemv_add_row_sums(dlogits, model.decoder_bias_grad().data());

  // undo 2, top layer first; dropout masks scale the gradient as they scaled the value.
  for (int l = L - 1; l >= 0; --l) {
    if (ws.dropout_active) apply_mask(d_out->leftCols(TB), ws.masks[l + 1], d_out->leftCols(TB));
    const ConstMatRef input = l == 0 ? ConstMatRef(ws.embedded.leftCols(TB))
                              : ws.dropout_active ? ConstMatRef(ws.dropped[l - 1].leftCols(TB))
                                                  : ConstMatRef(ws.layers[l - 1].outputs(steps));
    MatRef d_input = l == 0 ? MatRef(ws.d_embedded.leftCols(TB)) : MatRef(d_in->leftCols(TB));
    RecurrentGrads grads = model.layer_grads(l);
    recurrent_backward(ws.layers[l], model.layer_weights(l), grads, input, d_out->leftCols(TB),
                       &d_input, steps);
    std::swap(d_out, d_in);
  }

  // undo 1: each looked-up column adds its gradient to its word's row.
  if (ws.dropout_active) apply_mask(ws.d_embedded.leftCols(TB), ws.masks[0], ws.d_embedded.leftCols(TB));
  auto d_emb = model.embedding_grad();
  for (int j = 0; j < TB; ++j) d_emb.col(ws.inputs[j]) += ws.d_embedded.col(j);
}

std::size_t workspace_bytes(const Workspace& ws) {
  std::size_t floats = 0;
  auto add = [&](const auto& m) { floats += static_cast<std::size_t>(m.size()); };
  add(ws.embedded);
  add(ws.logits);
  add(ws.d_hidden_a);
  add(ws.d_hidden_b);
  add(ws.d_embedded);
  add(ws.column_loss);
  add(ws.column_max);
  for (const auto& m : ws.dropped) add(m);
  for (const auto& m : ws.masks) add(m);
  for (const auto& c : ws.layers) {
    for (const Matrix* m : {&c.gates, &c.hbuf, &c.cbuf, &c.tanh_c, &c.rh, &c.dgates, &c.dh_next, &c.dc_next,
                            &c.dh_step, &c.drh, &c.dh_norm_sums, &c.dc_norm_sums}) {
      add(*m);
    }
  }
  std::size_t packed = ws.packed_w.bytes() + ws.packed_top.bytes();
  for (const auto& c : ws.layers) {
    packed += c.recur.bytes() + c.recur_t.bytes() + c.recur_n.bytes() + c.recur_n_t.bytes();
    for (const PackedMatrix& m : c.recur_units) packed += m.bytes();
  }
  return floats * sizeof(float) + packed + (ws.inputs.size() + ws.targets.size()) * sizeof(TokenId);
}

void carry_state(Workspace& ws, int steps) {
  for (auto& cache : ws.layers) {
    cache.initial_h() = cache.last_h(steps);
    if (cache.cell == CellType::kLstm) cache.initial_c() = cache.last_c(steps);
  }
}

void reset_state(Workspace& ws) {
  ws.recurrent_packed = false;
  ws.decoder_packed = false;
  for (auto& cache : ws.layers) {
    cache.initial_h().setZero();
    if (cache.cell == CellType::kLstm) cache.initial_c().setZero();
  }
}

}  // namespace lstm

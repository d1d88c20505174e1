#include "layers/recurrent.h"

#include <omp.h>

#include <algorithm>
#include <stdexcept>

#include "tensor/gemm.h"

namespace lstm {

namespace {
// Evaluation of an LSTM splits each step by hidden units when Wh is larger
// than this. A thread that takes a range of streams reads all of Wh at every
// step, from L3 once Wh outgrows L2. Split by units, each thread reads only its
// rows, but the threads synchronize at every step. On a Xeon with 2 MiB of L2
// per core, evaluation with the split was 8% faster at H = 650 (6.8 MiB) and
// 21% at H = 1500, as fast at H = 512 (4 MiB), and slower below.
constexpr std::size_t kUnitSplitBytes = std::size_t{4} << 20;
bool g_unit_split = true;
}  // namespace

void set_unit_split(bool enabled) { g_unit_split = enabled; }

RecurrentCache::RecurrentCache(CellType cell_, int input_size_, int hidden_size_, int batch_,
                               int max_steps_, bool backward_)
    : cell(cell_),
      input_size(input_size_),
      hidden_size(hidden_size_),
      batch(batch_),
      max_steps(max_steps_),
      backward(backward_) {
  const int H = hidden_size, B = batch, T = max_steps;
  const int G = gate_rows(cell, H);
  const bool lstm = cell == CellType::kLstm, gru = cell == CellType::kGru;
  gates = Matrix::Zero(G, T * B);
  hbuf = Matrix::Zero(H, (T + 1) * B);
  if (lstm) {
    cbuf = Matrix::Zero(H, (T + 1) * B);
    tanh_c = Matrix::Zero(H, T * B);
  }
  if (gru) rh = Matrix::Zero(H, T * B);
  packed = packed_products();
  const int recur_rows = gru ? 2 * H : G;
  const int parts = std::min(num_threads(), H / PackedMatrix::kPanelRows);
  const bool split_units = g_unit_split && packed && lstm && !backward && parts >= 2 &&
                           static_cast<std::size_t>(G) * H * sizeof(float) > kUnitSplitBytes;
  if (packed && !split_units) {
    recur = PackedMatrix(recur_rows, H);
    if (gru) recur_n = PackedMatrix(H, H);
  }
  if (split_units) {
    // Each part's first unit starts a panel, so its rows of a gate fill whole
    // panels but the last part's.
    for (int p = 0; p <= parts; ++p) {
      unit_first.push_back(p == parts ? H : H * p / parts / PackedMatrix::kPanelRows * PackedMatrix::kPanelRows);
    }
    for (int p = 0; p < parts; ++p) {
      for (int q = 0; q < 4; ++q) recur_units.emplace_back(unit_first[p + 1] - unit_first[p], H);
    }
  }
  if (!backward) return;

  dgates = Matrix::Zero(G, T * B);
  dh_next = Matrix::Zero(H, B);
  dh_step = Matrix::Zero(H, B);
  dh_norm = Vector::Zero(T);
  dc_norm = Vector::Zero(T);
  dh_norm_sums = Matrix::Zero(T, B);
  dc_norm_sums = Matrix::Zero(T, B);
  if (lstm) dc_next = Matrix::Zero(H, B);
  if (gru) drh = Matrix::Zero(H, B);
  if (packed) {
    recur_t = PackedMatrix(H, recur_rows);
    if (gru) recur_n_t = PackedMatrix(H, H);
  }
}

namespace {

// Calls body(part, first_stream, stream_count) for contiguous ranges of the B
// streams, one per thread. Returns the number of parts. The packed products
// are this project's own single-threaded code, so they can always run side by
// side. BLAS products can only when the BLAS build allows it.
template <typename Body>
int for_stream_ranges(const RecurrentCache& cache, const Body& body) {
  const int batch = cache.batch;
  const int threads = std::min(cache.packed ? num_threads() : stream_parallelism(), batch);
  if (threads <= 1) {
    body(0, 0, batch);
    return 1;
  }
  int parts = 1;
#pragma omp parallel num_threads(threads)
  {
    const int part = omp_get_thread_num();
    const int count = omp_get_num_threads();
#pragma omp single
    parts = count;
    const int first = batch * part / count;
    const int last = batch * (part + 1) / count;
    body(part, first, last - first);
  }
  return parts;
}

// out = m * in + beta * out, where m is Wh or a block of it, packed or not.
void recurrent_product(const PackedMatrix& packed, const ConstMatRef& m, bool use_packed,
                       Trans trans, const ConstMatRef& in, float beta, MatRef out) {
  if (use_packed) {
    packed.multiply(in, beta, out);
  } else {
    gemm(trans, Trans::kNo, 1.0f, m, in, beta, out);
  }
}

// Steps 0..steps-1 of streams [b0, b0 + nb), after the input projection.
void forward_streams(RecurrentCache& cache, const RecurrentWeights& w, int steps, int b0, int nb) {
  const int B = cache.batch, H = cache.hidden_size;
  const bool packed = cache.packed;
  for (int t = 0; t < steps; ++t) {
    auto g_t = cache.gates.middleCols(t * B + b0, nb);
    auto h_prev = cache.hbuf.middleCols(t * B + b0, nb);
    auto h_t = cache.hbuf.middleCols((t + 1) * B + b0, nb);
    // The rest of 1: the bias, added here while the step's columns are in cache.
    g_t.colwise() += w.b.col(0);

    switch (cache.cell) {
      case CellType::kRnn:
        // 2. Recurrent projection, 3. nonlinearity.
        recurrent_product(cache.recur, w.wh, packed, Trans::kNo, h_prev, 1.0f, g_t);
        g_t.array() = g_t.array().tanh();
        h_t = g_t;
        break;
      case CellType::kRnnRelu:
        recurrent_product(cache.recur, w.wh, packed, Trans::kNo, h_prev, 1.0f, g_t);
        g_t.array() = g_t.array().max(0.0f);
        h_t = g_t;
        break;
      case CellType::kLstm: {
        // 2. Recurrent projection of all four gates.
        recurrent_product(cache.recur, w.wh, packed, Trans::kNo, h_prev, 1.0f, g_t);
        // 3. Gate nonlinearities: f, i, o sigmoid, g tanh.
        g_t.topRows(3 * H).array() = g_t.topRows(3 * H).array().logistic();
        g_t.bottomRows(H).array() = g_t.bottomRows(H).array().tanh();
        // 4. Cell update and output.
        auto f = g_t.topRows(H).array();
        auto i = g_t.middleRows(H, H).array();
        auto o = g_t.middleRows(2 * H, H).array();
        auto g = g_t.bottomRows(H).array();
        auto c_prev = cache.cbuf.middleCols(t * B + b0, nb).array();
        auto c_t = cache.cbuf.middleCols((t + 1) * B + b0, nb).array();
        auto tanh_c = cache.tanh_c.middleCols(t * B + b0, nb).array();
        c_t = f * c_prev + i * g;
        tanh_c = c_t.tanh();
        h_t.array() = o * tanh_c;
        break;
      }
      case CellType::kGru: {
        // 2. Update and reset gates from h_{t-1}.
        recurrent_product(cache.recur, w.wh.topRows(2 * H), packed, Trans::kNo, h_prev, 1.0f,
                          g_t.topRows(2 * H));
        g_t.topRows(2 * H).array() = g_t.topRows(2 * H).array().logistic();
        // 3. Candidate from the reset state r * h_{t-1}.
        auto rh_t = cache.rh.middleCols(t * B + b0, nb);
        rh_t.array() = g_t.middleRows(H, H).array() * h_prev.array();
        recurrent_product(cache.recur_n, w.wh.bottomRows(H), packed, Trans::kNo, rh_t, 1.0f,
                          g_t.bottomRows(H));
        g_t.bottomRows(H).array() = g_t.bottomRows(H).array().tanh();
        // 4. Interpolation between h_{t-1} and the candidate.
        auto z = g_t.topRows(H).array();
        auto n = g_t.bottomRows(H).array();
        h_t.array() = z * h_prev.array() + (1.0f - z) * n;
        break;
      }
    }
  }
}

// Runs steps 0..steps-1 of the units [unit_first[part], unit_first[part + 1])
// of every stream, for an LSTM split by units. Call it inside a parallel
// region of unit_first.size() - 1 threads, which synchronize at every step.
void forward_units(RecurrentCache& cache, const RecurrentWeights& w, int steps, int part) {
  const int B = cache.batch, H = cache.hidden_size;
  const int u0 = cache.unit_first[part], nu = cache.unit_first[part + 1] - u0;
  for (int t = 0; t < steps; ++t) {
    auto g_t = cache.gates.middleCols(t * B, B);
    const auto h_prev = cache.hbuf.middleCols(t * B, B);
    for (int q = 0; q < 4; ++q) {
      auto rows = g_t.middleRows(q * H + u0, nu);
      rows.colwise() += w.b.col(0).segment(q * H + u0, nu);
      cache.recur_units[4 * part + q].multiply(h_prev, 1.0f, rows);
    }
    auto f = g_t.middleRows(u0, nu).array();
    auto i = g_t.middleRows(H + u0, nu).array();
    auto o = g_t.middleRows(2 * H + u0, nu).array();
    auto g = g_t.middleRows(3 * H + u0, nu).array();
    f = f.logistic();
    i = i.logistic();
    o = o.logistic();
    g = g.tanh();
    auto c_t = cache.cbuf.block(u0, (t + 1) * B, nu, B).array();
    auto tanh_c = cache.tanh_c.block(u0, t * B, nu, B).array();
    c_t = f * cache.cbuf.block(u0, t * B, nu, B).array() + i * g;
    tanh_c = c_t.tanh();
    cache.hbuf.block(u0, (t + 1) * B, nu, B).array() = o * tanh_c;
    // The next step multiplies all of h_t, which every part wrote a piece of.
#pragma omp barrier
  }
}

// Backward through steps-1..0 of streams [b0, b0 + nb); fills dgates and the
// part-th column of the norm sums.
void backward_streams(RecurrentCache& cache, const RecurrentWeights& w, const ConstMatRef& d_output,
                      int steps, int part, int b0, int nb) {
  const int B = cache.batch, H = cache.hidden_size;
  const bool packed = cache.packed;
  auto dh_next = cache.dh_next.middleCols(b0, nb);
  auto dh_step = cache.dh_step.middleCols(b0, nb);
  dh_next.setZero();
  if (cache.cell == CellType::kLstm) cache.dc_next.middleCols(b0, nb).setZero();

  for (int t = steps - 1; t >= 0; --t) {
    auto g_t = cache.gates.middleCols(t * B + b0, nb);
    auto dg_t = cache.dgates.middleCols(t * B + b0, nb);
    auto h_prev = cache.hbuf.middleCols(t * B + b0, nb);
    auto h_t = cache.hbuf.middleCols((t + 1) * B + b0, nb);

    // dL/dh_t: from the layer above (or the output) and from step t+1.
    dh_step = d_output.middleCols(t * B + b0, nb) + dh_next;
    auto dh = dh_step.array();
    cache.dh_norm_sums(t, part) = dh_step.colwise().norm().sum();

    switch (cache.cell) {
      case CellType::kRnn:
        // undo 3: h = tanh(a), da = dh * (1 - h^2); undo 2: dh_{t-1} = Wh^T da.
        dg_t.array() = dh * (1.0f - h_t.array().square());
        recurrent_product(cache.recur_t, w.wh, packed, Trans::kYes, dg_t, 0.0f, dh_next);
        break;
      case CellType::kRnnRelu:
        // undo 3: h = max(0, a), da = dh where h > 0.
        dg_t.array() = (h_t.array() > 0.0f).select(dh, 0.0f);
        recurrent_product(cache.recur_t, w.wh, packed, Trans::kYes, dg_t, 0.0f, dh_next);
        break;
      case CellType::kLstm: {
        auto f = g_t.topRows(H).array();
        auto i = g_t.middleRows(H, H).array();
        auto o = g_t.middleRows(2 * H, H).array();
        auto gg = g_t.bottomRows(H).array();
        auto tanh_c = cache.tanh_c.middleCols(t * B + b0, nb).array();
        auto c_prev = cache.cbuf.middleCols(t * B + b0, nb).array();
        auto dc_next = cache.dc_next.middleCols(b0, nb);
        auto dc = dc_next.array();
        // undo 4: h = o * tanh(c), so dc += dh * o * (1 - tanh(c)^2).
        dc += dh * o * (1.0f - tanh_c.square());
        cache.dc_norm_sums(t, part) = dc_next.colwise().norm().sum();
        // undo 3 through 4: c = f*c_prev + i*g; sigmoid' = s(1-s), tanh' = 1 - t^2.
        dg_t.topRows(H).array() = dc * c_prev * f * (1.0f - f);
        dg_t.middleRows(H, H).array() = dc * gg * i * (1.0f - i);
        dg_t.middleRows(2 * H, H).array() = dh * tanh_c * o * (1.0f - o);
        dg_t.bottomRows(H).array() = dc * i * (1.0f - gg.square());
        // The cell path: dc_{t-1} = dc_t * f, only an element-wise product.
        dc *= f;
        // undo 2: dh_{t-1} = Wh^T da.
        recurrent_product(cache.recur_t, w.wh, packed, Trans::kYes, dg_t, 0.0f, dh_next);
        break;
      }
      case CellType::kGru: {
        auto z = g_t.topRows(H).array();
        auto r = g_t.middleRows(H, H).array();
        auto n = g_t.bottomRows(H).array();
        auto hp = h_prev.array();
        auto drh = cache.drh.middleCols(b0, nb);
        // undo 4: h = z*h_prev + (1-z)*n.
        dg_t.bottomRows(H).array() = dh * (1.0f - z) * (1.0f - n.square());
        dg_t.topRows(H).array() = dh * (hp - n) * z * (1.0f - z);
        // undo 3: n = tanh(Wx_n x + Wh_n (r*h_prev) + b_n).
        recurrent_product(cache.recur_n_t, w.wh.bottomRows(H), packed, Trans::kYes,
                          dg_t.bottomRows(H), 0.0f, drh);
        dg_t.middleRows(H, H).array() = drh.array() * hp * r * (1.0f - r);
        dh_next.array() = dh * z + drh.array() * r;
        // undo 2: the gates' dependence on h_prev.
        recurrent_product(cache.recur_t, w.wh.topRows(2 * H), packed, Trans::kYes,
                          dg_t.topRows(2 * H), 1.0f, dh_next);
        break;
      }
    }
  }
}

}  // namespace

void recurrent_forward(RecurrentCache& cache, const RecurrentWeights& w, const ConstMatRef& input,
                       int steps, bool pack_wh) {
  const int B = cache.batch;
  const int TB = steps * B;

  // 1. Input projection for all steps at once: gates = Wx X; the bias is
  // added step by step.
  auto all_gates = cache.gates.leftCols(TB);
  gemm(Trans::kNo, Trans::kNo, 1.0f, w.wx, input, 0.0f, all_gates);

  // Wh is constant through the window: lay it out once for the T products.
  if (cache.packed && pack_wh && cache.recur_units.empty()) {
    if (cache.cell == CellType::kGru) {
      const int H = cache.hidden_size;
      cache.recur.pack(w.wh.topRows(2 * H), Trans::kNo);
      cache.recur_n.pack(w.wh.bottomRows(H), Trans::kNo);
    } else {
      cache.recur.pack(w.wh, Trans::kNo);
    }
  }

  if (!cache.recur_units.empty()) {
    const int parts = static_cast<int>(cache.unit_first.size()) - 1;
    if (pack_wh) {
      for (int p = 0; p < parts; ++p) {
        const int u0 = cache.unit_first[p], nu = cache.unit_first[p + 1] - u0;
        for (int q = 0; q < 4; ++q) {
          cache.recur_units[4 * p + q].pack(w.wh.middleRows(q * cache.hidden_size + u0, nu), Trans::kNo);
        }
      }
    }
#pragma omp parallel num_threads(parts)
    forward_units(cache, w, steps, omp_get_thread_num());
    return;
  }

  // 2-4 for every step, streams in parallel.
  for_stream_ranges(cache, [&](int, int b0, int nb) { forward_streams(cache, w, steps, b0, nb); });
}

void recurrent_backward(RecurrentCache& cache, const RecurrentWeights& w, RecurrentGrads& g,
                        const ConstMatRef& input, const ConstMatRef& d_output, MatRef* d_input,
                        int steps) {
  if (!cache.backward) throw std::logic_error("recurrent_backward on a cache built without backward buffers");
  const int B = cache.batch, H = cache.hidden_size;
  const int TB = steps * B;

  if (cache.packed) {
    if (cache.cell == CellType::kGru) {
      cache.recur_t.pack(w.wh.topRows(2 * H), Trans::kYes);
      cache.recur_n_t.pack(w.wh.bottomRows(H), Trans::kYes);
    } else {
      cache.recur_t.pack(w.wh, Trans::kYes);
    }
  }

  // undo 4, 3 and the recurrence of 2, step by step, streams in parallel.
  const int parts = for_stream_ranges(cache, [&](int part, int b0, int nb) {
    backward_streams(cache, w, d_output, steps, part, b0, nb);
  });
  for (int t = 0; t < steps; ++t) {
    cache.dh_norm[t] = cache.dh_norm_sums.row(t).head(parts).sum() / static_cast<float>(B);
    if (cache.cell == CellType::kLstm) {
      cache.dc_norm[t] = cache.dc_norm_sums.row(t).head(parts).sum() / static_cast<float>(B);
    }
  }

  // undo 1 and 2 for the weights, each as one product over every step.
  auto all_dgates = cache.dgates.leftCols(TB);
  gemm(Trans::kNo, Trans::kYes, 1.0f, all_dgates, input, 1.0f, g.wx);
  auto h_prev_all = cache.hbuf.leftCols(TB);
  if (cache.cell == CellType::kGru) {
    gemm(Trans::kNo, Trans::kYes, 1.0f, all_dgates.topRows(2 * H), h_prev_all, 1.0f, g.wh.topRows(2 * H));
    gemm(Trans::kNo, Trans::kYes, 1.0f, all_dgates.bottomRows(H), cache.rh.leftCols(TB), 1.0f,
         g.wh.bottomRows(H));
  } else {
    gemm(Trans::kNo, Trans::kYes, 1.0f, all_dgates, h_prev_all, 1.0f, g.wh);
  }
  gemv_add_row_sums(all_dgates, g.b.data());
  if (d_input != nullptr) {
    gemm(Trans::kYes, Trans::kNo, 1.0f, w.wx, all_dgates, 0.0f, *d_input);
  }
}

}  // namespace lstm

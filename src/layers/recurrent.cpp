#include "layers/recurrent.h"

#include "tensor/gemm.h"

namespace lstm {

RecurrentCache::RecurrentCache(CellType cell_, int input_size_, int hidden_size_, int batch_,
                               int max_steps_)
    : cell(cell_),
      input_size(input_size_),
      hidden_size(hidden_size_),
      batch(batch_),
      max_steps(max_steps_) {
  const int H = hidden_size, B = batch, T = max_steps;
  const int G = gate_rows(cell, H);
  gates = Matrix::Zero(G, T * B);
  dgates = Matrix::Zero(G, T * B);
  hbuf = Matrix::Zero(H, (T + 1) * B);
  dh_next = Matrix::Zero(H, B);
  dh_step = Matrix::Zero(H, B);
  dh_norm = Vector::Zero(T);
  dc_norm = Vector::Zero(T);
  if (cell == CellType::kLstm) {
    cbuf = Matrix::Zero(H, (T + 1) * B);
    tanh_c = Matrix::Zero(H, T * B);
    dc_next = Matrix::Zero(H, B);
  }
  if (cell == CellType::kGru) {
    rh = Matrix::Zero(H, T * B);
    drh = Matrix::Zero(H, B);
  }
}

void recurrent_forward(RecurrentCache& cache, const RecurrentWeights& w, const ConstMatRef& input,
                       int steps) {
  const int B = cache.batch, H = cache.hidden_size;
  const int TB = steps * B;

  // 1. Input projection and bias for all steps at once: gates = Wx X + b.
  auto all_gates = cache.gates.leftCols(TB);
  gemm(Trans::kNo, Trans::kNo, 1.0f, w.wx, input, 0.0f, all_gates);
  all_gates.colwise() += w.b.col(0);

  for (int t = 0; t < steps; ++t) {
    auto g_t = cache.gates.middleCols(t * B, B);
    auto h_prev = cache.hbuf.middleCols(t * B, B);
    auto h_t = cache.hbuf.middleCols((t + 1) * B, B);

    switch (cache.cell) {
      case CellType::kRnn:
        // 2. Recurrent projection, 3. nonlinearity.
        gemm(Trans::kNo, Trans::kNo, 1.0f, w.wh, h_prev, 1.0f, g_t);
        g_t.array() = g_t.array().tanh();
        h_t = g_t;
        break;
      case CellType::kRnnRelu:
        gemm(Trans::kNo, Trans::kNo, 1.0f, w.wh, h_prev, 1.0f, g_t);
        g_t.array() = g_t.array().max(0.0f);
        h_t = g_t;
        break;
      case CellType::kLstm: {
        // 2. Recurrent projection of all four gates.
        gemm(Trans::kNo, Trans::kNo, 1.0f, w.wh, h_prev, 1.0f, g_t);
        // 3. Gate nonlinearities: f, i, o sigmoid, g tanh.
        g_t.topRows(3 * H).array() = g_t.topRows(3 * H).array().logistic();
        g_t.bottomRows(H).array() = g_t.bottomRows(H).array().tanh();
        // 4. Cell update and output.
        auto f = g_t.topRows(H).array();
        auto i = g_t.middleRows(H, H).array();
        auto o = g_t.middleRows(2 * H, H).array();
        auto g = g_t.bottomRows(H).array();
        auto c_prev = cache.cbuf.middleCols(t * B, B).array();
        auto c_t = cache.cbuf.middleCols((t + 1) * B, B).array();
        auto tanh_c = cache.tanh_c.middleCols(t * B, B).array();
        c_t = f * c_prev + i * g;
        tanh_c = c_t.tanh();
        h_t.array() = o * tanh_c;
        break;
      }
      case CellType::kGru: {
        // 2. Update and reset gates from h_{t-1}.
        gemm(Trans::kNo, Trans::kNo, 1.0f, w.wh.topRows(2 * H), h_prev, 1.0f, g_t.topRows(2 * H));
        g_t.topRows(2 * H).array() = g_t.topRows(2 * H).array().logistic();
        // 3. Candidate from the reset state r * h_{t-1}.
        auto rh_t = cache.rh.middleCols(t * B, B);
        rh_t.array() = g_t.middleRows(H, H).array() * h_prev.array();
        gemm(Trans::kNo, Trans::kNo, 1.0f, w.wh.bottomRows(H), rh_t, 1.0f, g_t.bottomRows(H));
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

void recurrent_backward(RecurrentCache& cache, const RecurrentWeights& w, RecurrentGrads& g,
                        const ConstMatRef& input, const ConstMatRef& d_output, MatRef* d_input,
                        int steps) {
  const int B = cache.batch, H = cache.hidden_size;
  const int TB = steps * B;

  cache.dh_next.setZero();
  if (cache.cell == CellType::kLstm) cache.dc_next.setZero();

  for (int t = steps - 1; t >= 0; --t) {
    auto g_t = cache.gates.middleCols(t * B, B);
    auto dg_t = cache.dgates.middleCols(t * B, B);
    auto h_prev = cache.hbuf.middleCols(t * B, B);
    auto h_t = cache.hbuf.middleCols((t + 1) * B, B);

    // dL/dh_t: from the layer above (or the output) and from step t+1.
    cache.dh_step = d_output.middleCols(t * B, B) + cache.dh_next;
    auto dh = cache.dh_step.array();
    cache.dh_norm[t] = cache.dh_step.colwise().norm().mean();

    switch (cache.cell) {
      case CellType::kRnn:
        // undo 3: h = tanh(a), da = dh * (1 - h^2); undo 2: dh_{t-1} = Wh^T da.
        dg_t.array() = dh * (1.0f - h_t.array().square());
        gemm(Trans::kYes, Trans::kNo, 1.0f, w.wh, dg_t, 0.0f, cache.dh_next);
        break;
      case CellType::kRnnRelu:
        // undo 3: h = max(0, a), da = dh where h > 0.
        dg_t.array() = (h_t.array() > 0.0f).select(dh, 0.0f);
        gemm(Trans::kYes, Trans::kNo, 1.0f, w.wh, dg_t, 0.0f, cache.dh_next);
        break;
      case CellType::kLstm: {
        auto f = g_t.topRows(H).array();
        auto i = g_t.middleRows(H, H).array();
        auto o = g_t.middleRows(2 * H, H).array();
        auto gg = g_t.bottomRows(H).array();
        auto tanh_c = cache.tanh_c.middleCols(t * B, B).array();
        auto c_prev = cache.cbuf.middleCols(t * B, B).array();
        auto dc = cache.dc_next.array();
        // undo 4: h = o * tanh(c), so dc += dh * o * (1 - tanh(c)^2).
        dc += dh * o * (1.0f - tanh_c.square());
        cache.dc_norm[t] = cache.dc_next.colwise().norm().mean();
        // undo 3 through 4: c = f*c_prev + i*g; sigmoid' = s(1-s), tanh' = 1 - t^2.
        dg_t.topRows(H).array() = dc * c_prev * f * (1.0f - f);
        dg_t.middleRows(H, H).array() = dc * gg * i * (1.0f - i);
        dg_t.middleRows(2 * H, H).array() = dh * tanh_c * o * (1.0f - o);
        dg_t.bottomRows(H).array() = dc * i * (1.0f - gg.square());
        // The cell path: dc_{t-1} = dc_t * f, only an element-wise product.
        dc *= f;
        // undo 2: dh_{t-1} = Wh^T da.
        gemm(Trans::kYes, Trans::kNo, 1.0f, w.wh, dg_t, 0.0f, cache.dh_next);
        break;
      }
      case CellType::kGru: {
        auto z = g_t.topRows(H).array();
        auto r = g_t.middleRows(H, H).array();
        auto n = g_t.bottomRows(H).array();
        auto hp = h_prev.array();
        // undo 4: h = z*h_prev + (1-z)*n.
        dg_t.bottomRows(H).array() = dh * (1.0f - z) * (1.0f - n.square());
        dg_t.topRows(H).array() = dh * (hp - n) * z * (1.0f - z);
        // undo 3: n = tanh(Wx_n x + Wh_n (r*h_prev) + b_n).
        gemm(Trans::kYes, Trans::kNo, 1.0f, w.wh.bottomRows(H), dg_t.bottomRows(H), 0.0f,
             cache.drh);
        dg_t.middleRows(H, H).array() = cache.drh.array() * hp * r * (1.0f - r);
        cache.dh_next.array() = dh * z + cache.drh.array() * r;
        // undo 2: the gates' dependence on h_prev.
        gemm(Trans::kYes, Trans::kNo, 1.0f, w.wh.topRows(2 * H), dg_t.topRows(2 * H), 1.0f,
             cache.dh_next);
        break;
      }
    }
  }

  // undo 1 and 2 for the weights, each as one product over every step.
  auto all_dgates = cache.dgates.leftCols(TB);
  gemm(Trans::kNo, Trans::kYes, 1.0f, all_dgates, input, 1.0f, g.wx);
  auto h_prev_all = cache.hbuf.leftCols(TB);
  if (cache.cell == CellType::kGru) {
    gemm(Trans::kNo, Trans::kYes, 1.0f, all_dgates.topRows(2 * H), h_prev_all, 1.0f,
         g.wh.topRows(2 * H));
    gemm(Trans::kNo, Trans::kYes, 1.0f, all_dgates.bottomRows(H), cache.rh.leftCols(TB), 1.0f,
         g.wh.bottomRows(H));
  } else {
    gemm(Trans::kNo, Trans::kYes, 1.0f, all_dgates, h_prev_all, 1.0f, g.wh);
  }
  g.b.col(0) += all_dgates.rowwise().sum();
  if (d_input != nullptr) {
    gemm(Trans::kYes, Trans::kNo, 1.0f, w.wx, all_dgates, 0.0f, *d_input);
  }
}

}  // namespace lstm

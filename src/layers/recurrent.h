#pragma once
// Recurrent layers over one BPTT window: forward caches what backward needs,
// backward adds into the gradient buffers (zeroed once per step by the caller).
//
// Shapes: X (I x T*B) layer input, I = E for the first layer and H above it;
// Wx (G x I), Wh (G x H), b (G); every activation column is (t, b) at t*B + b.
//
// Cells (x = x_t, h = h_{t-1}, c = c_{t-1}, s = sigmoid):
//   rnn       h_t = tanh(Wx x + Wh h + b)
//   rnn_relu  h_t = max(0, Wx x + Wh h + b)
//   lstm      [f; i; o; g] = [s; s; s; tanh](Wx x + Wh h + b), gate rows in that order
//             c_t = f*c + i*g,  h_t = o*tanh(c_t)
//   gru       [z; r] = s(Wx_zr x + Wh_zr h + b_zr)            (Cho et al. 2014)
//             n = tanh(Wx_n x + Wh_n (r*h) + b_n)
//             h_t = z*h + (1 - z)*n    (z weights the previous state)
//
// Only h_t is passed to the next layer. c_t is the LSTM's memory cell. It is
// reached only by + and element-wise *, so its gradient survives long windows.

#include <vector>

#include "model/model_config.h"
#include "tensor/packed_gemm.h"
#include "tensor/types.h"

namespace lstm {

struct RecurrentWeights {
  ConstMatrixMap wx;  // G x I
  ConstMatrixMap wh;  // G x H
  ConstMatrixMap b;   // G x 1
};

struct RecurrentGrads {
  MatrixMap wx;  // G x I
  MatrixMap wh;  // G x H
  MatrixMap b;   // G x 1
};

// Buffers for one layer over windows of up to max_steps steps of B streams.
// Without `backward`, the buffers only backward uses stay empty.
struct RecurrentCache {
  RecurrentCache(CellType cell, int input_size, int hidden_size, int batch, int max_steps,
                 bool backward = true);

  CellType cell;
  int input_size;   // I
  int hidden_size;  // H
  int batch;        // B
  int max_steps;    // T max
  bool backward;    // recurrent_backward() may run on this cache

  Matrix gates;   // G x T*B: gate values after their nonlinearity
  Matrix hbuf;    // H x (T+1)*B: block 0 is the carried-in h, block t+1 is h_t
  Matrix cbuf;    // lstm only, H x (T+1)*B: block 0 carried-in c, block t+1 c_t
  Matrix tanh_c;  // lstm only, H x T*B
  Matrix rh;      // gru only, H x T*B: r * h_{t-1}
  Matrix dgates;  // G x T*B: dL/d(pre-activation)
  Matrix dh_next; // H x B: dL/dh_{t-1} flowing back from step t
  Matrix dc_next; // lstm only, H x B
  Matrix dh_step; // H x B scratch
  Matrix drh;     // gru only, H x B scratch
  Vector dh_norm; // T: mean over streams of |dL/dh_t|, filled by backward
  Vector dc_norm; // T: the same for dL/dc_t (lstm only)
  Matrix dh_norm_sums;  // T x B: per-thread sums behind dh_norm (at most B threads)
  Matrix dc_norm_sums;  // T x B: the same for dc_norm

  // Wh laid out for the per-step products when packed_products() held at
  // construction:
  // packed at the start of each forward (recur) and backward (recur_t) window.
  // rnn, lstm: recur = Wh (G x H), recur_t = Wh^T (H x G).
  // gru: recur and recur_t hold the z and r rows (2H), recur_n and recur_n_t
  // the candidate rows (H), because the candidate multiplies r*h instead of h.
  bool packed;
  PackedMatrix recur, recur_t, recur_n, recur_n_t;
  // An evaluation cache of an LSTM whose Wh outgrows a core's cache splits
  // each step by hidden units instead of streams (see recurrent_forward).
  // Part p owns units [unit_first[p], unit_first[p + 1]) and keeps its rows
  // of gate q (f, i, o, g) packed in recur_units[4 p + q]. Both are empty
  // in every other cache.
  std::vector<int> unit_first;
  std::vector<PackedMatrix> recur_units;

  // h_T and c_T after the last forward window (the state to carry on).
  auto last_h(int steps) { return hbuf.middleCols(steps * batch, batch); }
  auto last_c(int steps) { return cbuf.middleCols(steps * batch, batch); }
  auto initial_h() { return hbuf.leftCols(batch); }
  auto initial_c() { return cbuf.leftCols(batch); }
  // Outputs h_0 .. h_{T-1}: H x T*B.
  auto outputs(int steps) { return hbuf.middleCols(batch, steps * batch); }
};

// Sets whether caches built from now on may split an LSTM's evaluation steps
// by hidden units (the default) or always split by streams, for tests and
// comparisons. The two give the same values up to rounding.
void set_unit_split(bool enabled);

// The recurrence runs the B streams in parallel: each thread takes a range of
// streams through every step of the window with single-threaded products, so
// the window needs one synchronization instead of one per step. The products
// over all steps (input projection, weight gradients) use every thread.
// Evaluation of an LSTM whose Wh outgrows a core's cache splits each step by
// hidden units instead, with one synchronization per step, so that each
// thread reads only its rows of Wh (RecurrentCache::unit_first).
//
// Runs the layer over `steps` steps. The carried-in state must already be in
// cache.initial_h() (and initial_c() for lstm). input: I x steps*B.
// pack_wh false reuses the packed Wh of an earlier window, for callers that
// know the weights have not changed since.
void recurrent_forward(RecurrentCache& cache, const RecurrentWeights& w, const ConstMatRef& input,
                       int steps, bool pack_wh = true);

// Adds the window's parameter gradients into g and writes dL/dinput into
// d_input (I x steps*B) unless it is null. d_output (H x steps*B) is dL/dh_t
// from above. No gradient flows into the carried-in state beyond this window,
// but its value is left in cache.dh_next (and dc_next) for diagnostics.
// The cache must have been built with backward = true.
void recurrent_backward(RecurrentCache& cache, const RecurrentWeights& w, RecurrentGrads& g,
                        const ConstMatRef& input, const ConstMatRef& d_output, MatRef* d_input,
                        int steps);

}  // namespace lstm

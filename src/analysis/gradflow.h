#pragma once
// Gradient flow through time: how much of the loss's gradient at the last
// step of a window reaches the state k steps earlier.
//
// Each window of T steps and B streams runs forward from a zero state without
// dropout. The loss is the cross-entropy of the B predictions of the LAST step
// only (mean over the streams), and backpropagation runs through all T steps.
// recurrent_backward records, for every step t, the mean
// over streams of |dL/dh_t| (and |dL/dc_t| for lstm); distance k is step
// T-1-k. Because no other step has a loss, the norm at distance k measures
// only what survived k steps of the recurrence (and, below the top layer,
// the path through the layers above).

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "layers/recurrent.h"
#include "model/model.h"

namespace lstm {

struct GradflowOptions {
  int steps = 100;      // T, window length
  int batches = 10;     // N windows, averaged
  int batch_size = 20;  // B streams per window
};

// Buffers for one window. Only the last step has logits (V x B).
struct GradflowWorkspace {
  GradflowWorkspace(const ModelConfig& config, int batch, int steps);

  int batch;  // B
  int steps;  // T
  std::vector<TokenId> inputs;   // T*B ids, column order t*B + b
  std::vector<TokenId> targets;  // T*B ids, of which only the last step's B are scored
  Matrix embedded;               // E x T*B
  std::vector<RecurrentCache> layers;
  std::vector<Matrix> grad_wx, grad_wh, grad_b;  // per layer, so the model's own gradients stay untouched
  Matrix logits;                 // V x B, then dL/dlogits
  Vector loss;                   // B: cross-entropy of each stream's last prediction (nats)
  Matrix d_output, d_input;      // H x T*B each: dL/d(layer output), dL/d(layer input) above layer 0
};

// Runs the window in ws.inputs from a zero state, puts the loss on the last
// step's targets and backpropagates through every step and layer. Leaves
// |dL/dh_t| (and |dL/dc_t|) in ws.layers[l].dh_norm (dc_norm). Returns the
// loss, the mean over the B streams (nats).
double backprop_last_step_loss(LanguageModel& model, GradflowWorkspace& ws);

// The mean over windows of one layer's gradient norm by distance.
struct GradflowCurve {
  int layer = 0;
  char kind = 'h';           // 'h': |dL/dh|, 'c': |dL/dc| (lstm only)
  std::vector<double> norm;  // index k = distance from the last step, k = 0..T-1
};

struct GradflowResult {
  CellType cell = CellType::kLstm;
  GradflowOptions options;
  std::vector<GradflowCurve> curves;  // layer 0 h, (layer 0 c,) layer 1 h, ...
};

// Measures options.batches consecutive windows of the token stream, cut into
// options.batch_size streams as the trainer cuts it. Throws ConfigError on
// options < 1 and DataError when ids are too few for the windows.
GradflowResult measure_gradient_flow(LanguageModel& model, const std::vector<TokenId>& ids,
                                     const GradflowOptions& options);

// Norms below this are treated as underflow and end the fitted range.
inline constexpr double kGradflowFloor = 1e-30;

struct DecayFit {
  double rate = 0.0;       // exp of the least-squares slope of log norm over k, or NaN when fit_points < 2
  int fit_points = 0;      // leading distances 0..fit_points-1 whose norm is finite and > kGradflowFloor
  std::optional<int> threshold_distance;  // first k whose norm is < 1e-3 or > 1e3 times norm[0], or not finite
  bool exploding = false;  // the threshold was crossed upward (or the norm became non-finite)
};

// Fits the per-step rate of a norm curve and finds its 1e-3 / 1e3 distance.
// With norm[0] not finite or <= kGradflowFloor there is no fit and no distance.
DecayFit fit_decay(const std::vector<double>& norm);

// Formats the results for the console: norms at a few distances, then one
// "layer L dh|dc: rate ... ; threshold distance: K|none" line per curve.
std::string format_gradflow_report(const GradflowResult& result);

// Writes label,cell,layer,kind,distance,norm with a header row. Throws
// ConfigError for a label that CSV would need to quote, or an unwritable path.
void write_gradflow_csv(const std::filesystem::path& path, const std::string& label,
                        const GradflowResult& result);

// Runs `python script csv... -o out` and waits for it. Returns its exit code,
// or -1 when the interpreter cannot be started (not found, for example).
int run_plot_script(const std::string& python, const std::filesystem::path& script,
                    const std::vector<std::filesystem::path>& csv_files, const std::filesystem::path& out);

}  // namespace lstm

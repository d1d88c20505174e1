#include "config/settings.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include "util/error.h"

namespace lstm {

namespace {

using nlohmann::json;

enum class Kind { kInt, kFloat, kBool, kString };

struct KeySpec {
  const char* key;
  Kind kind;
  json default_value;
  const char* doc;
  std::optional<double> min = std::nullopt;  // inclusive unless min_exclusive
  std::optional<double> max = std::nullopt;  // inclusive unless max_exclusive
  bool min_exclusive = false;
  bool max_exclusive = false;
  std::vector<std::string> choices = {};
};

constexpr double kIntMax = static_cast<double>(std::numeric_limits<int>::max());

// Every config key: the single source for validation, defaults and docs.
const std::vector<KeySpec>& schema() {
  static const std::vector<KeySpec> keys = {
      {"run_dir", Kind::kString, "runs/run", "folder for config.json, metrics.jsonl, train.log, checkpoints/"},
      {"data.dir", Kind::kString, "data/ptb",
       "folder with ptb.{train,valid,test}.txt or {train,valid,test}.txt"},
      {"data.train", Kind::kString, "", "train file; empty = found in data.dir"},
      {"data.valid", Kind::kString, "", "validation file; empty = found in data.dir"},
      {"data.test", Kind::kString, "", "test file; empty = found in data.dir"},
      {"data.max_vocab_size", Kind::kInt, 0, "keep at most this many words (most frequent); 0 = all",
       0.0, kIntMax},
      {"data.min_count", Kind::kInt, 1, "leave out words seen fewer times in train", 1.0, kIntMax},
      {"data.unk_token", Kind::kString, "",
       "word that replaces out-of-vocabulary words; empty = such words are an error"},
      {"model.cell", Kind::kString, "lstm", "recurrent cell", std::nullopt, std::nullopt, false,
       false, {"rnn", "rnn_relu", "lstm", "gru"}},
      {"model.embedding_size", Kind::kInt, 100, "embedding size E", 1.0, 65536.0},
      {"model.hidden_size", Kind::kInt, 100, "hidden size H of every layer", 1.0, 65536.0},
      {"model.num_layers", Kind::kInt, 1, "stacked recurrent layers", 1.0, 64.0},
      {"model.dropout", Kind::kFloat, 0.0,
       "drop probability on embedding output, between layers and before the decoder", 0.0, 1.0,
       false, true},
      {"model.variational_dropout", Kind::kBool, false,
       "one dropout mask per sequence, reused at every time step"},
      {"model.tie_weights", Kind::kBool, false,
       "decoder shares the embedding matrix; needs embedding_size == hidden_size"},
      {"model.init", Kind::kString, "book",
       "\"book\": N(0,1)/sqrt(fan_in) weights, N(0,1)*0.01 embedding; \"uniform\": U(-init_range, init_range)",
       std::nullopt, std::nullopt, false, false, {"book", "uniform"}},
      {"model.init_range", Kind::kFloat, 0.1, "half-width of the uniform init", 0.0, 10.0, true},
      {"train.batch_size", Kind::kInt, 20, "parallel streams B", 1.0, 1e6},
      {"train.bptt", Kind::kInt, 35, "time steps T per truncated-BPTT window", 1.0, 1e5},
      {"train.epochs", Kind::kInt, 4, "passes over the train split", 1.0, 1e6},
      {"train.max_steps", Kind::kInt, 0, "stop after this many updates; 0 = no limit", 0.0, 9e15},
      {"train.lr", Kind::kFloat, 20.0, "learning rate", 0.0, 1e6, true},
      {"train.lr_decay", Kind::kFloat, 1.0, "lr divisor of the schedule; 1 = constant lr", 1.0, 1e6},
      {"train.lr_schedule", Kind::kString, "plateau",
       "\"plateau\": divide when validation perplexity does not improve; \"epoch\": divide every "
       "epoch from lr_decay_start on",
       std::nullopt, std::nullopt, false, false, {"plateau", "epoch"}},
      {"train.lr_decay_start", Kind::kInt, 1, "first epoch (1-based) divided by the \"epoch\" schedule",
       1.0, 1e6},
      {"train.clip_norm", Kind::kFloat, 0.25, "max global L2 norm of the gradient; 0 = no clipping",
       0.0, 1e9},
      {"train.loss_reduction", Kind::kString, "mean",
       "\"mean\": gradient of the mean loss per token; \"sum_over_time\": summed over the bptt steps and "
       "averaged over the streams (Zaremba et al.)",
       std::nullopt, std::nullopt, false, false, {"mean", "sum_over_time"}},
      {"train.seed", Kind::kInt, 1, "seed of initialization and dropout", 0.0, 9e15},
      {"train.log_interval", Kind::kInt, 100, "steps between log lines and metrics records", 1.0, 1e9},
      {"train.optimizer", Kind::kString, "sgd", "optimizer", std::nullopt, std::nullopt, false,
       false, {"sgd", "adam"}},
      {"train.adam_beta1", Kind::kFloat, 0.9, "Adam beta1", 0.0, 1.0, false, true},
      {"train.adam_beta2", Kind::kFloat, 0.999, "Adam beta2", 0.0, 1.0, false, true},
      {"train.adam_eps", Kind::kFloat, 1e-8, "Adam epsilon", 0.0, 1.0, true},
      {"train.weight_decay", Kind::kFloat, 0.0, "L2 penalty coefficient", 0.0, 1.0},
      {"train.threads", Kind::kInt, 0, "threads; 0 = all cores", 0.0, 1024.0},
      {"train.checkpoint_interval", Kind::kInt, 0,
       "steps between mid-epoch checkpoints; 0 = at epoch ends only", 0.0, 9e15},
      {"train.max_bad_steps", Kind::kInt, 5,
       "consecutive non-finite steps before restoring the last checkpoint at half the lr", 1.0, 1e6},
      {"train.log_gradflow_interval", Kind::kInt, 0,
       "steps between records of |dL/dh| at the first, middle and last window step; 0 = off", 0.0,
       9e15},
      {"eval.batch_size", Kind::kInt, 10, "streams used for evaluation", 1.0, 1e6},
      {"eval.bptt", Kind::kInt, 35, "evaluation window; does not change the result", 1.0, 1e5},
  };
  return keys;
}

const KeySpec* find_spec(const std::string& key) {
  for (const auto& spec : schema()) {
    if (key == spec.key) return &spec;
  }
  return nullptr;
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string last_segment(const std::string& key) {
  const std::size_t dot = key.rfind('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

// Names that other language-model trainers give to our keys (PyTorch's
// word_language_model example and common spellings), which edit distance
// would map to unrelated keys: "learning_rate" is closest to "log_interval".
const std::vector<std::pair<std::string_view, std::string_view>>& key_aliases() {
  static const std::vector<std::pair<std::string_view, std::string_view>> aliases = {
      {"learning_rate", "train.lr"},       {"clip", "train.clip_norm"},
      {"grad_clip", "train.clip_norm"},    {"max_grad_norm", "train.clip_norm"},
      {"tied", "model.tie_weights"},       {"nhid", "model.hidden_size"},
      {"emsize", "model.embedding_size"},  {"nlayers", "model.num_layers"},
  };
  return aliases;
}

// Returns the quoted suggestion for an unknown key. A known alias gives its
// key. Otherwise every schema key with the same last segment is offered ("lr"
// gives "train.lr"), else a key that begins with the unknown one ("train.batch"
// gives "train.batch_size"), else the closest key by edit distance.
std::string suggest_key(const std::string& key) {
  const std::string leaf = last_segment(key);
  for (const auto& [alias, target] : key_aliases()) {
    if (leaf == alias) return "\"" + std::string(target) + "\"";
  }
  std::string completion;
  std::string same_leaf;
  std::string closest;
  std::size_t closest_distance = std::numeric_limits<std::size_t>::max();
  for (const auto& spec : schema()) {
    if (last_segment(spec.key) == leaf) {
      same_leaf += same_leaf.empty() ? "\"" : " or \"";
      same_leaf += std::string(spec.key) + "\"";
    }
    if (completion.empty() && std::string_view(spec.key).starts_with(key)) completion = spec.key;
    const std::size_t distance = edit_distance(key, spec.key);
    if (distance < closest_distance) {
      closest_distance = distance;
      closest = spec.key;
    }
  }
  if (!same_leaf.empty()) return same_leaf;
  return "\"" + (completion.empty() ? closest : completion) + "\"";
}

// A value as JSON text for messages; invalid UTF-8 in strings is replaced
// rather than thrown on.
std::string show(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::kInt:
      return "an integer";
    case Kind::kFloat:
      return "a number";
    case Kind::kBool:
      return "true or false";
    case Kind::kString:
      return "a string";
  }
  return "?";
}

bool kind_matches(Kind kind, const json& value) {
  switch (kind) {
    case Kind::kInt:
      return value.is_number_integer();
    case Kind::kFloat:
      return value.is_number();
    case Kind::kBool:
      return value.is_boolean();
    case Kind::kString:
      return value.is_string();
  }
  return false;
}

// Collects "a.b.c" -> leaf value; objects nest, anything else is a leaf.
void flatten(const json& node, const std::string& prefix, std::vector<std::pair<std::string, json>>& out,
             const std::string& source) {
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it->is_object()) {
      if (find_spec(key) != nullptr) {
        throw ConfigError(source + ": " + key + " must be " + kind_name(find_spec(key)->kind) +
                          ", got an object");
      }
      flatten(*it, key, out, source);
    } else {
      out.emplace_back(key, *it);
    }
  }
}

void check_value(const KeySpec& spec, const json& value, const std::string& source) {
  if (!kind_matches(spec.kind, value)) {
    throw ConfigError(source + ": " + spec.key + " must be " + kind_name(spec.kind) + ", got " +
                      show(value));
  }
  if (!spec.choices.empty()) {
    const auto& text = value.get_ref<const std::string&>();
    if (std::find(spec.choices.begin(), spec.choices.end(), text) == spec.choices.end()) {
      std::string options;
      for (const auto& c : spec.choices) options += (options.empty() ? "\"" : ", \"") + c + "\"";
      throw ConfigError(source + ": " + spec.key + " has invalid value " + show(value) +
                        ": expected one of " + options);
    }
  }
  if (value.is_number()) {
    const double v = value.get<double>();
    const bool below = spec.min && (spec.min_exclusive ? v <= *spec.min : v < *spec.min);
    const bool above = spec.max && (spec.max_exclusive ? v >= *spec.max : v > *spec.max);
    if (below || above) {
      std::ostringstream range;
      range << (spec.min_exclusive ? "(" : "[") << (spec.min ? *spec.min : -INFINITY) << ", "
            << (spec.max ? *spec.max : INFINITY) << (spec.max_exclusive ? ")" : "]");
      throw ConfigError(source + ": " + spec.key + " = " + show(value) + " is out of range " +
                        range.str());
    }
  }
}

json parse_override_value(const std::string& text) {
  try {
    return json::parse(text);
  } catch (const json::exception&) {
    // Not JSON (or a number out of range): a plain string, which the type check reports.
    return json(text);
  }
}

// Line and column (1-based) of a byte offset in text.
std::pair<std::size_t, std::size_t> line_and_column(const std::string& text, std::size_t offset) {
  std::size_t line = 1, column = 1;
  for (std::size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return {line, column};
}

void set_nested(json& root, const std::string& key, const json& value) {
  json* node = &root;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = key.find('.', start);
    if (dot == std::string::npos) {
      (*node)[key.substr(start)] = value;
      return;
    }
    node = &(*node)[key.substr(start, dot - start)];
    start = dot + 1;
  }
}

}  // namespace

Settings settings_from_json(const json& document, const std::vector<std::string>& overrides,
                            const std::string& source) {
  if (!document.is_object()) {
    throw ConfigError(source + ": the config must be a JSON object, got " +
                      std::string(document.type_name()));
  }
  std::vector<std::pair<std::string, json>> leaves;
  flatten(document, "", leaves, source);
  const std::size_t first_override = leaves.size();
  for (const auto& item : overrides) {
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw ConfigError("invalid --set \"" + item + "\": expected key.path=value, e.g. train.lr=10");
    }
    leaves.emplace_back(item.substr(0, eq), parse_override_value(item.substr(eq + 1)));
  }

  json values = json::object();
  for (const auto& spec : schema()) values[spec.key] = spec.default_value;
  for (std::size_t i = 0; i < leaves.size(); ++i) {
    const auto& [key, value] = leaves[i];
    const std::string origin = i < first_override ? source : "--set";
    const KeySpec* spec = find_spec(key);
    if (spec == nullptr) {
      throw ConfigError(origin + ": unknown key \"" + key + "\"; did you mean " + suggest_key(key) + "?");
    }
    check_value(*spec, value, origin);
    values[key] = value;
  }

  Settings s;
  auto str = [&](const char* key) { return values[key].get<std::string>(); };
  auto integer = [&](const char* key) { return values[key].get<std::int64_t>(); };
  auto num = [&](const char* key) { return values[key].get<double>(); };
  auto flag = [&](const char* key) { return values[key].get<bool>(); };

  s.run_dir = str("run_dir");
  s.data.dir = str("data.dir");
  s.data.train_file = str("data.train");
  s.data.valid_file = str("data.valid");
  s.data.test_file = str("data.test");
  s.data.max_vocab_size = static_cast<int>(integer("data.max_vocab_size"));
  s.data.min_count = static_cast<int>(integer("data.min_count"));
  s.data.unk_token = str("data.unk_token");

  s.model.cell = parse_cell(str("model.cell"));
  s.model.embedding_size = static_cast<int>(integer("model.embedding_size"));
  s.model.hidden_size = static_cast<int>(integer("model.hidden_size"));
  s.model.num_layers = static_cast<int>(integer("model.num_layers"));
  s.model.dropout = static_cast<float>(num("model.dropout"));
  s.model.variational_dropout = flag("model.variational_dropout");
  s.model.tie_weights = flag("model.tie_weights");
  s.model.init = str("model.init") == "book" ? InitScheme::kBook : InitScheme::kUniform;
  s.model.init_range = static_cast<float>(num("model.init_range"));
  if (s.model.tie_weights && s.model.embedding_size != s.model.hidden_size) {
    throw ConfigError(source + ": model.tie_weights needs model.embedding_size (" +
                      std::to_string(s.model.embedding_size) + ") equal to model.hidden_size (" +
                      std::to_string(s.model.hidden_size) +
                      "): set them to the same value or set model.tie_weights to false");
  }

  s.train.batch_size = static_cast<int>(integer("train.batch_size"));
  s.train.bptt = static_cast<int>(integer("train.bptt"));
  s.train.epochs = static_cast<int>(integer("train.epochs"));
  s.train.max_steps = integer("train.max_steps");
  s.train.lr = num("train.lr");
  s.train.lr_decay = num("train.lr_decay");
  s.train.lr_schedule = str("train.lr_schedule") == "epoch" ? LrSchedule::kEpoch : LrSchedule::kPlateau;
  s.train.lr_decay_start = static_cast<int>(integer("train.lr_decay_start"));
  s.train.clip_norm = num("train.clip_norm");
  s.train.loss_reduction =
      str("train.loss_reduction") == "sum_over_time" ? LossReduction::kSumOverTime : LossReduction::kMean;
  s.train.seed = static_cast<std::uint64_t>(integer("train.seed"));
  s.train.log_interval = static_cast<int>(integer("train.log_interval"));
  s.train.optimizer = str("train.optimizer") == "adam" ? OptimizerKind::kAdam : OptimizerKind::kSgd;
  s.train.adam_beta1 = num("train.adam_beta1");
  s.train.adam_beta2 = num("train.adam_beta2");
  s.train.adam_eps = num("train.adam_eps");
  s.train.weight_decay = num("train.weight_decay");
  s.train.threads = static_cast<int>(integer("train.threads"));
  s.train.checkpoint_interval = integer("train.checkpoint_interval");
  s.train.max_bad_steps = static_cast<int>(integer("train.max_bad_steps"));
  s.train.log_gradflow_interval = integer("train.log_gradflow_interval");
  s.eval.batch_size = static_cast<int>(integer("eval.batch_size"));
  s.eval.bptt = static_cast<int>(integer("eval.bptt"));

  s.resolved = json::object();
  for (const auto& spec : schema()) set_nested(s.resolved, spec.key, values[spec.key]);
  return s;
}

Settings load_settings(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ConfigError("cannot open config file " + path.string() +
                      ": check the path (shipped configs are in configs/)");
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  json document;
  try {
    document = json::parse(text);
  } catch (const json::parse_error& e) {
    const std::size_t offset = e.byte > 0 ? e.byte - 1 : 0;
    const auto [line, column] = line_and_column(text, offset);
    throw ConfigError("malformed JSON in " + path.string() + " at line " + std::to_string(line) +
                      ", column " + std::to_string(column) + ": fix the syntax there");
  } catch (const json::exception& e) {
    // For example a number too large for a double (1e400).
    throw ConfigError("invalid JSON in " + path.string() + ": " + e.what());
  }
  return settings_from_json(document, overrides, path.string());
}

std::string describe_config_keys() {
  std::ostringstream out;
  for (const auto& spec : schema()) {
    out << "  " << spec.key << " (" << kind_name(spec.kind) << ", default " << spec.default_value.dump()
        << "): " << spec.doc;
    if (!spec.choices.empty()) {
      out << "; one of";
      for (const auto& c : spec.choices) out << " \"" << c << "\"";
    }
    out << "\n";
  }
  return out.str();
}

}  // namespace lstm

#include "io/checkpoint.h"

#include <nlohmann/json.hpp>

#include "train/optimizer.h"
#include "util/error.h"

namespace lstm {

namespace {

using nlohmann::json;

json state_to_json(const TrainingState& s) {
  json j = {{"epoch", s.epoch},
            {"position", s.position},
            {"step", s.step},
            {"lr", s.lr},
            {"lr_scale", s.lr_scale},
            {"rollbacks", s.rollbacks},
            {"dropout_rng", s.dropout_rng},
            {"elapsed_s", s.elapsed_s},
            {"tokens_trained", s.tokens_trained},
            {"clipped_steps", s.clipped_steps},
            {"epoch_steps", s.epoch_steps}};
  j["best_valid"] = s.best_valid ? json(*s.best_valid) : json(nullptr);
  j["best_valid_loss"] = s.best_valid_loss ? json(*s.best_valid_loss) : json(nullptr);
  return j;
}

// Reads an integer field; nlohmann's get<> on a float would be undefined behavior.
template <typename Int>
Int integer_field(const json& j, const char* key) {
  const json& value = j.at(key);
  if (!value.is_number_integer()) {
    throw json::type_error::create(302, std::string(key) + " is not an integer", &value);
  }
  return value.get<Int>();
}

double number_field(const json& j, const char* key) {
  const json& value = j.at(key);
  if (!value.is_number()) throw json::type_error::create(302, std::string(key) + " is not a number", &value);
  return value.get<double>();
}

TrainingState state_from_json(const json& j) {
  TrainingState s;
  s.epoch = integer_field<int>(j, "epoch");
  s.position = integer_field<std::int64_t>(j, "position");
  s.step = integer_field<std::int64_t>(j, "step");
  s.lr = number_field(j, "lr");
  s.lr_scale = number_field(j, "lr_scale");
  s.rollbacks = integer_field<int>(j, "rollbacks");
  const json& rng = j.at("dropout_rng");
  if (!rng.is_array() || rng.size() != s.dropout_rng.size()) {
    throw json::type_error::create(302, "dropout_rng is not an array of 4 integers", &rng);
  }
  for (std::size_t i = 0; i < s.dropout_rng.size(); ++i) {
    if (!rng[i].is_number_unsigned()) {
      throw json::type_error::create(302, "dropout_rng contains a value that is not an unsigned integer", &rng);
    }
    s.dropout_rng[i] = rng[i].get<std::uint64_t>();
  }
  s.elapsed_s = number_field(j, "elapsed_s");
  s.tokens_trained = integer_field<std::int64_t>(j, "tokens_trained");
  s.clipped_steps = integer_field<std::int64_t>(j, "clipped_steps");
  s.epoch_steps = integer_field<std::int64_t>(j, "epoch_steps");
  if (!j.at("best_valid").is_null()) s.best_valid = number_field(j, "best_valid");
  if (!j.at("best_valid_loss").is_null()) s.best_valid_loss = number_field(j, "best_valid_loss");
  return s;
}

std::vector<std::int64_t> checkpoint_shape(const TensorEntry& e) {
  return {e.shape.begin(), e.shape.end()};
}

}  // namespace

void save_checkpoint(const std::filesystem::path& path, const CheckpointInputs& in) {
  std::vector<TensorToWrite> tensors;
  ParamStore& params = in.model->params();
  for (const auto& e : params.entries()) {
    tensors.push_back({e.name, checkpoint_shape(e), params.values().data() + e.offset});
  }
  std::map<std::string, std::string> meta;
  meta["format"] = kCheckpointFormat;
  meta["format_version"] = std::to_string(kCheckpointVersion);
  meta["config"] = in.config->dump();
  meta["vocab"] = json(in.vocab->words()).dump();
  if (in.state != nullptr) {
    meta["training_state"] = state_to_json(*in.state).dump();
    const std::int64_t total = params.total_size();
    if (in.optimizer != nullptr && in.optimizer->kind() == OptimizerKind::kAdam) {
      tensors.push_back({"optimizer.adam_m", {total}, in.optimizer->first_moment().data()});
      tensors.push_back({"optimizer.adam_v", {total}, in.optimizer->second_moment().data()});
      meta["adam_updates"] = std::to_string(in.optimizer->update_count());
    }
    if (in.train_workspace != nullptr) {
      for (std::size_t l = 0; l < in.train_workspace->layers.size(); ++l) {
        RecurrentCache& cache = in.train_workspace->layers[l];
        // initial_h() is a block of hbuf whose columns are contiguous: B columns of H.
        tensors.push_back({"state.h." + std::to_string(l), {cache.batch, cache.hidden_size},
                           cache.hbuf.data()});
        if (cache.cell == CellType::kLstm) {
          tensors.push_back({"state.c." + std::to_string(l), {cache.batch, cache.hidden_size},
                             cache.cbuf.data()});
        }
      }
    }
  }
  write_safetensors(path, tensors, meta);
}

LoadedCheckpoint load_checkpoint(const std::filesystem::path& path) {
  LoadedCheckpoint ckpt;
  ckpt.path = path;
  ckpt.file = read_safetensors(path);
  const auto& meta = ckpt.file.metadata;
  auto invalid = [&](const std::string& what) -> CheckpointError {
    return CheckpointError("invalid checkpoint " + path.string() + ": " + what);
  };
  const auto format = meta.find("format");
  if (format == meta.end() || format->second != kCheckpointFormat) {
    throw invalid("bad magic: metadata \"format\" is " +
                  (format == meta.end() ? std::string("missing") : "\"" + format->second + "\"") +
                  ", expected \"" + kCheckpointFormat + "\" (not an lstm-lm checkpoint)");
  }
  const auto version = meta.find("format_version");
  if (version == meta.end() || version->second != std::to_string(kCheckpointVersion)) {
    throw invalid("unsupported format version " +
                  (version == meta.end() ? std::string("(missing)") : version->second) +
                  ", this build reads version " + std::to_string(kCheckpointVersion));
  }
  if (meta.find("checksum") == meta.end()) throw invalid("checksum is missing");
  for (const char* key : {"config", "vocab"}) {
    if (meta.find(key) == meta.end()) throw invalid(std::string("metadata \"") + key + "\" is missing");
  }
  json config, vocab_words;
  try {
    config = json::parse(meta.at("config"));
    vocab_words = json::parse(meta.at("vocab"));
    ckpt.vocab = Vocabulary(vocab_words.get<std::vector<std::string>>());
  } catch (const json::exception& e) {
    throw invalid(std::string("config or vocabulary metadata is malformed: ") + e.what());
  } catch (const DataError& e) {
    throw invalid(e.what());
  }
  try {
    ckpt.settings = settings_from_json(config, {}, path.string() + " (stored config)");
  } catch (const ConfigError& e) {
    throw invalid(e.what());
  }
  ckpt.settings.model.vocab_size = ckpt.vocab.size();
  if (ckpt.vocab.size() == 0) throw invalid("the vocabulary is empty");

  // Compare sizes before allocating, so a config claiming a huge model is
  // rejected instead of exhausting memory.
  const std::uint64_t needed = LanguageModel::parameter_count(ckpt.settings.model) * sizeof(float);
  if (needed > ckpt.file.data.size()) {
    throw invalid("its config needs " + std::to_string(needed) + " bytes of parameters but the file contains " +
                  std::to_string(ckpt.file.data.size()) + " bytes of tensors");
  }
  ckpt.model = std::make_unique<LanguageModel>(ckpt.settings.model);
  ParamStore& params = ckpt.model->params();
  for (const auto& e : params.entries()) {
    const auto it = ckpt.file.tensors.find(e.name);
    if (it == ckpt.file.tensors.end()) throw invalid("tensor \"" + e.name + "\" is missing");
    if (it->second.shape != checkpoint_shape(e)) {
      json expected = checkpoint_shape(e), actual = it->second.shape;
      throw invalid("tensor \"" + e.name + "\" has shape " + actual.dump() + " but its config needs " +
                    expected.dump());
    }
    ckpt.file.copy_tensor(e.name, params.values().data() + e.offset, static_cast<std::size_t>(e.size));
  }
  const auto state = meta.find("training_state");
  if (state != meta.end()) {
    try {
      ckpt.state = state_from_json(json::parse(state->second));
    } catch (const json::exception& e) {
      throw invalid(std::string("training_state metadata is malformed: ") + e.what());
    }
  }
  return ckpt;
}

void restore_training_buffers(const LoadedCheckpoint& ckpt, Optimizer& optimizer, Workspace& train_ws) {
  if (optimizer.kind() == OptimizerKind::kAdam) {
    const auto n = static_cast<std::size_t>(optimizer.first_moment().size());
    ckpt.file.copy_tensor("optimizer.adam_m", optimizer.first_moment().data(), n);
    ckpt.file.copy_tensor("optimizer.adam_v", optimizer.second_moment().data(), n);
    const auto it = ckpt.file.metadata.find("adam_updates");
    if (it == ckpt.file.metadata.end()) {
      throw CheckpointError("invalid checkpoint " + ckpt.path.string() + ": adam_updates is missing");
    }
    try {
      optimizer.update_count() = std::stoll(it->second);
    } catch (const std::exception&) {
      throw CheckpointError("invalid checkpoint " + ckpt.path.string() + ": adam_updates \"" + it->second +
                            "\" is not an integer");
    }
  }
  for (std::size_t l = 0; l < train_ws.layers.size(); ++l) {
    RecurrentCache& cache = train_ws.layers[l];
    const auto count = static_cast<std::size_t>(cache.batch) * cache.hidden_size;
    ckpt.file.copy_tensor("state.h." + std::to_string(l), cache.hbuf.data(), count);
    if (cache.cell == CellType::kLstm) {
      ckpt.file.copy_tensor("state.c." + std::to_string(l), cache.cbuf.data(), count);
    }
  }
}

std::filesystem::path resolve_checkpoint_path(const std::filesystem::path& path, const std::string& name) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return path / "checkpoints" / (name + ".safetensors");
  return path;
}

}  // namespace lstm

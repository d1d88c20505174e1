// Writes the seed corpus of fuzz_checkpoint into the folder given as the only
// argument: small valid checkpoints (vocabulary of 20 words, hidden size 4),
// copies whose checksum is "fuzz" (filled in by the fuzz target, so that
// mutations reach the checks behind the checksum) and truncated copies.
// Rerun it when the checkpoint format changes.

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "config/settings.h"
#include "data/vocabulary.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "tensor/random.h"
#include "train/optimizer.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// Rewrites a checkpoint with the metadata "checksum" set to "fuzz".
void write_with_fuzz_checksum(const fs::path& from, const fs::path& to) {
  const std::string bytes = read_bytes(from);
  std::uint64_t header_length = 0;
  for (int i = 0; i < 8; ++i) header_length |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  json header = json::parse(bytes.substr(8, header_length));
  header["__metadata__"]["checksum"] = "fuzz";
  const std::string text = header.dump();
  std::string output(8, '\0');
  for (int i = 0; i < 8; ++i) output[i] = static_cast<char>((text.size() >> (8 * i)) & 0xFF);
  write_bytes(to, output + text + bytes.substr(8 + header_length));
}

// Saves a model of the given sections; a training checkpoint when `training`.
void save_model(const fs::path& path, const json& model_section, const json& train_section, bool training) {
  const json config = {{"data", {{"dir", "data/sample"}}}, {"model", model_section}, {"train", train_section}};
  lstm::Settings settings = lstm::settings_from_json(config, {}, "seed config");
  std::vector<std::string> words;
  for (int i = 0; i < 19; ++i) words.push_back(std::string(1, 'w').append(std::to_string(i)));
  words.push_back("<eos>");
  const lstm::Vocabulary vocab(words);
  settings.model.vocab_size = vocab.size();
  lstm::LanguageModel model(settings.model);
  lstm::Rng rng(11);
  model.initialize(rng);
  if (!training) {
    lstm::save_checkpoint(path, {&model, &settings.resolved, &vocab});
    return;
  }
  lstm::Optimizer optimizer(settings.train, model.params().total_size());
  lstm::Workspace workspace(settings.model, settings.train.batch_size, settings.train.bptt);
  lstm::TrainingState state;
  state.epoch = 1;
  state.position = 6;
  state.step = 40;
  state.lr = 0.01;
  state.best_valid = 120.5;
  state.dropout_rng = lstm::Rng(3).state();
  lstm::save_checkpoint(path, {&model, &settings.resolved, &vocab, &state, &optimizer, &workspace});
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_FOLDER\n", argv[0]);
    return 2;
  }
  const fs::path out = argv[1];
  fs::create_directories(out);
  const json lstm_model = {{"cell", "lstm"}, {"embedding_size", 4}, {"hidden_size", 4}};
  const json gru_model = {{"cell", "gru"}, {"embedding_size", 4}, {"hidden_size", 4}, {"num_layers", 2}};
  const json adam = {{"batch_size", 2}, {"bptt", 3}, {"optimizer", "adam"}};
  const json sgd = {{"batch_size", 2}, {"bptt", 3}};

  save_model(out / "lstm_params.safetensors", lstm_model, sgd, false);
  save_model(out / "lstm_adam_training.safetensors", lstm_model, adam, true);
  save_model(out / "gru_sgd_training.safetensors", gru_model, sgd, true);
  write_with_fuzz_checksum(out / "lstm_params.safetensors", out / "lstm_params_fuzzsum.safetensors");
  write_with_fuzz_checksum(out / "lstm_adam_training.safetensors", out / "lstm_adam_training_fuzzsum.safetensors");
  write_with_fuzz_checksum(out / "gru_sgd_training.safetensors", out / "gru_sgd_training_fuzzsum.safetensors");

  const std::string full = read_bytes(out / "lstm_adam_training.safetensors");
  for (const std::size_t length : {std::size_t{8}, std::size_t{64}, full.size() / 2, full.size() - 1}) {
    write_bytes(out / ("truncated_" + std::to_string(length) + ".safetensors"), full.substr(0, length));
  }
  return 0;
}

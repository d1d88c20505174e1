// libFuzzer target: the input is a checkpoint file. load_checkpoint must load
// it or throw CheckpointError. Any other exception, a crash or an
// out-of-bounds read is a finding.
//
// The stored checksum stops almost every mutation at the checksum test. So
// that the checks behind it get fuzzed too, an input whose metadata
// "checksum" is the string "fuzz" gets the correct checksum filled in before
// loading. The seed corpus contains such files.

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "train/optimizer.h"
#include "util/error.h"

namespace {

using nlohmann::json;

// Returns the input with its checksum filled in when its stored checksum is
// "fuzz", else the input unchanged.
std::string with_checksum_filled(const std::string& input) {
  if (input.size() < 8) return input;
  std::uint64_t header_length = 0;
  for (int i = 0; i < 8; ++i) header_length |= static_cast<std::uint64_t>(static_cast<unsigned char>(input[i])) << (8 * i);
  if (header_length > input.size() - 8) return input;
  json header = json::parse(input.substr(8, header_length), nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object() || !header.contains("__metadata__")) return input;
  json& meta = header["__metadata__"];
  if (!meta.is_object() || meta.value("checksum", json()) != json("fuzz")) return input;
  std::map<std::string, std::string> metadata;
  for (auto it = meta.begin(); it != meta.end(); ++it) {
    if (!it->is_string()) return input;
    metadata[it.key()] = it->get<std::string>();
  }
  const std::string data = input.substr(8 + header_length);
  meta["checksum"] = lstm::safetensors_checksum(data, metadata);
  const std::string text = header.dump();
  std::string output(8, '\0');
  for (int i = 0; i < 8; ++i) output[i] = static_cast<char>((text.size() >> (8 * i)) & 0xFF);
  return output + text + data;
}

// An in-memory file reached through /proc/self/fd, so no file is left behind.
int checkpoint_fd() {
  static const int fd = [] {
    const int created = ::memfd_create("fuzz_checkpoint", 0);
    if (created < 0) std::abort();
    return created;
  }();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes = with_checksum_filled(std::string(reinterpret_cast<const char*>(data), size));
  const int fd = checkpoint_fd();
  if (::ftruncate(fd, 0) != 0) std::abort();
  if (::pwrite(fd, bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size())) std::abort();
  const std::string path = "/proc/self/fd/" + std::to_string(fd);

  try {
    const lstm::LoadedCheckpoint ckpt = lstm::load_checkpoint(path);
    // A training checkpoint also restores the optimizer moments and the
    // carried state; kept to small models so the workspace fits in memory.
    const lstm::Settings& s = ckpt.settings;
    const std::int64_t workspace_floats =
        static_cast<std::int64_t>(s.train.batch_size) * s.train.bptt *
        (s.model.vocab_size + s.model.embedding_size + 8LL * s.model.num_layers * s.model.hidden_size);
    if (ckpt.state && workspace_floats <= (1 << 22)) {
      lstm::Optimizer optimizer(s.train, ckpt.model->params().total_size());
      lstm::Workspace workspace(s.model, s.train.batch_size, s.train.bptt);
      lstm::restore_training_buffers(ckpt, optimizer, workspace);
    }
  } catch (const lstm::CheckpointError&) {
  }
  return 0;
}

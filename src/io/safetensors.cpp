#include "io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/atomic_file.h"
#include "util/error.h"

namespace lstm {

namespace {

using nlohmann::json;

constexpr std::uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr std::uint64_t kFnvPrime = 0x100000001b3ULL;
// Larger headers are rejected before allocating; ours are a few hundred kB
// (the vocabulary is in the metadata).
constexpr std::uint64_t kMaxHeaderBytes = 256ULL << 20;

std::uint64_t fnv1a(std::uint64_t hash, const char* data, std::size_t size) {
  for (std::size_t i = 0; i < size; ++i) {
    hash ^= static_cast<unsigned char>(data[i]);
    hash *= kFnvPrime;
  }
  return hash;
}

[[noreturn]] void invalid(const std::filesystem::path& path, const std::string& what) {
  throw CheckpointError("invalid checkpoint " + path.string() + ": " + what);
}

}  // namespace

std::string safetensors_checksum(const std::string& data, const std::map<std::string, std::string>& metadata) {
  std::uint64_t hash = fnv1a(kFnvOffset, data.data(), data.size());
  for (const auto& [key, value] : metadata) {
    if (key == "checksum") continue;
    hash = fnv1a(hash, key.data(), key.size() + 1);  // includes the terminating NUL as a separator
    hash = fnv1a(hash, value.data(), value.size() + 1);
  }
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");
  json header = json::object();
  std::string data;
  std::size_t total = 0;
  for (const auto& t : tensors) {
    std::size_t count = 1;
    for (auto d : t.shape) count *= static_cast<std::size_t>(d);
    total += count * sizeof(float);
  }
  data.reserve(total);
  for (const auto& t : tensors) {
    std::size_t count = 1;
    for (auto d : t.shape) count *= static_cast<std::size_t>(d);
    const std::size_t begin = data.size();
    data.append(reinterpret_cast<const char*>(t.data), count * sizeof(float));
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::map<std::string, std::string> meta = metadata;
  meta.erase("checksum");
  meta["checksum"] = safetensors_checksum(data, meta);
  header["__metadata__"] = meta;

  std::string header_text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const std::uint64_t n = header_text.size();
  char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  write_file_atomically(path, {std::string_view(length, 8), header_text, data});
}

SafetensorsFile read_safetensors(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw CheckpointError("checkpoint not found: " + path.string() +
                          " (give a .safetensors file or a run directory)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError("cannot open checkpoint " + path.string());
  in.seekg(0, std::ios::end);
  const auto file_size = static_cast<std::uint64_t>(in.tellg());
  in.seekg(0);
  if (file_size < 8) invalid(path, "file is " + std::to_string(file_size) + " bytes, shorter than the 8-byte header length (truncated?)");

  unsigned char length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  std::uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i) header_size |= static_cast<std::uint64_t>(length_bytes[i]) << (8 * i);
  if (header_size > kMaxHeaderBytes || header_size > file_size - 8) {
    invalid(path, "header length " + std::to_string(header_size) + " runs past the end of the " +
                      std::to_string(file_size) + "-byte file (truncated or not a safetensors file)");
  }
  std::string header_text(header_size, '\0');
  in.read(header_text.data(), static_cast<std::streamsize>(header_size));

  SafetensorsFile file;
  file.path = path;
  file.data.resize(file_size - 8 - header_size);
  in.read(file.data.data(), static_cast<std::streamsize>(file.data.size()));
  if (!in) invalid(path, "read failed");

  json header;
  try {
    header = json::parse(header_text);
  } catch (const json::parse_error& e) {
    invalid(path, "header is not valid JSON (byte " + std::to_string(e.byte) + ")");
  } catch (const json::exception& e) {
    invalid(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) invalid(path, "header is not a JSON object");

  std::vector<std::pair<std::size_t, std::size_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) invalid(path, "__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) invalid(path, "metadata value of \"" + m.key() + "\" is not a string");
        file.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const json& info = *it;
    const std::string& name = it.key();
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets")) {
      invalid(path, "tensor \"" + name + "\" lacks dtype, shape or data_offsets");
    }
    if (info["dtype"] != "F32") {
      invalid(path, "tensor \"" + name + "\" has dtype " + info["dtype"].dump() + ", expected \"F32\"");
    }
    StoredTensor t;
    std::uint64_t count = 1;
    if (!info["shape"].is_array()) invalid(path, "tensor \"" + name + "\" shape is not an array");
    for (const auto& d : info["shape"]) {
      if (!d.is_number_unsigned() || d.get<std::uint64_t>() > (1ULL << 40)) {
        invalid(path, "tensor \"" + name + "\" has invalid shape " + info["shape"].dump());
      }
      t.shape.push_back(d.get<std::int64_t>());
      const std::uint64_t dim = d.get<std::uint64_t>();
      // Checked before multiplying, so the product cannot wrap around.
      if (dim != 0 && count > (1ULL << 40) / dim) invalid(path, "tensor \"" + name + "\" is too large");
      count *= dim;
    }
    const json& offsets = info["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      invalid(path, "tensor \"" + name + "\" has invalid data_offsets " + offsets.dump());
    }
    const std::uint64_t begin = offsets[0].get<std::uint64_t>();
    const std::uint64_t end = offsets[1].get<std::uint64_t>();
    if (begin > end || end > file.data.size()) {
      invalid(path, "tensor \"" + name + "\" offsets [" + std::to_string(begin) + ", " +
                        std::to_string(end) + ") run past the " + std::to_string(file.data.size()) +
                        "-byte data section (truncated?)");
    }
    if (end - begin != count * sizeof(float)) {
      invalid(path, "tensor \"" + name + "\" spans " + std::to_string(end - begin) +
                        " bytes but its shape " + info["shape"].dump() + " needs " +
                        std::to_string(count * sizeof(float)));
    }
    if (begin % sizeof(float) != 0) invalid(path, "tensor \"" + name + "\" is not 4-byte aligned");
    t.offset = begin;
    t.count = count;
    ranges.emplace_back(begin, end);
    file.tensors.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) invalid(path, "two tensors overlap in the data section");
  }
  const auto checksum = file.metadata.find("checksum");
  if (checksum != file.metadata.end()) {
    const std::string actual = safetensors_checksum(file.data, file.metadata);
    if (actual != checksum->second) {
      invalid(path, "checksum mismatch (stored " + checksum->second + ", computed " + actual +
                        "): the file is damaged; use another checkpoint");
    }
  }
  return file;
}

void SafetensorsFile::copy_tensor(const std::string& name, float* out, std::size_t count) const {
  const auto it = tensors.find(name);
  if (it == tensors.end()) invalid(path, "tensor \"" + name + "\" is missing");
  if (it->second.count != count) {
    invalid(path, "tensor \"" + name + "\" has " + std::to_string(it->second.count) +
                      " values, expected " + std::to_string(count));
  }
  std::memcpy(out, data.data() + it->second.offset, count * sizeof(float));
}

}  // namespace lstm

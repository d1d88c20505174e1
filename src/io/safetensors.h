#pragma once
// Reading and writing the safetensors format: an 8-byte little-endian header
// length N, N bytes of JSON header mapping each tensor name to its dtype,
// shape and [begin, end) byte offsets in the data section, and an optional
// "__metadata__" object of string values; then the raw little-endian data.
//
// lstm-lm adds one metadata entry, "checksum": FNV-1a 64 (hex) of the data
// section followed by every other metadata key and value in key order. Other
// safetensors readers ignore it; read_safetensors() verifies it.

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace lstm {

struct TensorToWrite {
  std::string name;
  std::vector<std::int64_t> shape;  // row-major
  const float* data;                // product(shape) floats
};

// Writes atomically (see io/atomic_file.h). Only F32 tensors.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata);

struct StoredTensor {
  std::vector<std::int64_t> shape;
  std::size_t offset = 0;  // in SafetensorsFile::data, bytes
  std::size_t count = 0;   // floats
};

struct SafetensorsFile {
  std::filesystem::path path;
  std::map<std::string, std::string> metadata;
  std::map<std::string, StoredTensor> tensors;
  std::string data;  // the data section

  // Copies tensor `name` into out (count floats); throws CheckpointError if absent.
  void copy_tensor(const std::string& name, float* out, std::size_t count) const;
};

// Reads and validates a file: size, header bounds, JSON, dtype, shapes,
// offsets against the data size, overlaps, and the checksum when present.
// Every failure throws a CheckpointError naming the file and the problem.
SafetensorsFile read_safetensors(const std::filesystem::path& path);

// FNV-1a 64 over the data section and metadata (without "checksum"), in hex.
std::string safetensors_checksum(const std::string& data, const std::map<std::string, std::string>& metadata);

}  // namespace lstm

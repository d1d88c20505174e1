#pragma once

#include <cstdint>
#include <filesystem>
#include <string_view>
#include <vector>

namespace lstm {

// Writes `parts` (concatenated) to `path` so that a crash at any moment leaves
// either the old file or the complete new one: the bytes go to a temporary
// file in the same folder, which is flushed, fsynced and renamed over `path`,
// and then the folder is fsynced. Throws CheckpointError naming the path and
// the system error; the temporary file is removed on failure.
void write_file_atomically(const std::filesystem::path& path, const std::vector<std::string_view>& parts);

// Test hook: makes writes fail with ENOSPC once `bytes` bytes have been
// written in total; a negative value turns the fault off.
void set_write_fault_after_bytes(std::int64_t bytes);

}  // namespace lstm

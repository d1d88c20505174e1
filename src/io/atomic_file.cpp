#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "util/error.h"

namespace lstm {

namespace {

std::atomic<std::int64_t> g_fault_after{-1};

// write(2) with the test hook applied.
ssize_t checked_write(int fd, const char* data, std::size_t size) {
  std::int64_t budget = g_fault_after.load();
  if (budget >= 0) {
    if (budget == 0) {
      errno = ENOSPC;
      return -1;
    }
    size = std::min<std::size_t>(size, static_cast<std::size_t>(budget));
  }
  const ssize_t written = ::write(fd, data, size);
  if (written > 0 && budget >= 0) g_fault_after.store(budget - written);
  return written;
}

[[noreturn]] void fail(const std::filesystem::path& path, const char* what, int error) {
  throw CheckpointError("failed to write " + path.string() + ": " + what + ": " + std::strerror(error) +
                        (error == ENOSPC ? " (free disk space, then resume from the previous checkpoint)"
                                         : ""));
}

}  // namespace

void set_write_fault_after_bytes(std::int64_t bytes) { g_fault_after.store(bytes); }

void write_file_atomically(const std::filesystem::path& path, const std::vector<std::string_view>& parts) {
  const std::filesystem::path folder = path.has_parent_path() ? path.parent_path() : ".";
  // Appended piece by piece: GCC 12 reports a chain of string operator+ here
  // as an overlapping memcpy (-Wrestrict), which it is not.
  std::string temp_name = ".";
  temp_name += path.filename().string();
  temp_name += ".tmp.";
  temp_name += std::to_string(::getpid());
  const std::filesystem::path temp = folder / temp_name;
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, "cannot create a temporary file in its folder", errno);

  auto abandon = [&](const char* what) {
    const int error = errno;
    ::close(fd);
    ::unlink(temp.c_str());
    fail(path, what, error);
  };
  for (std::string_view part : parts) {
    std::size_t done = 0;
    while (done < part.size()) {
      const ssize_t n = checked_write(fd, part.data() + done, part.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        abandon("write");
      }
      done += static_cast<std::size_t>(n);
    }
  }
  if (::fsync(fd) != 0) abandon("fsync");
  if (::close(fd) != 0) {
    const int error = errno;
    ::unlink(temp.c_str());
    fail(path, "close", error);
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(temp.c_str());
    fail(path, "rename", error);
  }
  const int dir_fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace lstm

#pragma once
// Typed errors. Each message is one line: what failed, on which value, and
// what to do next. The CLI entry points catch them once and exit non-zero.

#include <stdexcept>
#include <string>

namespace lstm {

// A user's config or command-line value is invalid.
class ConfigError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A corpus file is missing, unreadable or malformed.
class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A checkpoint cannot be written, or a file is not a valid checkpoint.
class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Training cannot go on (repeated non-finite losses, for example).
class TrainingError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace lstm

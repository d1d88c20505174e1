// libFuzzer target: the input is a config document, optionally followed by
// NUL-separated --set overrides ("{...}\0train.lr=3\0model.cell=gru").
// settings_from_json must accept it or throw ConfigError. Any other exception
// escaping it, or a crash, is a finding.

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "config/settings.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::size_t document_end = input.find('\0');
  const std::string document_text = input.substr(0, document_end);
  std::vector<std::string> overrides;
  if (document_end != std::string::npos) {
    std::size_t start = document_end + 1;
    while (start <= input.size()) {
      const std::size_t end = input.find('\0', start);
      overrides.push_back(input.substr(start, end == std::string::npos ? std::string::npos : end - start));
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }

  nlohmann::json document;
  try {
    document = nlohmann::json::parse(document_text);
  } catch (const nlohmann::json::exception&) {
    return 0;  // not JSON: load_settings reports this itself, before settings_from_json
  }
  try {
    const lstm::Settings settings = lstm::settings_from_json(document, overrides, "fuzz input");
    // The resolved config must validate again unchanged, as a checkpoint's does.
    const lstm::Settings again = lstm::settings_from_json(settings.resolved, {}, "fuzz resolved");
    if (again.resolved != settings.resolved) __builtin_trap();
  } catch (const lstm::ConfigError&) {
  }
  return 0;
}

#pragma once

namespace lstm {
// The project version, e.g. "0.1.0".
extern const char* const kVersion;
// The short git commit the binaries were built from, with "-dirty" when tracked
// files differed from it, or "unknown" outside a git checkout.
extern const char* const kGitCommit;
}  // namespace lstm

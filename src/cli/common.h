#pragma once
// Pieces shared by the command-line entry points.

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace lstm {

// Adds --version, printing the version and the git commit of the build.
void add_version_flag(CLI::App& app);

// Runs body; reports a thrown error as one line and returns the exit code:
// 2 for invalid config or arguments, 1 for any other failure.
int run_reporting_errors(const std::function<int()>& body);

}  // namespace lstm

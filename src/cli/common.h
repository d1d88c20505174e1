#pragma once
// Pieces shared by the command-line entry points.

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace lstm {

// Restarts the process with OMP_WAIT_POLICY=PASSIVE unless the variable is
// set, because libgomp reads it only at start-up. With the default policy,
// threads waiting at a barrier spin. On a machine whose cores are busy with
// other work, a training step then runs many times slower. Call first in main().
void prefer_passive_openmp_wait(char** argv);

// Adds --version, printing the version and the git commit of the build.
void add_version_flag(CLI::App& app);

// Adds --threads: 0 (the default) means every core, at most 1024 as for
// train.threads.
CLI::Option* add_threads_option(CLI::App& app, int& threads);

// Parses the command line into app. Returns -1 when the program should go
// on, else its exit code: 0 after --help or --version, 2 after an invalid
// option, which is reported as one "error:" line on stderr.
int parse_command_line(CLI::App& app, int argc, char** argv);

// Runs body; reports a thrown error as one line and returns the exit code:
// 2 for invalid config or arguments, 1 for any other failure.
int run_reporting_errors(const std::function<int()>& body);

}  // namespace lstm

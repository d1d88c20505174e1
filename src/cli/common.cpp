#include "cli/common.h"

#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "util/version.h"
#include "util/error.h"

namespace lstm {

void prefer_passive_openmp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (::setenv("OMP_WAIT_POLICY", "PASSIVE", /*overwrite=*/0) != 0) return;
  // The resolved path, not /proc/self/exe, so the process keeps its name (ps, pgrep).
  char path[4096];
  const ssize_t length = ::readlink("/proc/self/exe", path, sizeof path - 1);
  if (length <= 0) return;
  path[length] = '\0';
  ::execv(path, argv);
  // execv returns only on failure; the run goes on with the default policy.
}

void add_version_flag(CLI::App& app) {
  app.set_version_flag("--version", std::string("lstm-lm ") + kVersion + " (git " + kGitCommit + ")");
}

CLI::Option* add_threads_option(CLI::App& app, int& threads) {
  return app.add_option("--threads", threads, "threads, 0 to 1024 (default: 0, every core)")
      ->check(CLI::Range(0, 1024));
}

int parse_command_line(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
    return -1;
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help or --version: prints, and returns 0
  } catch (const CLI::ParseError& e) {
    std::string message = e.what();
    std::replace(message.begin(), message.end(), '\n', ' ');
    std::fprintf(stderr, "error: %s (run with --help for the options)\n", message.c_str());
    return 2;
  }
}

int run_reporting_errors(const std::function<int()>& body) {
  // Errors go to stderr as one line, whatever the console logger does.
  auto report = [](const char* kind, const char* what) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s%s\n", kind, what);
  };
  try {
    return body();
  } catch (const ConfigError& e) {
    report("", e.what());
    return 2;
  } catch (const DataError& e) {
    report("", e.what());
    return 1;
  } catch (const CheckpointError& e) {
    report("", e.what());
    return 1;
  } catch (const TrainingError& e) {
    report("", e.what());
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    report("file system: ", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    report("", "out of memory: lower train.batch_size, train.bptt or the model size");
    return 1;
  } catch (const std::exception& e) {
    report("unexpected: ", e.what());
    return 1;
  }
}

}  // namespace lstm

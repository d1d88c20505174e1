#pragma once
// Runs a program in a child process with its stdout and stderr captured in
// files, for the tests of the command-line tools and scripts.

#include <fcntl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "test_files.h"

extern char** environ;

namespace lstm::test {

// How a child process ended and what it wrote.
struct Outcome {
  int exit_code = -1;  // -1 when the process ended by a signal
  int signal = 0;
  std::string out, err;
};

// A started child process and the files that receive its stdout and stderr.
struct Running {
  pid_t pid = -1;
  std::filesystem::path out_path, err_path;
};

// Starts `program args...` with stdin from /dev/null and stdout and stderr
// written to out_path and err_path, in `cwd` unless `cwd` is empty. The child
// gets this process's environment with OMP_WAIT_POLICY=passive, so idle
// OpenMP threads sleep. Spinning threads slow a run on a busy machine many
// times over without changing its results.
inline Running start_process(const std::filesystem::path& program, const std::vector<std::string>& args,
                             const std::filesystem::path& cwd, const std::filesystem::path& out_path,
                             const std::filesystem::path& err_path) {
  std::vector<std::string> argv_strings = {program.string()};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string(*e).rfind("OMP_WAIT_POLICY=", 0) != 0) env_strings.emplace_back(*e);
  }
  env_strings.emplace_back("OMP_WAIT_POLICY=passive");
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string out_file = out_path.string();
  const std::string err_file = err_path.string();
  const std::string cwd_string = cwd.string();
  const bool change_dir = !cwd.empty();

  Running running;
  running.out_path = out_path;
  running.err_path = err_path;
  running.pid = ::fork();
  if (running.pid < 0) throw std::system_error(errno, std::generic_category(), "fork failed");
  if (running.pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    const int out = ::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int in = ::open("/dev/null", O_RDONLY);
    if (out < 0 || err < 0 || in < 0) ::_exit(126);
    if (change_dir && ::chdir(cwd_string.c_str()) != 0) ::_exit(126);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  return running;
}

// Returns the outcome of a child that waitpid reported as `status`, with the
// contents of its stdout and stderr files.
inline Outcome outcome_of(const Running& running, int status) {
  Outcome outcome;
  if (WIFEXITED(status)) outcome.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) outcome.signal = WTERMSIG(status);
  outcome.out = read_bytes(running.out_path);
  outcome.err = read_bytes(running.err_path);
  return outcome;
}

// Waits for the child to end and returns its outcome.
inline Outcome wait_for(const Running& running) {
  int status = 0;
  ::waitpid(running.pid, &status, 0);
  return outcome_of(running, status);
}

// Runs `program args...` in `cwd`, with stdout and stderr captured in
// capture_dir/stdout.txt and capture_dir/stderr.txt, and waits for it.
inline Outcome run_program(const std::filesystem::path& program, const std::vector<std::string>& args,
                           const std::filesystem::path& cwd, const std::filesystem::path& capture_dir) {
  return wait_for(start_process(program, args, cwd, capture_dir / "stdout.txt", capture_dir / "stderr.txt"));
}

}  // namespace lstm::test

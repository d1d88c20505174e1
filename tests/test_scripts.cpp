// The Python scripts as a user runs them, on tiny runs trained here:
// scripts/to_pytorch.py must reproduce lstm-eval's perplexity, plot_run.py
// must write a PNG and run_experiments.py must tabulate a grid.
//
// The scripts need Debian's /usr/bin/python3, and the first two also need
// python3-torch or python3-matplotlib. A test whose interpreter or package is
// missing is skipped with a message that names the package to install.

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_files.h"
#include "test_process.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using namespace lstm::test;

const fs::path kSourceDir = LSTM_SOURCE_DIR;
const fs::path kBinaryDir = LSTM_BINARY_DIR;
const fs::path kPython = "/usr/bin/python3";

std::string describe(const Outcome& r) {
  return "exit code " + std::to_string(r.exit_code) + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

// The lstm-lm executable `name`, from build/bin or build/src.
fs::path binary(const std::string& name) {
  for (const char* folder : {"bin", "src"}) {
    const fs::path path = kBinaryDir / folder / name;
    if (fs::exists(path)) return path;
  }
  return kBinaryDir / "src" / name;
}

class ScriptsTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    // run_program gives every child OMP_WAIT_POLICY=passive, and lstm-train
    // started by a script inherits it.
    temp_dir_ = new TempDir("scripts");
  }

  static void TearDownTestSuite() {
    delete temp_dir_;
    temp_dir_ = nullptr;
  }

  // A folder of its own for the current test.
  static fs::path test_dir() {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "." + info->name();
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    const fs::path dir = temp_dir_->path() / name;
    fs::create_directories(dir);
    return dir;
  }

  // Returns an empty string when `/usr/bin/python3 -c "import MODULE"`
  // succeeds, else the reason to skip, naming the Debian package to install.
  static std::string missing_python_module(const std::string& module, const std::string& package) {
    if (::access(kPython.c_str(), X_OK) != 0) {
      return kPython.string() + " not found: run `sudo apt-get install python3" +
             (package.empty() ? "" : " " + package) + "`";
    }
    if (module.empty()) return "";
    const fs::path dir = temp_dir_->path() / ("import-" + module);
    fs::create_directories(dir);
    const Outcome r = run_program(kPython, {"-c", "import " + module}, kSourceDir, dir);
    if (r.exit_code == 0) return "";
    return package + " is not installed (" + kPython.string() + " cannot import " + module +
           "): run `sudo apt-get install " + package + "`";
  }

  // Trains configs/tiny.json for 80 steps with `overrides` into a run folder
  // named `name` and returns that folder. Later calls with the same name reuse it.
  static fs::path tiny_run(const std::string& name, const std::vector<std::string>& overrides) {
    const fs::path run_dir = temp_dir_->path() / ("run-" + name);
    if (fs::exists(run_dir / "summary.json")) return run_dir;
    std::vector<std::string> args = {"--config", "configs/tiny.json", "--run-dir", run_dir.string(),
                                     "--progress", "off", "--set", "train.max_steps=80",
                                     "--set", "train.threads=1"};
    for (const auto& item : overrides) {
      args.push_back("--set");
      args.push_back(item);
    }
    const fs::path capture = temp_dir_->path() / ("train-" + name);
    fs::create_directories(capture);
    const Outcome r = run_program(binary("lstm-train"), args, kSourceDir, capture);
    if (r.exit_code != 0) throw std::runtime_error("lstm-train failed for " + name + ": " + describe(r));
    return run_dir;
  }

  static TempDir* temp_dir_;
};

TempDir* ScriptsTest::temp_dir_ = nullptr;

struct ConversionCase {
  std::string name;
  std::vector<std::string> overrides;
};

// Names the case in test output and in the CTest test name.
void PrintTo(const ConversionCase& c, std::ostream* os) { *os << c.name; }

class ToPytorchTest : public ScriptsTest, public testing::WithParamInterface<ConversionCase> {};

TEST_P(ToPytorchTest, PerplexityMatchesLstmEval) {
  const std::string missing = missing_python_module("torch", "python3-torch");
  if (!missing.empty()) GTEST_SKIP() << missing;
  const fs::path run_dir = tiny_run(GetParam().name, GetParam().overrides);
  const fs::path dir = test_dir();

  const Outcome eval =
      run_program(binary("lstm-eval"), {"--checkpoint", run_dir.string(), "--json", "--threads", "1"}, kSourceDir, dir);
  ASSERT_EQ(eval.exit_code, 0) << describe(eval);
  const json expected = json::parse(eval.out);

  const Outcome torch = run_program(
      kPython, {(kSourceDir / "scripts" / "to_pytorch.py").string(), run_dir.string(), "--json", "--threads", "1"},
      kSourceDir, dir);
  ASSERT_EQ(torch.exit_code, 0) << describe(torch);
  const json actual = json::parse(torch.out);

  EXPECT_EQ(actual.at("tokens").get<long long>(), expected.at("tokens").get<long long>());
  const double expected_ppl = expected.at("perplexity").get<double>();
  const double actual_ppl = actual.at("perplexity").get<double>();
  EXPECT_GT(expected_ppl, 1.0);
  EXPECT_NEAR(actual_ppl / expected_ppl, 1.0, 1e-3)
      << "to_pytorch.py " << actual_ppl << ", lstm-eval " << expected_ppl;
  EXPECT_NEAR(actual.at("loss").get<double>(), expected.at("loss").get<double>(), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Cells, ToPytorchTest,
                         testing::Values(ConversionCase{"lstm", {"model.cell=lstm"}},
                                         ConversionCase{"gru_tied", {"model.cell=gru", "model.tie_weights=true"}}),
                         [](const testing::TestParamInfo<ConversionCase>& info) { return info.param.name; });

TEST_F(ScriptsTest, ToPytorchRejectsDamagedCheckpoint) {
  const std::string missing = missing_python_module("torch", "python3-torch");
  if (!missing.empty()) GTEST_SKIP() << missing;
  const fs::path run_dir = tiny_run("lstm", {"model.cell=lstm"});
  const fs::path dir = test_dir();
  const fs::path damaged = dir / "damaged.safetensors";
  fs::copy_file(run_dir / "checkpoints" / "best.safetensors", damaged);
  {
    // Flip one bit of the last float, inside the data section.
    std::fstream file(damaged, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(-1, std::ios::end);
    char byte = 0;
    file.get(byte);
    file.seekp(-1, std::ios::end);
    file.put(static_cast<char>(byte ^ 0x01));
  }

  const Outcome r =
      run_program(kPython, {(kSourceDir / "scripts" / "to_pytorch.py").string(), damaged.string()}, kSourceDir, dir);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_NE(r.err.find("checksum mismatch"), std::string::npos) << r.err;
}

TEST_F(ScriptsTest, PlotRunWritesPng) {
  const std::string missing = missing_python_module("matplotlib", "python3-matplotlib");
  if (!missing.empty()) GTEST_SKIP() << missing;
  const fs::path run_dir = tiny_run("lstm", {"model.cell=lstm"});
  const fs::path dir = test_dir();
  const fs::path png = dir / "curves.png";

  const Outcome r =
      run_program(kPython, {(kSourceDir / "scripts" / "plot_run.py").string(), run_dir.string(), "-o", png.string()},
                  kSourceDir, dir);
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  const std::string bytes = read_bytes(png);
  ASSERT_GE(bytes.size(), 24u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_GT(bytes.size(), 5000u) << "a plot of three panels should not be this small";

  // Width and height are the first two big-endian 32-bit fields of IHDR, at bytes 16..23.
  const Outcome size = run_program(kPython,
                                   {"-c",
                                    "import struct, sys\n"
                                    "header = open(sys.argv[1], 'rb').read(24)\n"
                                    "print(*struct.unpack('>II', header[16:24]))",
                                    png.string()},
                                   kSourceDir, dir);
  ASSERT_EQ(size.exit_code, 0) << describe(size);
  std::istringstream fields(size.out);
  long width = 0, height = 0;
  fields >> width >> height;
  EXPECT_GT(width, 100) << size.out;
  EXPECT_GT(height, 100) << size.out;
}

const char* const kResultsHeader =
    "config,overrides,fixed_overrides,test_perplexity,best_valid_perplexity,wall_time_s,tokens_per_s,"
    "threads,parameters,status,run_dir";

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream stream(text);
  for (std::string line; std::getline(stream, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

// Runs scripts/run_experiments.py on configs/tiny.json over `grid` for
// `max_steps` steps per run, writing to `out` and capturing its output in `dir`.
Outcome run_experiments_on_tiny(const std::string& grid, int max_steps, const fs::path& out, const fs::path& dir,
                                const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args = {(kSourceDir / "scripts" / "run_experiments.py").string(),
                                   "--config", "configs/tiny.json", "--grid", grid,
                                   "--set", "train.max_steps=" + std::to_string(max_steps), "--threads", "1",
                                   "--bin-dir", binary("lstm-train").parent_path().string(), "--out", out.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return run_program(kPython, args, kSourceDir, dir);
}

TEST_F(ScriptsTest, RunExperimentsTabulatesGrid) {
  const std::string missing = missing_python_module("", "");
  if (!missing.empty()) GTEST_SKIP() << missing;
  const fs::path dir = test_dir();
  const fs::path out = dir / "experiments";

  const Outcome r = run_experiments_on_tiny("model.cell=rnn,gru", 30, out, dir);
  ASSERT_EQ(r.exit_code, 0) << describe(r);

  const std::vector<std::string> rows = lines_of(read_bytes(out / "results.csv"));
  ASSERT_EQ(rows.size(), 3u) << read_bytes(out / "results.csv");
  EXPECT_EQ(rows[0], kResultsHeader);
  EXPECT_EQ(rows[1].rfind("configs/tiny.json,model.cell=rnn,", 0), 0u) << rows[1];
  EXPECT_EQ(rows[2].rfind("configs/tiny.json,model.cell=gru,", 0), 0u) << rows[2];
  for (const auto& row : {rows[1], rows[2]}) EXPECT_NE(row.find(",ok,"), std::string::npos) << row;
  EXPECT_TRUE(fs::exists(out / "tiny__model.cell-rnn" / "summary.json"));
  EXPECT_TRUE(fs::exists(out / "tiny__model.cell-gru" / "summary.json"));

  const std::string markdown = read_bytes(out / "results.md");
  EXPECT_NE(markdown.find("| config | overrides | test ppl |"), std::string::npos) << markdown;
  // Title, fixed overrides, note, table header, rule and one row per run.
  EXPECT_EQ(lines_of(markdown).size(), 7u) << markdown;
}

TEST_F(ScriptsTest, RunExperimentsReportsFailedRun) {
  const std::string missing = missing_python_module("", "");
  if (!missing.empty()) GTEST_SKIP() << missing;
  const fs::path dir = test_dir();
  const fs::path out = dir / "experiments";

  const Outcome r = run_experiments_on_tiny("train.lr=10,-1", 10, out, dir);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_NE(r.out.find("failed (exit 2): error:"), std::string::npos) << r.out;

  const std::vector<std::string> rows = lines_of(read_bytes(out / "results.csv"));
  ASSERT_EQ(rows.size(), 3u) << read_bytes(out / "results.csv");
  EXPECT_NE(rows[1].find(",ok,"), std::string::npos) << rows[1];
  EXPECT_NE(rows[2].find("failed (exit 2)"), std::string::npos) << rows[2];
  EXPECT_NE(rows[2].find("train.lr"), std::string::npos) << "the status should carry lstm-train's error: " << rows[2];
}

TEST_F(ScriptsTest, RunExperimentsReuseSkipsTraining) {
  const std::string missing = missing_python_module("", "");
  if (!missing.empty()) GTEST_SKIP() << missing;
  const fs::path dir = test_dir();
  const fs::path out = dir / "experiments";
  const Outcome first = run_experiments_on_tiny("model.cell=rnn", 10, out, dir);
  ASSERT_EQ(first.exit_code, 0) << describe(first);
  const fs::path summary = out / "tiny__model.cell-rnn" / "summary.json";
  const std::string summary_before = read_bytes(summary);
  const auto written_before = fs::last_write_time(summary);

  const Outcome second = run_experiments_on_tiny("model.cell=rnn", 10, out, dir, {"--reuse"});
  ASSERT_EQ(second.exit_code, 0) << describe(second);
  EXPECT_NE(second.out.find("reused"), std::string::npos) << second.out;
  EXPECT_EQ(fs::last_write_time(summary), written_before);
  EXPECT_EQ(read_bytes(summary), summary_before);

  const std::vector<std::string> rows = lines_of(read_bytes(out / "results.csv"));
  ASSERT_EQ(rows.size(), 2u) << read_bytes(out / "results.csv");
  EXPECT_NE(rows[1].find(",reused,"), std::string::npos) << rows[1];
}

}  // namespace

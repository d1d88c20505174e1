#include "train/run_log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <unistd.h>

#include <cstdio>
#include <sstream>
#include <vector>

#include "util/error.h"

namespace lstm {

void setup_console_logging(const ConsoleOptions& options) {
  std::shared_ptr<spdlog::sinks::sink> console;
  if (::isatty(STDOUT_FILENO)) {
    console = std::make_shared<spdlog::sinks::stdout_color_sink_mt>();
  } else {
    console = std::make_shared<spdlog::sinks::stdout_sink_mt>();
  }
  console->set_level(options.quiet ? spdlog::level::warn : options.level);
  auto logger = std::make_shared<spdlog::logger>("lstm", console);
  logger->set_level(spdlog::level::trace);
  logger->set_pattern("[%Y-%m-%d %H:%M:%S] [%^%l%$] %v");
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

RunLog::RunLog(const std::filesystem::path& run_dir, const ConsoleOptions& options,
               std::optional<std::int64_t> keep_until_step)
    : options_(options) {
  auto file_sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>((run_dir / "train.log").string());
  file_sink->set_level(std::min(options.level, spdlog::level::info));
  file_sink->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
  spdlog::default_logger()->sinks().push_back(file_sink);

  const auto path = run_dir / "metrics.jsonl";
  if (keep_until_step) {
    // Keep the records of the steps the checkpoint contains.
    std::vector<std::string> kept;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      const auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (record.is_discarded()) continue;
      if (record.value("step", std::int64_t{0}) <= *keep_until_step && record.value("split", "") != "test") {
        kept.push_back(line);
      }
    }
    in.close();
    std::ofstream out(path, std::ios::trunc);
    for (const auto& k : kept) out << k << '\n';
  }
  metrics_.open(path, std::ios::app);
  if (!metrics_) throw TrainingError("cannot open " + path.string() + " for writing");
}

RunLog::~RunLog() {
  clear_bar();
  auto& sinks = spdlog::default_logger()->sinks();
  if (sinks.size() > 1) sinks.pop_back();
}

void RunLog::metrics(const nlohmann::json& record) {
  metrics_ << record.dump() << '\n';
  metrics_.flush();
}

void RunLog::progress(const std::string& line, int epoch, int epochs, std::int64_t window,
                      std::int64_t windows, double tokens_per_s, double eta_s, double perplexity,
                      double lr) {
  if (!options_.progress_bar || options_.quiet) {
    spdlog::info("{}", line);
    return;
  }
  // The interval line still goes to train.log.
  auto& sinks = spdlog::default_logger()->sinks();
  if (sinks.size() > 1) {
    spdlog::details::log_msg msg("lstm", spdlog::level::info, line);
    sinks.back()->log(msg);
  }
  constexpr int kWidth = 30;
  const double fraction = windows > 0 ? static_cast<double>(window) / static_cast<double>(windows) : 0.0;
  const int filled = static_cast<int>(fraction * kWidth);
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.append(static_cast<std::size_t>(kWidth - filled), '.');
  const long eta = static_cast<long>(eta_s);
  std::fprintf(stdout, "\r\033[2Kepoch %d/%d [%s] %lld/%lld | %.0f tok/s | ETA %ld:%02ld:%02ld | ppl %.2f | lr %.4g",
               epoch, epochs, bar.c_str(), static_cast<long long>(window), static_cast<long long>(windows),
               tokens_per_s, eta / 3600, (eta / 60) % 60, eta % 60, perplexity, lr);
  std::fflush(stdout);
  bar_visible_ = true;
}

void RunLog::clear_bar() {
  if (bar_visible_) {
    std::fputs("\r\033[2K", stdout);
    std::fflush(stdout);
    bar_visible_ = false;
  }
}

}  // namespace lstm

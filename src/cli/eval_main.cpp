// lstm-eval: perplexity of a checkpoint on a split or a text file.

#include <nlohmann/json.hpp>
#include <cstdio>

#include "cli/common.h"
#include "data/corpus.h"
#include "io/checkpoint.h"
#include "tensor/gemm.h"
#include "train/evaluate.h"
#include "util/error.h"

int main(int argc, char** argv) {
  lstm::prefer_passive_openmp_wait(argv);
  CLI::App app{"Evaluate a checkpoint: perplexity = exp(mean cross-entropy per token)."};
  lstm::add_version_flag(app);
  std::string checkpoint, data = "test";
  int batch_size = 0, bptt = 0, threads = 0;
  bool as_json = false;
  app.add_option("--checkpoint", checkpoint,
                 "checkpoint file, or a run directory (its checkpoints/best.safetensors)")
      ->required();
  app.add_option("--data", data,
                 "split of the checkpoint's config (train, valid, test) or a text file (default: test)");
  app.add_option("--batch-size", batch_size, "streams (default: eval.batch_size of the config, 10)")
      ->check(CLI::PositiveNumber);
  app.add_option("--bptt", bptt, "window length in steps; does not change the result (default: eval.bptt)")
      ->check(CLI::PositiveNumber);
  lstm::add_threads_option(app, threads);
  app.add_flag("--json", as_json, "print one JSON object: perplexity, loss (nats per token), tokens");
  if (const int code = lstm::parse_command_line(app, argc, argv); code >= 0) return code;

  return lstm::run_reporting_errors([&]() -> int {
    lstm::set_num_threads(threads);
    const auto path = lstm::resolve_checkpoint_path(checkpoint, "best");
    lstm::LoadedCheckpoint ckpt = lstm::load_checkpoint(path);
    const lstm::Settings& s = ckpt.settings;
    std::filesystem::path file;
    if (data == "train" || data == "valid" || data == "test") {
      const lstm::SplitPaths paths = lstm::resolve_split_paths(s.data);
      if (data == "train") {
        file = paths.train;
      } else if (data == "valid") {
        file = paths.valid;
      } else {
        file = paths.test;
      }
    } else {
      file = data;
    }
    const lstm::EncodedText text = lstm::encode(lstm::read_tokens(file), ckpt.vocab, s.data.unk_token);
    const int streams = batch_size > 0 ? batch_size : s.eval.batch_size;
    lstm::Workspace ws(s.model, streams, bptt > 0 ? bptt : s.eval.bptt, lstm::WorkspaceUse::kEvaluation);
    const lstm::EvalResult result = lstm::evaluate(*ckpt.model, ws, text.ids);
    if (as_json) {
      const nlohmann::json out = {{"perplexity", result.perplexity()},
                                  {"loss", result.loss()},
                                  {"tokens", result.tokens},
                                  {"unk_mapped", text.unk_mapped},
                                  {"data", file.string()},
                                  {"checkpoint", path.string()},
                                  {"batch_size", streams}};
      std::printf("%s\n", out.dump().c_str());
    } else {
      std::printf("%s: perplexity %.4f (loss %.6f nats/token over %lld tokens)\n", file.string().c_str(),
                  result.perplexity(), result.loss(), static_cast<long long>(result.tokens));
    }
    return 0;
  });
}

// lstm-generate: samples text from a checkpoint, or scores the sentences of a file.

#include <cstdio>

#include "analysis/generate.h"
#include "cli/common.h"
#include "data/corpus.h"
#include "io/checkpoint.h"
#include "tensor/gemm.h"
#include "util/error.h"

int main(int argc, char** argv) {
  lstm::prefer_passive_openmp_wait(argv);
  CLI::App app{"Sample text from a checkpoint, or score the sentences of a text file with it."};
  lstm::add_version_flag(app);
  std::string checkpoint, prompt, score_file;
  lstm::SampleOptions options;
  int threads = 0;
  app.add_option("--checkpoint", checkpoint,
                 "checkpoint file, or a run directory (its checkpoints/best.safetensors)")
      ->required();
  auto* prompt_option = app.add_option(
      "--prompt", prompt,
      "words to start from, separated by spaces and not repeated in the output; every word must be in "
      "the vocabulary (default: empty, start a new sentence after <eos>)");
  auto* words_option = app.add_option("--words", options.words,
                                      "tokens to sample, <eos> included; <eos> prints as a line break "
                                      "(default: 100)");
  auto* temperature_option = app.add_option(
      "--temperature", options.temperature,
      "divides the logits before the softmax; > 0, below 1 favours probable words (default: 1)");
  auto* top_k_option = app.add_option("--top-k", options.top_k,
                                      "draw only among the K most probable words; 0 = all (default: 0)");
  auto* seed_option = app.add_option("--seed", options.seed,
                                     "random seed; the same seed gives the same text (default: 1)");
  app.add_option("--score", score_file,
                 "instead of sampling, print each line's log-probability (natural log, over its words "
                 "and its <eos>) and token count, then the perplexity of the whole file")
      ->excludes(prompt_option, words_option, temperature_option, top_k_option, seed_option);
  lstm::add_threads_option(app, threads);
  if (const int code = lstm::parse_command_line(app, argc, argv); code >= 0) return code;

  return lstm::run_reporting_errors([&]() -> int {
    lstm::set_num_threads(threads);
    if (score_file.empty()) lstm::validate_sample_options(options);
    const auto path = lstm::resolve_checkpoint_path(checkpoint, "best");
    lstm::LoadedCheckpoint ckpt = lstm::load_checkpoint(path);

    if (!score_file.empty()) {
      const lstm::ScoreResult result =
          lstm::score_sentences(*ckpt.model, ckpt.vocab, lstm::read_tokens(score_file),
                                ckpt.settings.data.unk_token, ckpt.settings.eval.bptt);
      std::printf("line\tlog_prob\ttokens\n");
      for (const auto& sentence : result.sentences) {
        std::printf("%lld\t%.4f\t%lld\n", static_cast<long long>(sentence.line), sentence.log_prob,
                    static_cast<long long>(sentence.tokens));
      }
      std::printf("perplexity %.4f over %lld tokens in %zu sentences (log_prob %.4f", result.perplexity(),
                  static_cast<long long>(result.tokens), result.sentences.size(), result.log_prob);
      if (result.unk_mapped > 0) {
        std::printf(", %lld words mapped to %s", static_cast<long long>(result.unk_mapped),
                    ckpt.settings.data.unk_token.c_str());
      }
      std::printf(")\n");
      return 0;
    }

    const std::vector<lstm::TokenId> prompt_ids = lstm::encode_prompt(prompt, ckpt.vocab);
    const std::vector<lstm::TokenId> words = lstm::sample_words(*ckpt.model, ckpt.vocab, prompt_ids, options);
    std::fputs(lstm::format_words(words, ckpt.vocab).c_str(), stdout);
    return 0;
  });
}

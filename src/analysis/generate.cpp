#include "analysis/generate.h"

#include <spdlog/fmt/fmt.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "util/error.h"

namespace lstm {

namespace {

TokenId end_of_sentence_id(const Vocabulary& vocab) {
  const TokenId eos = vocab.find(kEndOfSentence);
  if (eos < 0) {
    throw DataError(std::string("the vocabulary has no \"") + kEndOfSentence +
                    "\" token, so there is no sentence-start state: give a prompt");
  }
  return eos;
}

}  // namespace

void validate_sample_options(const SampleOptions& options) {
  if (!(options.temperature > 0.0) || !std::isfinite(options.temperature)) {
    throw ConfigError(fmt::format("invalid --temperature {}: must be a number > 0 (1 samples the model's "
                                  "distribution, smaller values come closer to always taking the most "
                                  "probable word)",
                                  options.temperature));
  }
  if (options.top_k < 0) {
    throw ConfigError(fmt::format("invalid --top-k {}: must be >= 0 (0 draws from the whole vocabulary)",
                                  options.top_k));
  }
  if (options.words < 0) {
    throw ConfigError(fmt::format("invalid --words {}: must be >= 0", options.words));
  }
}

std::vector<TokenId> encode_prompt(const std::string& prompt, const Vocabulary& vocab) {
  std::vector<TokenId> ids;
  std::vector<std::string> unknown;
  std::size_t start = 0;
  while (start < prompt.size()) {
    const std::size_t begin = prompt.find_first_not_of(" \t\r\n", start);
    if (begin == std::string::npos) break;
    std::size_t end = prompt.find_first_of(" \t\r\n", begin);
    if (end == std::string::npos) end = prompt.size();
    const std::string word = prompt.substr(begin, end - begin);
    const TokenId id = vocab.find(word);
    if (id < 0) {
      if (std::find(unknown.begin(), unknown.end(), word) == unknown.end()) unknown.push_back(word);
    } else {
      ids.push_back(id);
    }
    start = end;
  }
  if (!unknown.empty()) {
    std::string list;
    for (const auto& word : unknown) list += (list.empty() ? "\"" : ", \"") + word + "\"";
    throw ConfigError(fmt::format("{} not in the model's vocabulary of {} words: {} (words are "
                                  "case-sensitive; use words of the training data)",
                                  unknown.size() == 1 ? "prompt word is" : "prompt words are",
                                  vocab.size(), list));
  }
  return ids;
}

TokenId draw_word(const float* logits, int vocab_size, double temperature, int top_k, Rng& rng) {
  for (int v = 0; v < vocab_size; ++v) {
    if (!std::isfinite(logits[v])) {
      throw CheckpointError(fmt::format("the model computed a non-finite logit ({}) for word id {}: its "
                                        "parameters contain NaN or inf",
                                        logits[v], v));
    }
  }

  // 1. Candidates: every word, or the top_k largest logits (lower id first on ties).
  std::vector<TokenId> candidates(static_cast<std::size_t>(vocab_size));
  std::iota(candidates.begin(), candidates.end(), 0);
  std::size_t candidate_count = candidates.size();
  if (top_k > 0 && top_k < vocab_size) {
    candidate_count = static_cast<std::size_t>(top_k);
    const auto ranks_higher = [&](TokenId a, TokenId b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    std::partial_sort(candidates.begin(), candidates.begin() + top_k, candidates.end(), ranks_higher);
  }

  // 2. Unnormalized softmax of logits / temperature, shifted by the largest logit.
  double max_logit = -std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < candidate_count; ++i) {
    max_logit = std::max(max_logit, static_cast<double>(logits[candidates[i]]));
  }
  std::vector<double> weights(candidate_count);
  double total = 0.0;
  for (std::size_t i = 0; i < candidate_count; ++i) {
    weights[i] = std::exp((static_cast<double>(logits[candidates[i]]) - max_logit) / temperature);
    total += weights[i];
  }

  // 3. Inverse-CDF draw. The last candidate catches a rounding shortfall.
  const double u = rng.uniform_double() * total;
  double cumulative = 0.0;
  for (std::size_t i = 0; i < candidate_count; ++i) {
    cumulative += weights[i];
    if (u < cumulative) return candidates[i];
  }
  return candidates[candidate_count - 1];
}

std::vector<TokenId> sample_words(LanguageModel& model, const Vocabulary& vocab,
                                  const std::vector<TokenId>& prompt, const SampleOptions& options) {
  validate_sample_options(options);
  std::vector<TokenId> words;
  if (options.words == 0) return words;
  const std::vector<TokenId> context = prompt.empty() ? std::vector<TokenId>{end_of_sentence_id(vocab)} : prompt;
  const int V = model.config().vocab_size;

  // Feed the whole context as one window. Targets are not used, but the loss
  // computed by model_forward needs valid ids.
  int steps = static_cast<int>(context.size());
  Workspace ws(model.config(), /*batch=*/1, steps, WorkspaceUse::kEvaluation);
  reset_state(ws);
  std::copy(context.begin(), context.end(), ws.inputs.begin());
  std::fill(ws.targets.begin(), ws.targets.end(), 0);
  model_forward(model, ws, steps, /*training=*/false, nullptr);

  Rng rng(options.seed);
  words.reserve(static_cast<std::size_t>(options.words));
  while (true) {
    const TokenId next = draw_word(ws.logits.col(steps - 1).data(), V, options.temperature, options.top_k, rng);
    words.push_back(next);
    if (static_cast<int>(words.size()) == options.words) break;
    carry_state(ws, steps);
    steps = 1;
    ws.inputs[0] = next;
    model_forward(model, ws, steps, /*training=*/false, nullptr);
  }
  return words;
}

std::string format_words(const std::vector<TokenId>& ids, const Vocabulary& vocab) {
  std::string text;
  bool line_start = true;
  for (const TokenId id : ids) {
    const std::string& word = vocab.word(id);
    if (word == kEndOfSentence) {
      text += '\n';
      line_start = true;
      continue;
    }
    if (!line_start) text += ' ';
    text += word;
    line_start = false;
  }
  if (!line_start) text += '\n';
  return text;
}

double ScoreResult::perplexity() const {
  return tokens > 0 ? std::exp(-log_prob / static_cast<double>(tokens)) : std::nan("");
}

ScoreResult score_sentences(LanguageModel& model, const Vocabulary& vocab, const TokenizedText& text,
                            const std::string& unk_token, int window) {
  if (window < 1) throw ConfigError(fmt::format("invalid scoring window of {} steps: must be >= 1", window));
  const EncodedText encoded = encode(text, vocab, unk_token);
  const std::int64_t count = static_cast<std::int64_t>(encoded.ids.size());
  if (count == 0) throw DataError("no sentences to score in " + text.path.string() + ": the file is empty");

  // Prediction j scores token j of the file from the tokens before it, so the
  // input sequence is "<eos>" followed by the file without its last token.
  std::vector<TokenId> sequence;
  sequence.reserve(static_cast<std::size_t>(count) + 1);
  sequence.push_back(end_of_sentence_id(vocab));
  sequence.insert(sequence.end(), encoded.ids.begin(), encoded.ids.end());

  ScoreResult result;
  result.unk_mapped = encoded.unk_mapped;
  Workspace ws(model.config(), /*batch=*/1, window, WorkspaceUse::kEvaluation);
  reset_state(ws);
  SentenceScore sentence;
  sentence.line = text.line_of_token[0];
  for (std::int64_t start = 0; start < count; start += window) {
    const int steps = static_cast<int>(std::min<std::int64_t>(window, count - start));
    for (int t = 0; t < steps; ++t) {
      ws.inputs[t] = sequence[static_cast<std::size_t>(start + t)];
      ws.targets[t] = sequence[static_cast<std::size_t>(start + t + 1)];
    }
    model_forward(model, ws, steps, /*training=*/false, nullptr);
    for (int t = 0; t < steps; ++t) {
      const std::int64_t j = start + t;
      sentence.log_prob -= static_cast<double>(ws.column_loss[t]);
      sentence.tokens += 1;
      // A sentence is one line of the file, so it ends with that line's last token.
      const bool last_of_line = j + 1 == count || text.line_of_token[j + 1] != text.line_of_token[j];
      if (last_of_line) {
        result.log_prob += sentence.log_prob;
        result.tokens += sentence.tokens;
        result.sentences.push_back(sentence);
        sentence = SentenceScore{};
        if (j + 1 < count) sentence.line = text.line_of_token[j + 1];
      }
    }
    carry_state(ws, steps);
  }
  return result;
}

}  // namespace lstm

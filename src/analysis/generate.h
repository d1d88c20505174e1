#pragma once
// Sampling text from a trained model and scoring sentences with it, one
// stream (batch 1) at a time, with dropout off.
//
// Sampling starts from the state after the prompt: the prompt's words are fed
// in one window, the logits of its last step give the first sampled word, and
// each sampled word is fed back as the next input. An empty prompt starts from
// the state after "<eos>", i.e. at the start of a sentence.

#include <cstdint>
#include <string>
#include <vector>

#include "data/corpus.h"
#include "data/vocabulary.h"
#include "model/model.h"
#include "tensor/random.h"

namespace lstm {

struct SampleOptions {
  int words = 100;           // tokens to sample, <eos> included
  double temperature = 1.0;  // > 0, divides the logits before the softmax
  int top_k = 0;             // draw only among the k most probable words; 0 = all
  std::uint64_t seed = 1;
};

// Throws ConfigError unless temperature > 0 (and finite), top_k >= 0 and words >= 0.
void validate_sample_options(const SampleOptions& options);

// Splits the prompt on spaces and tabs and maps each word to its id. Throws
// ConfigError naming every word that is not in the vocabulary.
std::vector<TokenId> encode_prompt(const std::string& prompt, const Vocabulary& vocab);

// Draws one word from softmax(logits / temperature) restricted to the top_k
// largest logits (all when top_k is 0 or >= the vocabulary size), computed in
// double. Ties between equal logits keep the lower id first, so top_k = 1 is
// the argmax with the lowest id. logits: V values.
TokenId draw_word(const float* logits, int vocab_size, double temperature, int top_k, Rng& rng);

// Samples options.words tokens after the prompt (ids, or empty to start from
// "<eos>"). The same model, prompt and options give the same tokens.
std::vector<TokenId> sample_words(LanguageModel& model, const Vocabulary& vocab,
                                  const std::vector<TokenId>& prompt, const SampleOptions& options);

// Joins tokens with spaces and writes each "<eos>" as a line break; the text
// ends with a line break unless it is empty.
std::string format_words(const std::vector<TokenId>& ids, const Vocabulary& vocab);

struct SentenceScore {
  std::int64_t line = 0;    // 1-based line of the sentence in its file
  double log_prob = 0.0;    // natural log, summed over the words and the final <eos>
  std::int64_t tokens = 0;  // words + 1 for the <eos>
};

struct ScoreResult {
  std::vector<SentenceScore> sentences;
  double log_prob = 0.0;    // sum over the sentences
  std::int64_t tokens = 0;  // sum over the sentences
  std::int64_t unk_mapped = 0;  // words replaced by data.unk_token
  double perplexity() const;    // exp(-log_prob / tokens)
};

// Scores every sentence of a tokenized file, one stream with the state carried
// across sentences, starting from the state after "<eos>". Out-of-vocabulary
// words become unk_token when it is set, else DataError names the word and
// line. `window` is the number of steps per forward pass; it does not change
// the result.
ScoreResult score_sentences(LanguageModel& model, const Vocabulary& vocab, const TokenizedText& text,
                            const std::string& unk_token, int window);

}  // namespace lstm

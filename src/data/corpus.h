#pragma once
// Text to token ids. A corpus file is UTF-8 text, one sentence per line; the
// words of a line (split on spaces and tabs) are followed by <eos>. CRLF and
// LF endings are accepted, blank lines are skipped, and the last line needs
// no newline.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "config/settings.h"
#include "data/vocabulary.h"

namespace lstm {

// A tokenized file: each sentence's words, <eos> included.
struct TokenizedText {
  std::filesystem::path path;
  std::vector<std::string> tokens;
  std::vector<std::int64_t> line_of_token;  // 1-based line of each token, for error messages
};

TokenizedText read_tokens(const std::filesystem::path& path);

// Builds the vocabulary of the train split, by data.max_vocab_size, data.min_count
// and data.unk_token. Words keep the order of their first appearance.
Vocabulary build_vocabulary(const TokenizedText& train, const DataSettings& settings);

struct EncodedText {
  std::vector<TokenId> ids;
  std::int64_t unk_mapped = 0;  // tokens replaced by data.unk_token
};

// Maps tokens to ids. An out-of-vocabulary word becomes unk_token when it is
// set, else throws DataError naming the word, file and line.
EncodedText encode(const TokenizedText& text, const Vocabulary& vocab, const std::string& unk_token);

struct SplitPaths {
  std::filesystem::path train, valid, test;
};

// Resolves the three split files from data.train/valid/test or data.dir.
SplitPaths resolve_split_paths(const DataSettings& settings);

// The three splits of a config, encoded with the train vocabulary.
struct Corpus {
  Vocabulary vocab;
  SplitPaths paths;
  EncodedText train, valid, test;
};

Corpus load_corpus(const DataSettings& settings);

}  // namespace lstm

#include "data/corpus.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "util/error.h"

namespace lstm {

namespace {

namespace fs = std::filesystem;

// Length of the valid UTF-8 sequence starting at text[i], or 0 if invalid.
std::size_t utf8_sequence_length(const std::string& text, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  if (lead < 0x80) return 1;
  std::size_t length;
  std::uint32_t min_code;
  std::uint32_t code;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, min_code = 0x80, code = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, min_code = 0x800, code = lead & 0x0F;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, min_code = 0x10000, code = lead & 0x07;
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  for (std::size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    code = (code << 6) | (byte(i + k) & 0x3F);
  }
  // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are invalid.
  if (code < min_code || (code >= 0xD800 && code <= 0xDFFF) || code > 0x10FFFF) return 0;
  return length;
}

bool is_word_separator(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

}  // namespace

TokenizedText read_tokens(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw DataError("data file not found: " + path.string() +
                    " (for PTB run scripts/get_ptb.sh, or point data.dir at your corpus)");
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (!in.good() && !in.eof()) throw DataError("cannot read data file " + path.string());
  const std::string text = buffer.str();

  TokenizedText result;
  result.path = path;
  std::int64_t line = 1;
  std::size_t line_start = 0;
  bool line_has_words = false;
  std::string word;
  auto end_word = [&] {
    if (!word.empty()) {
      result.tokens.push_back(std::move(word));
      result.line_of_token.push_back(line);
      word.clear();
      line_has_words = true;
    }
  };
  for (std::size_t i = 0; i < text.size();) {
    const char c = text[i];
    if (c == '\n') {
      end_word();
      if (line_has_words) {
        result.tokens.emplace_back(kEndOfSentence);
        result.line_of_token.push_back(line);
      }
      line_has_words = false;
      ++line;
      line_start = ++i;
      continue;
    }
    if (is_word_separator(c)) {
      end_word();
      ++i;
      continue;
    }
    const std::size_t length = utf8_sequence_length(text, i);
    if (length == 0) {
      throw DataError("invalid UTF-8 in " + path.string() + " at line " + std::to_string(line) +
                      ", byte " + std::to_string(i - line_start + 1) + " of the line (file offset " +
                      std::to_string(i) + "): convert the file to UTF-8");
    }
    word.append(text, i, length);
    i += length;
  }
  end_word();
  if (line_has_words) {
    result.tokens.emplace_back(kEndOfSentence);
    result.line_of_token.push_back(line);
  }
  if (result.tokens.empty()) {
    throw DataError("data file " + path.string() + " contains no words: give a non-empty corpus");
  }
  return result;
}

Vocabulary build_vocabulary(const TokenizedText& train, const DataSettings& settings) {
  struct WordStats {
    std::int64_t count = 0;
    std::size_t first = 0;
  };
  std::unordered_map<std::string, WordStats> stats;
  std::vector<std::string> order;
  for (std::size_t i = 0; i < train.tokens.size(); ++i) {
    auto [it, inserted] = stats.try_emplace(train.tokens[i]);
    if (inserted) {
      it->second.first = order.size();
      order.push_back(train.tokens[i]);
    }
    ++it->second.count;
  }

  // Words that must stay whatever their count.
  auto required = [&](const std::string& w) {
    return w == kEndOfSentence || (!settings.unk_token.empty() && w == settings.unk_token);
  };
  std::vector<std::string> kept;
  for (const auto& w : order) {
    if (required(w) || stats[w].count >= settings.min_count) kept.push_back(w);
  }
  // An unk_token absent from the train text takes one of the max_vocab_size slots.
  const bool add_unk = !settings.unk_token.empty() && stats.find(settings.unk_token) == stats.end();
  const int word_slots = settings.max_vocab_size - (add_unk ? 1 : 0);
  if (settings.max_vocab_size > 0 && static_cast<int>(kept.size()) > word_slots) {
    // Most frequent first; ties go to the word seen first, so the choice is deterministic.
    std::stable_sort(kept.begin(), kept.end(), [&](const std::string& a, const std::string& b) {
      const bool ra = required(a), rb = required(b);
      if (ra != rb) return ra;
      return stats[a].count > stats[b].count;
    });
    kept.resize(static_cast<std::size_t>(std::max(word_slots, 1)));
    std::sort(kept.begin(), kept.end(), [&](const std::string& a, const std::string& b) {
      return stats[a].first < stats[b].first;
    });
  }
  if (kept.size() < order.size() && settings.unk_token.empty()) {
    throw ConfigError("data.max_vocab_size/data.min_count leave " +
                      std::to_string(order.size() - kept.size()) +
                      " train words out of the vocabulary: set data.unk_token (e.g. \"<unk>\") to map them");
  }
  if (add_unk) kept.push_back(settings.unk_token);
  return Vocabulary(std::move(kept));
}

EncodedText encode(const TokenizedText& text, const Vocabulary& vocab, const std::string& unk_token) {
  EncodedText out;
  out.ids.reserve(text.tokens.size());
  const TokenId unk_id = unk_token.empty() ? -1 : vocab.find(unk_token);
  for (std::size_t i = 0; i < text.tokens.size(); ++i) {
    TokenId id = vocab.find(text.tokens[i]);
    if (id < 0) {
      if (unk_id < 0) {
        throw DataError("word \"" + text.tokens[i] + "\" in " + text.path.string() + " line " +
                        std::to_string(text.line_of_token[i]) +
                        " is not in the train vocabulary: set data.unk_token to map unseen words");
      }
      id = unk_id;
      ++out.unk_mapped;
    }
    out.ids.push_back(id);
  }
  return out;
}

SplitPaths resolve_split_paths(const DataSettings& settings) {
  const fs::path dir(settings.dir);
  auto pick = [&](const std::string& explicit_path, const char* split) -> fs::path {
    if (!explicit_path.empty()) return explicit_path;
    const fs::path plain = dir / (std::string(split) + ".txt");
    const fs::path ptb = dir / ("ptb." + std::string(split) + ".txt");
    std::error_code ec;
    if (fs::exists(plain, ec)) return plain;
    if (fs::exists(ptb, ec)) return ptb;
    if (!fs::is_directory(dir, ec)) {
      throw DataError("data folder not found: " + dir.string() +
                      " (for PTB run scripts/get_ptb.sh, or set data.dir to your corpus folder)");
    }
    throw DataError("no " + std::string(split) + " split in " + dir.string() + ": expected " +
                    plain.filename().string() + " or " + ptb.filename().string() +
                    " (or set data." + split + ")");
  };
  return {pick(settings.train_file, "train"), pick(settings.valid_file, "valid"),
          pick(settings.test_file, "test")};
}

Corpus load_corpus(const DataSettings& settings) {
  Corpus corpus;
  corpus.paths = resolve_split_paths(settings);
  const TokenizedText train = read_tokens(corpus.paths.train);
  corpus.vocab = build_vocabulary(train, settings);
  corpus.train = encode(train, corpus.vocab, settings.unk_token);
  corpus.valid = encode(read_tokens(corpus.paths.valid), corpus.vocab, settings.unk_token);
  corpus.test = encode(read_tokens(corpus.paths.test), corpus.vocab, settings.unk_token);
  return corpus;
}

}  // namespace lstm

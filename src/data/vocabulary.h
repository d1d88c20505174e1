#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "tensor/types.h"

namespace lstm {

inline constexpr const char* kEndOfSentence = "<eos>";

class Vocabulary {
 public:
  Vocabulary() = default;
  explicit Vocabulary(std::vector<std::string> words);

  int size() const { return static_cast<int>(words_.size()); }
  const std::string& word(TokenId id) const { return words_.at(static_cast<std::size_t>(id)); }
  const std::vector<std::string>& words() const { return words_; }
  // -1 when the word is not in the vocabulary.
  TokenId find(const std::string& word) const;

 private:
  std::vector<std::string> words_;
  std::unordered_map<std::string, TokenId> ids_;
};

}  // namespace lstm

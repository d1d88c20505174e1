#include "data/vocabulary.h"

#include "util/error.h"

namespace lstm {

Vocabulary::Vocabulary(std::vector<std::string> words) : words_(std::move(words)) {
  ids_.reserve(words_.size());
  for (std::size_t i = 0; i < words_.size(); ++i) {
    if (!ids_.emplace(words_[i], static_cast<TokenId>(i)).second) {
      throw DataError("vocabulary lists the word \"" + words_[i] + "\" twice");
    }
  }
}

TokenId Vocabulary::find(const std::string& word) const {
  const auto it = ids_.find(word);
  return it == ids_.end() ? -1 : it->second;
}

}  // namespace lstm

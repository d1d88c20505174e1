// Corpus reading, vocabulary building and encoding on small files written by
// each test.

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "data/corpus.h"
#include "data/vocabulary.h"
#include "test_files.h"
#include "util/error.h"

namespace {

namespace fs = std::filesystem;
using Tokens = std::vector<std::string>;

using namespace lstm::test;

// The message of the error of type E that `action` throws, or a marker
// message when it throws nothing or another type.
template <typename E, typename Action>
std::string error_of(Action action) {
  try {
    action();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<wrong exception type: ") + e.what() + ">";
  }
  return "<no exception>";
}

class Tokenize : public ::testing::Test {
 protected:
  Tokens tokens_of(const std::string& bytes) {
    return lstm::read_tokens(write_bytes(dir_.path() / "text.txt", bytes)).tokens;
  }
  std::string data_error_of(const std::string& bytes) {
    const fs::path path = write_bytes(dir_.path() / "bad.txt", bytes);
    return error_of<lstm::DataError>([&] { lstm::read_tokens(path); });
  }
  fs::path bad_path() const { return dir_.path() / "bad.txt"; }

  TempDir dir_{"data"};
};

TEST_F(Tokenize, LinesEndWithEos) {
  EXPECT_EQ(tokens_of("the cat\nsat down\n"), (Tokens{"the", "cat", "<eos>", "sat", "down", "<eos>"}));
}

TEST_F(Tokenize, CrlfMatchesLf) {
  const Tokens lf = tokens_of("a b\nc d\n");
  const Tokens crlf = tokens_of("a b\r\nc d\r\n");
  EXPECT_EQ(crlf, lf);
  EXPECT_EQ(crlf, (Tokens{"a", "b", "<eos>", "c", "d", "<eos>"}));
}

TEST_F(Tokenize, BlankLinesSkipped) {
  const fs::path path = write_bytes(dir_.path() / "blank.txt", "a\n\n   \n\t\r\nb\n\n");
  const lstm::TokenizedText text = lstm::read_tokens(path);
  EXPECT_EQ(text.tokens, (Tokens{"a", "<eos>", "b", "<eos>"}));
  // Line numbers still count the blank lines, for error messages.
  EXPECT_EQ(text.line_of_token, (std::vector<std::int64_t>{1, 1, 5, 5}));
}

TEST_F(Tokenize, TabsAndRepeatedSpacesSplit) {
  EXPECT_EQ(tokens_of("  a\t\tb    c \t\n"), (Tokens{"a", "b", "c", "<eos>"}));
}

TEST_F(Tokenize, LastLineWithoutNewline) {
  EXPECT_EQ(tokens_of("a b\nc"), (Tokens{"a", "b", "<eos>", "c", "<eos>"}));
  EXPECT_EQ(tokens_of("a b\r\nc d"), (Tokens{"a", "b", "<eos>", "c", "d", "<eos>"}));
}

TEST_F(Tokenize, Utf8WordsKept) {
  EXPECT_EQ(tokens_of("caf\xC3\xA9 \xE6\x9D\xB1\xE4\xBA\xAC na\xC3\xAFve \xF0\x9F\x98\x80\n"),
            (Tokens{"caf\xC3\xA9", "\xE6\x9D\xB1\xE4\xBA\xAC", "na\xC3\xAFve", "\xF0\x9F\x98\x80", "<eos>"}));
}

TEST_F(Tokenize, InvalidUtf8NamesFileLineAndOffset) {
  struct Case {
    const char* description;
    std::string bytes;
    std::string position;  // expected "line L, byte B of the line (file offset O)"
  };
  const Case cases[] = {
      {"lone 0xFF", std::string("ok fine\nab\xFF" "cd\n"), "line 2, byte 3 of the line (file offset 10)"},
      {"truncated 3-byte sequence", std::string("x \xE6\x9D\ny\n"), "line 1, byte 3 of the line (file offset 2)"},
      {"truncated at end of file", std::string("x\ny \xE6\x9D"), "line 2, byte 3 of the line (file offset 4)"},
      {"overlong slash", std::string("a\nb\n\xC0\xAF\n"), "line 3, byte 1 of the line (file offset 4)"},
      {"UTF-16 surrogate", std::string("a \xED\xA0\x80\n"), "line 1, byte 3 of the line (file offset 2)"},
      {"past U+10FFFF", std::string("\xF4\x90\x80\x80\n"), "line 1, byte 1 of the line (file offset 0)"},
      {"lone continuation byte", std::string("ab \x80\n"), "line 1, byte 4 of the line (file offset 3)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.description);
    const std::string message = data_error_of(c.bytes);
    EXPECT_TRUE(contains(message, bad_path().string())) << message;
    EXPECT_TRUE(contains(message, "invalid UTF-8")) << message;
    EXPECT_TRUE(contains(message, c.position)) << message;
  }
}

TEST_F(Tokenize, EmptyFileRejected) {
  const std::string message = data_error_of("");
  EXPECT_TRUE(contains(message, bad_path().string())) << message;
  EXPECT_TRUE(contains(message, "no words")) << message;
}

TEST_F(Tokenize, WhitespaceOnlyFileRejected) {
  const std::string message = data_error_of(" \n\t\r\n\n   ");
  EXPECT_TRUE(contains(message, bad_path().string())) << message;
  EXPECT_TRUE(contains(message, "no words")) << message;
}

TEST_F(Tokenize, MissingFileRejected) {
  const fs::path missing = dir_.path() / "absent.txt";
  const std::string message = error_of<lstm::DataError>([&] { lstm::read_tokens(missing); });
  EXPECT_TRUE(contains(message, missing.string())) << message;
  EXPECT_TRUE(contains(message, "not found")) << message;
}

TEST_F(Tokenize, FolderRejectedAsFile) {
  const std::string message = error_of<lstm::DataError>([&] { lstm::read_tokens(dir_.path()); });
  EXPECT_TRUE(contains(message, dir_.path().string())) << message;
}

// Train text for the vocabulary tests. Counts: x 1, y 2, z 2, w 2, <eos> 1.
// Order of first appearance: x y z w <eos>.
class VocabularyTest : public ::testing::Test {
 protected:
  lstm::TokenizedText train() { return lstm::read_tokens(write_bytes(dir_.path() / "train.txt", "x y y z z w w\n")); }
  TempDir dir_{"data"};
};

TEST_F(VocabularyTest, KeepsFirstAppearanceOrder) {
  const lstm::Vocabulary vocab = lstm::build_vocabulary(train(), lstm::DataSettings{});
  EXPECT_EQ(vocab.words(), (Tokens{"x", "y", "z", "w", "<eos>"}));
  EXPECT_EQ(vocab.find("z"), 2);
  EXPECT_EQ(vocab.find("absent"), -1);
}

TEST_F(VocabularyTest, MaxSizeBreaksTiesByFirstAppearance) {
  lstm::DataSettings settings;
  settings.max_vocab_size = 4;
  settings.unk_token = "x";  // a train word, so no word is added
  // Kept: x (the unk token), <eos> (always), then two of y, z, w (count 2 each):
  // y and z, which appear before w.
  const lstm::Vocabulary vocab = lstm::build_vocabulary(train(), settings);
  EXPECT_EQ(vocab.words(), (Tokens{"x", "y", "z", "<eos>"}));
}

TEST_F(VocabularyTest, MaxSizeIsDeterministic) {
  lstm::DataSettings settings;
  settings.max_vocab_size = 3;
  settings.unk_token = "<unk>";
  const lstm::Vocabulary first = lstm::build_vocabulary(train(), settings);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(lstm::build_vocabulary(train(), settings).words(), first.words());
  }
  EXPECT_NE(first.find("y"), -1);
  EXPECT_EQ(first.find("w"), -1);
  EXPECT_EQ(first.find("x"), -1);
}

TEST_F(VocabularyTest, MaxSizeCountsUnkToken) {
  lstm::DataSettings settings;
  settings.max_vocab_size = 3;
  settings.unk_token = "<unk>";  // not in the train text
  const lstm::Vocabulary vocab = lstm::build_vocabulary(train(), settings);
  EXPECT_NE(vocab.find("<unk>"), -1);
  EXPECT_NE(vocab.find("<eos>"), -1);
  // data.max_vocab_size documents "keep at most this many words".
  EXPECT_LE(vocab.size(), 3) << "data.max_vocab_size = 3 gave " << vocab.size()
                             << " words: the added unk token is not counted against the limit";
}

TEST_F(VocabularyTest, MinCountDropsRareWords) {
  lstm::DataSettings settings;
  settings.min_count = 2;
  settings.unk_token = "<unk>";
  const lstm::Vocabulary vocab = lstm::build_vocabulary(train(), settings);
  // x is seen once and left out, but <eos> (also once) always stays.
  EXPECT_EQ(vocab.words(), (Tokens{"y", "z", "w", "<eos>", "<unk>"}));
}

TEST_F(VocabularyTest, UnkMapsLeftOutAndUnseenWords) {
  lstm::DataSettings settings;
  settings.min_count = 2;
  settings.unk_token = "<unk>";
  const lstm::TokenizedText text = train();
  const lstm::Vocabulary vocab = lstm::build_vocabulary(text, settings);
  const lstm::TokenId unk = vocab.find("<unk>");

  const lstm::EncodedText train_ids = lstm::encode(text, vocab, settings.unk_token);
  EXPECT_EQ(train_ids.unk_mapped, 1);
  ASSERT_EQ(train_ids.ids.size(), 8u);
  EXPECT_EQ(train_ids.ids[0], unk);  // x
  EXPECT_EQ(train_ids.ids[1], vocab.find("y"));

  const lstm::TokenizedText valid = lstm::read_tokens(write_bytes(dir_.path() / "valid.txt", "y new x\nnew\n"));
  const lstm::EncodedText valid_ids = lstm::encode(valid, vocab, settings.unk_token);
  EXPECT_EQ(valid_ids.unk_mapped, 3);
  EXPECT_EQ(valid_ids.ids,
            (std::vector<lstm::TokenId>{vocab.find("y"), unk, unk, vocab.find("<eos>"), unk, vocab.find("<eos>")}));
}

TEST_F(VocabularyTest, UnseenWordWithoutUnkRejected) {
  const lstm::Vocabulary vocab = lstm::build_vocabulary(train(), lstm::DataSettings{});
  const fs::path valid_path = write_bytes(dir_.path() / "valid.txt", "y z\nw stranger\n");
  const lstm::TokenizedText valid = lstm::read_tokens(valid_path);
  const std::string message = error_of<lstm::DataError>([&] { lstm::encode(valid, vocab, ""); });
  EXPECT_TRUE(contains(message, "\"stranger\"")) << message;
  EXPECT_TRUE(contains(message, valid_path.string())) << message;
  EXPECT_TRUE(contains(message, "line 2")) << message;
  EXPECT_TRUE(contains(message, "data.unk_token")) << message;
}

TEST_F(VocabularyTest, LimitsWithoutUnkRejected) {
  lstm::DataSettings by_count;
  by_count.min_count = 2;
  const std::string count_message = error_of<lstm::ConfigError>([&] { lstm::build_vocabulary(train(), by_count); });
  EXPECT_TRUE(contains(count_message, "data.unk_token")) << count_message;
  EXPECT_TRUE(contains(count_message, "data.min_count")) << count_message;

  lstm::DataSettings by_size;
  by_size.max_vocab_size = 2;
  const std::string size_message = error_of<lstm::ConfigError>([&] { lstm::build_vocabulary(train(), by_size); });
  EXPECT_TRUE(contains(size_message, "data.unk_token")) << size_message;
  EXPECT_TRUE(contains(size_message, "data.max_vocab_size")) << size_message;
}

TEST_F(VocabularyTest, LimitsThatDropNothingNeedNoUnk) {
  lstm::DataSettings settings;
  settings.max_vocab_size = 5;
  settings.min_count = 1;
  EXPECT_EQ(lstm::build_vocabulary(train(), settings).size(), 5);
}

TEST(VocabularyClass, DuplicateWordRejected) {
  const std::string message = error_of<lstm::DataError>([] { lstm::Vocabulary(Tokens{"a", "b", "a"}); });
  EXPECT_TRUE(contains(message, "\"a\"")) << message;
}

class SplitPaths : public ::testing::Test {
 protected:
  void write_splits(const fs::path& folder, const std::string& prefix) {
    fs::create_directories(folder);
    for (const char* split : {"train", "valid", "test"}) write_bytes(folder / (prefix + split + ".txt"), "a\n");
  }
  lstm::DataSettings in(const fs::path& folder) {
    lstm::DataSettings settings;
    settings.dir = folder.string();
    return settings;
  }
  TempDir dir_{"data"};
};

TEST_F(SplitPaths, FindsPlainNames) {
  write_splits(dir_.path() / "plain", "");
  const lstm::SplitPaths paths = lstm::resolve_split_paths(in(dir_.path() / "plain"));
  EXPECT_EQ(paths.train, dir_.path() / "plain" / "train.txt");
  EXPECT_EQ(paths.valid, dir_.path() / "plain" / "valid.txt");
  EXPECT_EQ(paths.test, dir_.path() / "plain" / "test.txt");
}

TEST_F(SplitPaths, FindsPtbNames) {
  write_splits(dir_.path() / "ptb", "ptb.");
  const lstm::SplitPaths paths = lstm::resolve_split_paths(in(dir_.path() / "ptb"));
  EXPECT_EQ(paths.train, dir_.path() / "ptb" / "ptb.train.txt");
  EXPECT_EQ(paths.valid, dir_.path() / "ptb" / "ptb.valid.txt");
  EXPECT_EQ(paths.test, dir_.path() / "ptb" / "ptb.test.txt");
}

TEST_F(SplitPaths, ExplicitFileOverridesFolder) {
  write_splits(dir_.path() / "plain", "");
  const fs::path other = write_bytes(dir_.path() / "other_train.txt", "b\n");
  lstm::DataSettings settings = in(dir_.path() / "plain");
  settings.train_file = other.string();
  const lstm::SplitPaths paths = lstm::resolve_split_paths(settings);
  EXPECT_EQ(paths.train, other);
  EXPECT_EQ(paths.valid, dir_.path() / "plain" / "valid.txt");
}

TEST_F(SplitPaths, ExplicitFilesNeedNoFolder) {
  lstm::DataSettings settings = in(dir_.path() / "does_not_exist");
  settings.train_file = write_bytes(dir_.path() / "t.txt", "a\n").string();
  settings.valid_file = write_bytes(dir_.path() / "v.txt", "a\n").string();
  settings.test_file = write_bytes(dir_.path() / "s.txt", "a\n").string();
  const lstm::SplitPaths paths = lstm::resolve_split_paths(settings);
  EXPECT_EQ(paths.test, dir_.path() / "s.txt");
}

TEST_F(SplitPaths, MissingFolderRejected) {
  const fs::path missing = dir_.path() / "no_corpus_here";
  const std::string message = error_of<lstm::DataError>([&] { lstm::resolve_split_paths(in(missing)); });
  EXPECT_TRUE(contains(message, missing.string())) << message;
  EXPECT_TRUE(contains(message, "not found")) << message;
}

TEST_F(SplitPaths, MissingSplitRejected) {
  const fs::path folder = dir_.path() / "partial";
  fs::create_directories(folder);
  write_bytes(folder / "train.txt", "a\n");
  write_bytes(folder / "valid.txt", "a\n");
  const std::string message = error_of<lstm::DataError>([&] { lstm::resolve_split_paths(in(folder)); });
  EXPECT_TRUE(contains(message, folder.string())) << message;
  EXPECT_TRUE(contains(message, "test.txt")) << message;
  EXPECT_TRUE(contains(message, "data.test")) << message;
}

TEST_F(SplitPaths, LoadCorpusEncodesAllSplits) {
  const fs::path folder = dir_.path() / "c";
  fs::create_directories(folder);
  write_bytes(folder / "train.txt", "a b\nb c\n");
  write_bytes(folder / "valid.txt", "c a\n");
  write_bytes(folder / "test.txt", "b\r\n");
  const lstm::Corpus corpus = lstm::load_corpus(in(folder));
  EXPECT_EQ(corpus.vocab.words(), (Tokens{"a", "b", "<eos>", "c"}));
  EXPECT_EQ(corpus.train.ids, (std::vector<lstm::TokenId>{0, 1, 2, 1, 3, 2}));
  EXPECT_EQ(corpus.valid.ids, (std::vector<lstm::TokenId>{3, 0, 2}));
  EXPECT_EQ(corpus.test.ids, (std::vector<lstm::TokenId>{1, 2}));
}

}  // namespace

// Config loading and validation: every rejected value must raise a
// ConfigError whose message names the key and the offending value.

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config/settings.h"
#include "test_files.h"
#include "util/error.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using namespace lstm::test;

// The message of the ConfigError that `action` throws, or a failure message
// when it throws nothing or another type.
template <typename Action>
std::string config_error_of(Action action) {
  try {
    action();
  } catch (const lstm::ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a ConfigError: ") + e.what() + ">";
  }
  return "<no exception>";
}

std::string error_for_document(const json& document, const std::vector<std::string>& overrides = {}) {
  return config_error_of([&] { lstm::settings_from_json(document, overrides, "test.json"); });
}

std::string error_for_override(const std::string& item) { return error_for_document(json::object(), {item}); }

// Every key listed by describe_config_keys(), from lines "  key (type, default v): doc".
std::vector<std::string> documented_keys() {
  std::vector<std::string> keys;
  std::istringstream lines(lstm::describe_config_keys());
  std::string line;
  while (std::getline(lines, line)) {
    const auto first = line.find_first_not_of(' ');
    const auto paren = line.find(" (");
    if (first == std::string::npos || paren == std::string::npos) continue;
    keys.push_back(line.substr(first, paren - first));
  }
  return keys;
}

// Leaf paths of a nested object, joined with dots.
void collect_leaves(const json& node, const std::string& prefix, std::set<std::string>& out) {
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it->is_object()) {
      collect_leaves(*it, key, out);
    } else {
      out.insert(key);
    }
  }
}

TEST(ConfigFile, MissingFileNamesPath) {
  TempDir dir("config");
  const fs::path missing = dir.path() / "no_such_config.json";
  const std::string message = config_error_of([&] { lstm::load_settings(missing, {}); });
  EXPECT_NE(message.find(missing.string()), std::string::npos) << message;
}

TEST(ConfigFile, MalformedJsonGivesLineAndColumn) {
  TempDir dir("config");
  // The trailing comma on line 3 makes the '}' at line 4, column 3 invalid.
  const fs::path path = write_bytes(dir.path() / "broken.json",
                                    "{\n"
                                    "  \"train\": {\n"
                                    "    \"lr\": 1.0,\n"
                                    "  }\n"
                                    "}\n");
  const std::string message = config_error_of([&] { lstm::load_settings(path, {}); });
  EXPECT_NE(message.find(path.string()), std::string::npos) << message;
  EXPECT_NE(message.find("line 4, column 3"), std::string::npos) << message;
}

TEST(ConfigFile, MalformedJsonPointsIntoToken) {
  TempDir dir("config");
  // The ':' is missing, so the string "lstm" (columns 19 to 24) is the first
  // invalid token. Any column inside it leads the reader there.
  const fs::path path = write_bytes(dir.path() / "broken.json", "{\"model\": {\"cell\" \"lstm\"}}\n");
  const std::string message = config_error_of([&] { lstm::load_settings(path, {}); });
  int line = 0, column = 0;
  const auto at = message.find("line ");
  ASSERT_NE(at, std::string::npos) << message;
  ASSERT_EQ(std::sscanf(message.c_str() + at, "line %d, column %d", &line, &column), 2) << message;
  EXPECT_EQ(line, 1) << message;
  EXPECT_GE(column, 19) << message;
  EXPECT_LE(column, 24) << message;
}

TEST(ConfigFile, NumberOverflowRejected) {
  TempDir dir("config");
  // Valid JSON syntax, but 1e400 does not fit a double.
  const fs::path path = write_bytes(dir.path() / "overflow.json", "{\"train\": {\"lr\": 1e400}}\n");
  const std::string message = config_error_of([&] { lstm::load_settings(path, {}); });
  EXPECT_NE(message.find(path.string()), std::string::npos) << message;
  EXPECT_EQ(message.rfind("<not a ConfigError", 0), std::string::npos) << message;
}

TEST(ConfigFile, OverridesApplyToFile) {
  TempDir dir("config");
  const fs::path path = write_bytes(dir.path() / "c.json", R"({"train": {"lr": 2.5, "bptt": 12}})");
  const lstm::Settings s = lstm::load_settings(path, {"train.bptt=7"});
  EXPECT_EQ(s.train.lr, 2.5);
  EXPECT_EQ(s.train.bptt, 7);
}

TEST(ConfigFile, ErrorNamesFileAsSource) {
  TempDir dir("config");
  const fs::path path = write_bytes(dir.path() / "c.json", R"({"train": {"bptt": 0}})");
  const std::string message = config_error_of([&] { lstm::load_settings(path, {}); });
  EXPECT_NE(message.find(path.string()), std::string::npos) << message;
  EXPECT_NE(message.find("train.bptt"), std::string::npos) << message;
}

TEST(ConfigKeys, UnknownKeySuggestsSameSection) {
  const std::string message = error_for_document(json::parse(R"({"train": {"batch": 1}})"));
  EXPECT_NE(message.find("\"train.batch\""), std::string::npos) << message;
  EXPECT_NE(message.find("did you mean \"train.batch_size\""), std::string::npos) << message;
}

TEST(ConfigKeys, OtherToolsNamesSuggestOurKeys) {
  // Spellings from PyTorch's word_language_model and elsewhere, which the
  // closest key by edit distance would get wrong.
  const std::pair<const char*, const char*> cases[] = {
      {"train.learning_rate=5", "train.lr"}, {"clip=0.5", "train.clip_norm"}, {"model.tied=true", "model.tie_weights"},
      {"nhid=200", "model.hidden_size"},     {"emsize=200", "model.embedding_size"}};
  for (const auto& [override_text, key] : cases) {
    const std::string message = error_for_override(override_text);
    EXPECT_NE(message.find(std::string("did you mean \"") + key + "\""), std::string::npos)
        << override_text << ": " << message;
  }
}

TEST(ConfigKeys, MisspelledKeySuggestsExactKey) {
  const std::string message = error_for_document(json::parse(R"({"model": {"hiden_size": 10}})"));
  EXPECT_NE(message.find("\"model.hiden_size\""), std::string::npos) << message;
  EXPECT_NE(message.find("did you mean \"model.hidden_size\""), std::string::npos) << message;
}

TEST(ConfigKeys, KeyWithoutSectionSuggestsFullKey) {
  const std::string message = error_for_override("lr=10");
  EXPECT_NE(message.find("did you mean \"train.lr\""), std::string::npos) << message;
}

TEST(ConfigKeys, KeyInWrongSectionSuggestsSections) {
  const std::string message = error_for_document(json::parse(R"({"model": {"bptt": 35}})"));
  EXPECT_NE(message.find("\"train.bptt\""), std::string::npos) << message;
  EXPECT_NE(message.find("\"eval.bptt\""), std::string::npos) << message;
}

TEST(ConfigKeys, UnknownOverrideKeyRejected) {
  const std::string message = error_for_override("model.hiden_size=10");
  EXPECT_NE(message.find("\"model.hiden_size\""), std::string::npos) << message;
  EXPECT_NE(message.find("\"model.hidden_size\""), std::string::npos) << message;
}

TEST(ConfigKeys, ObjectInPlaceOfValueRejected) {
  const std::string message = error_for_document(json::parse(R"({"model": {"cell": {"kind": "lstm"}}})"));
  EXPECT_NE(message.find("model.cell"), std::string::npos) << message;
  EXPECT_NE(message.find("object"), std::string::npos) << message;
}

TEST(ConfigKeys, NonObjectDocumentRejected) {
  const std::string message = error_for_document(json::parse("[1, 2]"));
  EXPECT_NE(message.find("array"), std::string::npos) << message;
}

TEST(ConfigTypes, StringForIntegerRejected) {
  const std::string message = error_for_document(json::parse(R"({"train": {"bptt": "35"}})"));
  EXPECT_NE(message.find("train.bptt"), std::string::npos) << message;
  EXPECT_NE(message.find("\"35\""), std::string::npos) << message;
  EXPECT_NE(message.find("integer"), std::string::npos) << message;
}

TEST(ConfigTypes, NumberForBoolRejected) {
  const std::string message = error_for_document(json::parse(R"({"model": {"tie_weights": 1}})"));
  EXPECT_NE(message.find("model.tie_weights"), std::string::npos) << message;
  EXPECT_NE(message.find("got 1"), std::string::npos) << message;
}

TEST(ConfigTypes, FractionForIntegerRejected) {
  const std::string message = error_for_document(json::parse(R"({"train": {"batch_size": 2.5}})"));
  EXPECT_NE(message.find("train.batch_size"), std::string::npos) << message;
  EXPECT_NE(message.find("2.5"), std::string::npos) << message;
}

TEST(ConfigTypes, IntegerAcceptedForFloat) {
  const lstm::Settings s = lstm::settings_from_json(json::parse(R"({"train": {"lr": 3}})"), {}, "test.json");
  EXPECT_EQ(s.train.lr, 3.0);
}

TEST(ConfigRange, OutOfRangeValuesRejected) {
  struct Case {
    const char* document;
    const char* key;
    const char* value;
  };
  const Case cases[] = {
      {R"({"train": {"lr": 0}})", "train.lr", "0"},
      {R"({"train": {"lr": -1}})", "train.lr", "-1"},
      {R"({"train": {"batch_size": 0}})", "train.batch_size", "0"},
      {R"({"train": {"bptt": 0}})", "train.bptt", "0"},
      {R"({"model": {"dropout": 1.0}})", "model.dropout", "1.0"},
      {R"({"model": {"dropout": -0.1}})", "model.dropout", "-0.1"},
      {R"({"train": {"clip_norm": -1}})", "train.clip_norm", "-1"},
      {R"({"train": {"epochs": 0}})", "train.epochs", "0"},
      {R"({"data": {"min_count": 0}})", "data.min_count", "0"},
      {R"({"eval": {"batch_size": 0}})", "eval.batch_size", "0"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.document);
    const std::string message = error_for_document(json::parse(c.document));
    EXPECT_NE(message.find(std::string(c.key) + " = " + c.value), std::string::npos) << message;
    EXPECT_NE(message.find("out of range"), std::string::npos) << message;
  }
}

TEST(ConfigRange, BoundaryValuesAccepted) {
  const lstm::Settings s = lstm::settings_from_json(
      json::parse(R"({"model": {"dropout": 0.0}, "train": {"clip_norm": 0, "lr": 1e-9, "bptt": 1, "batch_size": 1}})"),
      {}, "test.json");
  EXPECT_EQ(s.model.dropout, 0.0f);
  EXPECT_EQ(s.train.clip_norm, 0.0);
  EXPECT_EQ(s.train.bptt, 1);
  EXPECT_EQ(s.train.batch_size, 1);
}

TEST(ConfigEnum, UnknownCellRejected) {
  const std::string message = error_for_document(json::parse(R"({"model": {"cell": "transformer"}})"));
  EXPECT_NE(message.find("model.cell"), std::string::npos) << message;
  EXPECT_NE(message.find("\"transformer\""), std::string::npos) << message;
  EXPECT_NE(message.find("\"lstm\""), std::string::npos) << message;
}

TEST(ConfigEnum, UnknownOptimizerRejected) {
  const std::string message = error_for_override("train.optimizer=rmsprop");
  EXPECT_NE(message.find("train.optimizer"), std::string::npos) << message;
  EXPECT_NE(message.find("\"rmsprop\""), std::string::npos) << message;
}

TEST(ConfigOverride, NumberParsedAsJson) {
  const lstm::Settings s = lstm::settings_from_json(json::object(), {"train.lr=10"}, "test.json");
  EXPECT_EQ(s.train.lr, 10.0);
}

TEST(ConfigOverride, BareWordParsedAsString) {
  const lstm::Settings s = lstm::settings_from_json(json::object(), {"model.cell=rnn"}, "test.json");
  EXPECT_EQ(s.model.cell, lstm::CellType::kRnn);
  EXPECT_EQ(s.resolved["model"]["cell"], json("rnn"));
}

TEST(ConfigOverride, BoolParsedAsJson) {
  const lstm::Settings s = lstm::settings_from_json(json::object(), {"model.variational_dropout=true"}, "test.json");
  EXPECT_TRUE(s.model.variational_dropout);
}

TEST(ConfigOverride, LaterOverrideWins) {
  const lstm::Settings s =
      lstm::settings_from_json(json::parse(R"({"train": {"bptt": 5}})"), {"train.bptt=6", "train.bptt=8"}, "test.json");
  EXPECT_EQ(s.train.bptt, 8);
}

TEST(ConfigOverride, MissingEqualsRejected) {
  const std::string message = error_for_override("train.lr");
  EXPECT_NE(message.find("\"train.lr\""), std::string::npos) << message;
  EXPECT_NE(message.find("key.path=value"), std::string::npos) << message;
}

TEST(ConfigOverride, EmptyKeyRejected) {
  const std::string message = error_for_override("=5");
  EXPECT_NE(message.find("\"=5\""), std::string::npos) << message;
}

TEST(ConfigOverride, WordForNumberRejected) {
  const std::string message = error_for_override("train.lr=fast");
  EXPECT_NE(message.find("train.lr"), std::string::npos) << message;
  EXPECT_NE(message.find("\"fast\""), std::string::npos) << message;
}

TEST(ConfigOverride, InvalidUtf8ValueRejected) {
  // A --set value that is not JSON is taken as a raw string of any bytes.
  // Rejecting it must still raise a ConfigError naming the key.
  for (const char* item : {"train.lr=\xB1", "model.cell=\xB1"}) {
    SCOPED_TRACE(item);
    const std::string message = error_for_override(item);
    const std::string key = std::string(item).substr(0, std::string(item).find('='));
    EXPECT_NE(message.find(key), std::string::npos) << message;
    EXPECT_EQ(message.rfind("<not a ConfigError", 0), std::string::npos) << message;
  }
}

TEST(ConfigOverride, NumberOverflowRejected) {
  const std::string message = error_for_override("train.lr=1e400");
  EXPECT_NE(message.find("train.lr"), std::string::npos) << message;
  EXPECT_EQ(message.rfind("<not a ConfigError", 0), std::string::npos) << message;
}

TEST(ConfigDefaults, EmptyDocumentGetsDefaults) {
  const lstm::Settings s = lstm::settings_from_json(json::object(), {}, "test.json");
  const lstm::TrainSettings train_defaults;
  const lstm::DataSettings data_defaults;
  const lstm::EvalSettings eval_defaults;
  EXPECT_EQ(s.train.batch_size, train_defaults.batch_size);
  EXPECT_EQ(s.train.bptt, train_defaults.bptt);
  EXPECT_EQ(s.train.epochs, train_defaults.epochs);
  EXPECT_EQ(s.train.lr, train_defaults.lr);
  EXPECT_EQ(s.train.clip_norm, train_defaults.clip_norm);
  EXPECT_EQ(s.train.log_interval, train_defaults.log_interval);
  EXPECT_EQ(s.train.optimizer, train_defaults.optimizer);
  EXPECT_EQ(s.train.seed, train_defaults.seed);
  EXPECT_EQ(s.data.min_count, data_defaults.min_count);
  EXPECT_EQ(s.data.max_vocab_size, data_defaults.max_vocab_size);
  EXPECT_EQ(s.data.unk_token, data_defaults.unk_token);
  EXPECT_EQ(s.eval.batch_size, eval_defaults.batch_size);
  EXPECT_EQ(s.eval.bptt, eval_defaults.bptt);
  EXPECT_EQ(s.model.cell, lstm::CellType::kLstm);
  EXPECT_EQ(s.model.embedding_size, 100);
  EXPECT_EQ(s.model.hidden_size, 100);
  EXPECT_EQ(s.model.num_layers, 1);
  EXPECT_FALSE(s.model.tie_weights);
  EXPECT_EQ(s.data.dir, "data/ptb");
}

TEST(ConfigResolved, HoldsEveryDocumentedKey) {
  const std::vector<std::string> keys = documented_keys();
  ASSERT_GE(keys.size(), 30u) << lstm::describe_config_keys();
  const lstm::Settings s = lstm::settings_from_json(json::object(), {}, "test.json");
  std::set<std::string> leaves;
  collect_leaves(s.resolved, "", leaves);
  for (const auto& key : keys) {
    EXPECT_EQ(leaves.count(key), 1u) << "resolved config lacks " << key;
  }
  EXPECT_EQ(leaves.size(), keys.size()) << s.resolved.dump();
}

TEST(ConfigResolved, KeepsGivenValues) {
  const lstm::Settings s = lstm::settings_from_json(
      json::parse(R"({"model": {"hidden_size": 48}, "data": {"unk_token": "<unk>"}})"), {"train.lr=0.5"}, "test.json");
  EXPECT_EQ(s.resolved["model"]["hidden_size"], json(48));
  EXPECT_EQ(s.resolved["data"]["unk_token"], json("<unk>"));
  EXPECT_EQ(s.resolved["train"]["lr"].get<double>(), 0.5);
}

TEST(ConfigResolved, RoundTripsUnchanged) {
  const lstm::Settings first =
      lstm::settings_from_json(json::parse(R"({"model": {"cell": "gru", "num_layers": 2}})"), {}, "test.json");
  const lstm::Settings second = lstm::settings_from_json(first.resolved, {}, "resolved");
  EXPECT_EQ(first.resolved, second.resolved);
  EXPECT_EQ(second.model.cell, lstm::CellType::kGru);
  EXPECT_EQ(second.model.num_layers, 2);
}

TEST(ConfigTie, UnequalSizesNameBoth) {
  const std::string message = error_for_document(
      json::parse(R"({"model": {"tie_weights": true, "embedding_size": 32, "hidden_size": 64}})"));
  EXPECT_NE(message.find("model.tie_weights"), std::string::npos) << message;
  EXPECT_NE(message.find("model.embedding_size (32)"), std::string::npos) << message;
  EXPECT_NE(message.find("model.hidden_size (64)"), std::string::npos) << message;
}

TEST(ConfigTie, EqualSizesAccepted) {
  const lstm::Settings s = lstm::settings_from_json(
      json::parse(R"({"model": {"tie_weights": true, "embedding_size": 40, "hidden_size": 40}})"), {}, "test.json");
  EXPECT_TRUE(s.model.tie_weights);
}

TEST(ConfigErrors, MessagesAreOneLine) {
  const std::vector<std::string> messages = {
      error_for_document(json::parse(R"({"train": {"lr": 0}})")),
      error_for_document(json::parse(R"({"model": {"hiden_size": 10}})")),
      error_for_document(json::parse(R"({"model": {"cell": "transformer"}})")),
      error_for_override("train.lr"),
  };
  for (const auto& message : messages) {
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    EXPECT_EQ(message.find('<'), std::string::npos) << message;  // "<no exception>" or a wrong type
  }
}

}  // namespace

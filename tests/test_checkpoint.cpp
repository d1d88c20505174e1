// Checkpoint round trips, the safetensors layout on disk, and damaged or
// half-written files. Every damaged file must raise a CheckpointError naming
// the file and the problem. The sanitizer build of CI checks that no case
// reads out of bounds.

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config/settings.h"
#include "data/vocabulary.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "tensor/random.h"
#include "test_files.h"
#include "train/evaluate.h"
#include "train/optimizer.h"
#include "util/error.h"

#if defined(__SANITIZE_ADDRESS__)
#define LSTM_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LSTM_TEST_ASAN 1
#endif
#endif

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using namespace lstm::test;

// A model with its vocabulary and resolved config, small enough that a
// checkpoint is a few kB.
struct TinyModel {
  lstm::Settings settings;
  lstm::Vocabulary vocab;
  std::unique_ptr<lstm::LanguageModel> model;

  explicit TinyModel(const json& model_section = {{"cell", "lstm"}, {"embedding_size", 4}, {"hidden_size", 4}}) {
    const json config = {{"data", {{"dir", "unused"}}}, {"model", model_section}};
    settings = lstm::settings_from_json(config, {}, "tiny config");
    std::vector<std::string> words;
    for (int i = 0; i < 19; ++i) words.push_back(std::string(1, 'w').append(std::to_string(i)));
    words.push_back("<eos>");
    vocab = lstm::Vocabulary(words);
    settings.model.vocab_size = vocab.size();
    model = std::make_unique<lstm::LanguageModel>(settings.model);
    lstm::Rng rng(7);
    model->initialize(rng);
  }

  void save(const fs::path& path) {
    lstm::CheckpointInputs inputs{model.get(), &settings.resolved, &vocab};
    lstm::save_checkpoint(path, inputs);
  }
};

std::vector<lstm::TokenId> random_ids(int count, int vocab_size) {
  lstm::Rng rng(3);
  std::vector<lstm::TokenId> ids(static_cast<std::size_t>(count));
  for (auto& id : ids) id = static_cast<lstm::TokenId>(rng.below(static_cast<std::uint64_t>(vocab_size)));
  return ids;
}

double perplexity_of(lstm::LanguageModel& model, const lstm::ModelConfig& config) {
  lstm::Workspace ws(config, 3, 7);
  return lstm::evaluate(model, ws, random_ids(300, config.vocab_size)).perplexity();
}

// A safetensors file split into its parts, parsed independently of the
// product's reader.
struct RawFile {
  std::uint64_t header_length = 0;
  json header;
  std::string data;
};

RawFile parse_raw(const std::string& bytes) {
  RawFile raw;
  if (bytes.size() < 8) throw std::runtime_error("file shorter than 8 bytes");
  for (int i = 0; i < 8; ++i) {
    raw.header_length |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]))
                         << (8 * i);
  }
  if (raw.header_length > bytes.size() - 8) throw std::runtime_error("header length past the end");
  raw.header = json::parse(bytes.substr(8, raw.header_length));
  raw.data = bytes.substr(8 + raw.header_length);
  return raw;
}

std::string length_prefix(std::uint64_t n) {
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return prefix;
}

// Writes header and data as a safetensors file. With fix_checksum the stored
// checksum is recomputed, so the reader gets past its checksum test to the
// check a test aims at.
void write_raw(const fs::path& path, json header, const std::string& data, bool fix_checksum = true) {
  if (fix_checksum) {
    std::map<std::string, std::string> metadata;
    for (auto it = header["__metadata__"].begin(); it != header["__metadata__"].end(); ++it) {
      if (it->is_string()) metadata[it.key()] = it->get<std::string>();
    }
    header["__metadata__"]["checksum"] = lstm::safetensors_checksum(data, metadata);
  }
  const std::string text = header.dump();
  write_bytes(path, length_prefix(text.size()) + text + data);
}

// The message of the CheckpointError that loading `path` throws, or a marker
// message when it throws nothing or another type.
std::string load_error(const fs::path& path) {
  try {
    lstm::load_checkpoint(path);
  } catch (const lstm::CheckpointError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a CheckpointError: ") + e.what() + ">";
  }
  return "<no exception>";
}

// Name of the tensor whose data ends last.
std::string last_tensor(const json& header) {
  std::string name;
  std::uint64_t end = 0;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto e = (*it)["data_offsets"][1].get<std::uint64_t>();
    if (name.empty() || e > end) {
      name = it.key();
      end = e;
    }
  }
  return name;
}

#ifndef LSTM_TEST_ASAN
// Virtual memory size of this process, from /proc/self/statm.
std::uint64_t mapped_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t pages = 0;
  statm >> pages;
  return pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}
#endif

class CheckpointFile : public ::testing::Test {
 protected:
  void SetUp() override {
    good_ = dir_.path() / "good.safetensors";
    tiny_.save(good_);
    bytes_ = read_bytes(good_);
    raw_ = parse_raw(bytes_);
  }

  // Loads a damaged copy and checks the message names the file and `problem`.
  void expect_rejected(const fs::path& path, const std::string& problem) {
    const std::string message = load_error(path);
    EXPECT_TRUE(contains(message, path.string())) << message;
    EXPECT_TRUE(contains(message, problem)) << "expected \"" << problem << "\" in: " << message;
  }

  fs::path damaged(const std::string& name) const { return dir_.path() / name; }

  TempDir dir_{"checkpoint"};
  TinyModel tiny_;
  fs::path good_;
  std::string bytes_;
  RawFile raw_;
};

TEST_F(CheckpointFile, ParametersRoundTripBitExact) {
  const lstm::LoadedCheckpoint loaded = lstm::load_checkpoint(good_);
  const lstm::Vector& saved = tiny_.model->params().values();
  const lstm::Vector& restored = loaded.model->params().values();
  ASSERT_EQ(restored.size(), saved.size());
  EXPECT_EQ(std::memcmp(restored.data(), saved.data(), static_cast<std::size_t>(saved.size()) * sizeof(float)), 0);
  EXPECT_EQ(loaded.vocab.words(), tiny_.vocab.words());
  EXPECT_EQ(loaded.settings.resolved, tiny_.settings.resolved);
  EXPECT_EQ(loaded.settings.model.vocab_size, 20);
  EXPECT_FALSE(loaded.state.has_value());
}

TEST_F(CheckpointFile, PerplexityRoundTripBitExact) {
  lstm::LoadedCheckpoint loaded = lstm::load_checkpoint(good_);
  const double before = perplexity_of(*tiny_.model, tiny_.settings.model);
  const double after = perplexity_of(*loaded.model, loaded.settings.model);
  ASSERT_TRUE(std::isfinite(before));
  EXPECT_EQ(std::bit_cast<std::uint64_t>(after), std::bit_cast<std::uint64_t>(before))
      << "before " << before << ", after " << after;
}

TEST_F(CheckpointFile, LayoutIsValidSafetensors) {
  // The data section starts 8-byte aligned.
  EXPECT_EQ((8 + raw_.header_length) % 8, 0u);
  ASSERT_TRUE(raw_.header.is_object());

  const lstm::ParamStore& params = tiny_.model->params();
  std::set<std::string> expected_names;
  for (const auto& entry : params.entries()) expected_names.insert(entry.name);
  std::set<std::string> stored_names;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;

  for (auto it = raw_.header.begin(); it != raw_.header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    SCOPED_TRACE(it.key());
    stored_names.insert(it.key());
    const json& info = *it;
    EXPECT_EQ(info["dtype"], json("F32"));
    ASSERT_TRUE(params.contains(it.key()));
    const lstm::TensorEntry& entry = params.entry(it.key());
    const std::vector<std::int64_t> expected_shape(entry.shape.begin(), entry.shape.end());
    EXPECT_EQ(info["shape"].get<std::vector<std::int64_t>>(), expected_shape);

    const auto begin = info["data_offsets"][0].get<std::uint64_t>();
    const auto end = info["data_offsets"][1].get<std::uint64_t>();
    ASSERT_LE(begin, end);
    ASSERT_LE(end, raw_.data.size());
    EXPECT_EQ(end - begin, static_cast<std::uint64_t>(entry.size) * sizeof(float));
    EXPECT_EQ(std::memcmp(raw_.data.data() + begin, params.values().data() + entry.offset, end - begin), 0);
    ranges.emplace_back(begin, end);
  }
  EXPECT_EQ(stored_names, expected_names);

  // The tensors tile the data section without gaps or overlaps.
  std::sort(ranges.begin(), ranges.end());
  std::uint64_t next = 0;
  for (const auto& [begin, end] : ranges) {
    EXPECT_EQ(begin, next);
    next = end;
  }
  EXPECT_EQ(next, raw_.data.size());

  const json& meta = raw_.header["__metadata__"];
  ASSERT_TRUE(meta.is_object());
  EXPECT_EQ(meta["format"], json("lstm-lm"));
  EXPECT_EQ(meta["format_version"], json("1"));
  std::map<std::string, std::string> metadata;
  for (auto it = meta.begin(); it != meta.end(); ++it) {
    ASSERT_TRUE(it->is_string()) << it.key();
    metadata[it.key()] = it->get<std::string>();
  }
  EXPECT_EQ(meta["checksum"], json(lstm::safetensors_checksum(raw_.data, metadata)));
  EXPECT_EQ(json::parse(metadata["vocab"]).get<std::vector<std::string>>(), tiny_.vocab.words());
  EXPECT_EQ(json::parse(metadata["config"]), tiny_.settings.resolved);
}

TEST_F(CheckpointFile, MissingFileRejected) {
  expect_rejected(damaged("absent.safetensors"), "not found");
}

TEST_F(CheckpointFile, TruncatedFilesRejected) {
  const std::size_t lengths[] = {0, 4, 7, 8, 20, bytes_.size() / 2, 8 + raw_.header_length, bytes_.size() - 1};
  for (const std::size_t length : lengths) {
    SCOPED_TRACE("truncated to " + std::to_string(length) + " of " + std::to_string(bytes_.size()) + " bytes");
    const fs::path path = damaged("cut" + std::to_string(length) + ".safetensors");
    write_bytes(path, bytes_.substr(0, length));
    expect_rejected(path, "truncated");
  }
}

TEST_F(CheckpointFile, EditedMagicFailsChecksum) {
  std::string bytes = bytes_;
  const auto at = bytes.find("\"lstm-lm\"");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 9, "\"lstm-xx\"");
  const fs::path path = damaged("magic_edited.safetensors");
  write_bytes(path, bytes);
  expect_rejected(path, "checksum mismatch");
}

TEST_F(CheckpointFile, BadMagicRejected) {
  json header = raw_.header;
  header["__metadata__"]["format"] = "pytorch";
  const fs::path path = damaged("magic.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "bad magic");
  expect_rejected(path, "\"pytorch\"");
}

TEST_F(CheckpointFile, MissingMagicRejected) {
  json header = raw_.header;
  header["__metadata__"].erase("format");
  const fs::path path = damaged("no_magic.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "bad magic");
}

TEST_F(CheckpointFile, WrongFormatVersionRejected) {
  json header = raw_.header;
  header["__metadata__"]["format_version"] = "2";
  const fs::path path = damaged("version.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "format version 2");
}

TEST_F(CheckpointFile, MissingChecksumRejected) {
  json header = raw_.header;
  header["__metadata__"].erase("checksum");
  const fs::path path = damaged("no_checksum.safetensors");
  write_raw(path, header, raw_.data, /*fix_checksum=*/false);
  expect_rejected(path, "checksum is missing");
}

TEST_F(CheckpointFile, FlippedDataByteFailsChecksum) {
  for (const std::size_t at : {std::size_t{0}, raw_.data.size() / 2, raw_.data.size() - 1}) {
    SCOPED_TRACE("data byte " + std::to_string(at));
    std::string bytes = bytes_;
    bytes[8 + raw_.header_length + at] ^= 0x01;
    const fs::path path = damaged("flip" + std::to_string(at) + ".safetensors");
    write_bytes(path, bytes);
    expect_rejected(path, "checksum mismatch");
  }
}

TEST_F(CheckpointFile, EditedConfigFailsChecksum) {
  std::string bytes = bytes_;
  const auto at = bytes.find("hidden_size\\\":4");
  ASSERT_NE(at, std::string::npos) << bytes.substr(8, raw_.header_length);
  bytes[at + 14] = '5';
  const fs::path path = damaged("config_edited.safetensors");
  write_bytes(path, bytes);
  expect_rejected(path, "checksum mismatch");
}

TEST_F(CheckpointFile, HeaderLengthPastEndRejected) {
  for (const std::uint64_t length : {std::uint64_t{bytes_.size()}, std::uint64_t{bytes_.size() - 7},
                                     std::uint64_t{1} << 40, ~std::uint64_t{0}}) {
    SCOPED_TRACE("header length " + std::to_string(length));
    const fs::path path = damaged("length.safetensors");
    write_bytes(path, length_prefix(length) + bytes_.substr(8));
    expect_rejected(path, "header length");
  }
}

TEST_F(CheckpointFile, HeaderNotJsonRejected) {
  std::string bytes = bytes_;
  bytes[8] = '!';
  const fs::path path = damaged("not_json.safetensors");
  write_bytes(path, bytes);
  expect_rejected(path, "not valid JSON");
}

TEST_F(CheckpointFile, HeaderNumberOverflowRejected) {
  // Valid JSON syntax, but 1e400 does not fit a double.
  const std::string header = R"({"__metadata__": {"format": "lstm-lm"}, "x": 1e400})";
  const fs::path path = damaged("overflow.safetensors");
  write_bytes(path, length_prefix(header.size()) + header);
  const std::string message = load_error(path);
  EXPECT_TRUE(contains(message, path.string())) << message;
  EXPECT_EQ(message.rfind("<not a CheckpointError", 0), std::string::npos) << message;
}

TEST_F(CheckpointFile, HeaderNotObjectRejected) {
  const fs::path path = damaged("array.safetensors");
  write_bytes(path, length_prefix(2) + "[]");
  expect_rejected(path, "not a JSON object");
}

TEST_F(CheckpointFile, OffsetsPastEndRejected) {
  json header = raw_.header;
  const std::string name = last_tensor(header);
  const auto begin = header[name]["data_offsets"][0].get<std::uint64_t>();
  const auto end = header[name]["data_offsets"][1].get<std::uint64_t>();
  header[name]["data_offsets"] = {begin + 4, end + 4};
  const fs::path path = damaged("offsets.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "run past");
  expect_rejected(path, name);
}

TEST_F(CheckpointFile, HugeOffsetsRejected) {
  json header = raw_.header;
  const std::string name = last_tensor(header);
  header[name]["data_offsets"] = {~std::uint64_t{0} - 3, ~std::uint64_t{0}};
  const fs::path path = damaged("huge_offsets.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, name);
}

TEST_F(CheckpointFile, ReversedOffsetsRejected) {
  json header = raw_.header;
  const std::string name = last_tensor(header);
  const auto begin = header[name]["data_offsets"][0].get<std::uint64_t>();
  const auto end = header[name]["data_offsets"][1].get<std::uint64_t>();
  header[name]["data_offsets"] = {end, begin};
  const fs::path path = damaged("reversed.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, name);
}

TEST_F(CheckpointFile, OverlappingTensorsRejected) {
  json header = raw_.header;
  // Point decoder.bias at the first bytes of embedding.weight.
  const auto size = header["decoder.bias"]["data_offsets"][1].get<std::uint64_t>() -
                    header["decoder.bias"]["data_offsets"][0].get<std::uint64_t>();
  const auto begin = header["embedding.weight"]["data_offsets"][0].get<std::uint64_t>();
  header["decoder.bias"]["data_offsets"] = {begin, begin + size};
  const fs::path path = damaged("overlap.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "overlap");
}

TEST_F(CheckpointFile, ShapeNotMatchingConfigRejected) {
  json header = raw_.header;
  // Same number of floats, so the offsets stay consistent; only the shape differs.
  ASSERT_EQ(header["embedding.weight"]["shape"], json({20, 4}));
  header["embedding.weight"]["shape"] = {4, 20};
  const fs::path path = damaged("shape.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "embedding.weight");
  expect_rejected(path, "[4,20]");
  expect_rejected(path, "[20,4]");
}

TEST_F(CheckpointFile, ShapeWithFewerValuesRejected) {
  json header = raw_.header;
  // decoder.bias [20] becomes [19], and its offsets shrink to match.
  const auto begin = header["decoder.bias"]["data_offsets"][0].get<std::uint64_t>();
  header["decoder.bias"]["shape"] = {19};
  header["decoder.bias"]["data_offsets"] = {begin, begin + 19 * 4};
  const fs::path path = damaged("fewer.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "decoder.bias");
  expect_rejected(path, "[19]");
}

TEST_F(CheckpointFile, ShapeLengthMismatchRejected) {
  json header = raw_.header;
  header["decoder.bias"]["shape"] = {21};  // 84 bytes, but the offsets span 80
  const fs::path path = damaged("length_mismatch.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "decoder.bias");
}

TEST_F(CheckpointFile, NegativeShapeRejected) {
  json header = raw_.header;
  header["decoder.bias"]["shape"] = {-20};
  const fs::path path = damaged("negative.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "invalid shape");
}

TEST_F(CheckpointFile, OverflowingShapeRejected) {
  // 2^40 x 2^24 floats wrap to 0 in 64 bits, which would match empty offsets.
  json header = raw_.header;
  header["extra"] = {{"dtype", "F32"}, {"shape", {std::uint64_t{1} << 40, std::uint64_t{1} << 24}},
                     {"data_offsets", {0, 0}}};
  const fs::path path = damaged("overflow.safetensors");
  write_raw(path, header, raw_.data);
  std::string message = "<no exception>";
  try {
    lstm::read_safetensors(path);
  } catch (const lstm::CheckpointError& e) {
    message = e.what();
  }
  EXPECT_TRUE(contains(message, "\"extra\"")) << "read_safetensors accepted a tensor of 2^64 floats stored in 0 bytes: "
                                              << message;
}

TEST_F(CheckpointFile, DtypeF16Rejected) {
  json header = raw_.header;
  header["decoder.bias"]["dtype"] = "F16";
  const fs::path path = damaged("f16.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "\"F16\"");
  expect_rejected(path, "decoder.bias");
}

TEST_F(CheckpointFile, TensorFieldsMissingRejected) {
  json header = raw_.header;
  header["decoder.bias"].erase("data_offsets");
  const fs::path path = damaged("fields.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "decoder.bias");
}

TEST_F(CheckpointFile, MissingTensorRejected) {
  json header = raw_.header;
  header.erase("decoder.bias");
  const fs::path path = damaged("missing_tensor.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "\"decoder.bias\" is missing");
}

TEST_F(CheckpointFile, NonStringMetadataRejected) {
  json header = raw_.header;
  header["__metadata__"]["format_version"] = 1;
  const fs::path path = damaged("meta_type.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "format_version");
}

TEST_F(CheckpointFile, InvalidStoredConfigRejected) {
  json header = raw_.header;
  json config = json::parse(header["__metadata__"]["config"].get<std::string>());
  config["model"]["hidden_size"] = "four";
  header["__metadata__"]["config"] = config.dump();
  const fs::path path = damaged("config.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "model.hidden_size");
}

TEST_F(CheckpointFile, MalformedVocabularyRejected) {
  const std::string vocabularies[] = {"not json", "{\"a\": 1}", "[\"w0\", \"w0\"]", "[]"};
  for (const std::string& vocab : vocabularies) {
    SCOPED_TRACE(vocab);
    json header = raw_.header;
    header["__metadata__"]["vocab"] = vocab;
    const fs::path path = damaged("vocab.safetensors");
    write_raw(path, header, raw_.data);
    expect_rejected(path, "invalid checkpoint");
  }
}

TEST_F(CheckpointFile, MalformedTrainingStateRejected) {
  json header = raw_.header;
  header["__metadata__"]["training_state"] = R"({"epoch": "one"})";
  const fs::path path = damaged("state.safetensors");
  write_raw(path, header, raw_.data);
  expect_rejected(path, "training_state");
}

TEST_F(CheckpointFile, OversizedConfigRejected) {
#ifdef LSTM_TEST_ASAN
  GTEST_SKIP() << "needs an address-space limit, which AddressSanitizer's shadow memory does not allow";
#else
  // The stored config requests hidden_size 65536 (128 GiB of parameters, and
  // as much again for gradients) while the file contains a 4-wide model. The
  // loader should compare the file's shapes with the config before allocating
  // the model.
  json header = raw_.header;
  json config = json::parse(header["__metadata__"]["config"].get<std::string>());
  config["model"]["embedding_size"] = 65536;
  config["model"]["hidden_size"] = 65536;
  header["__metadata__"]["config"] = config.dump();
  const fs::path path = damaged("oversized.safetensors");
  write_raw(path, header, raw_.data);

  // In a child process allowed 2 GiB more address space than it has, so a
  // failed guard cannot take the machine's memory.
  const std::uint64_t limit_bytes = mapped_bytes() + (2ULL << 30);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const rlimit limit{limit_bytes, limit_bytes};
    ::setrlimit(RLIMIT_AS, &limit);
    int code = 3;
    try {
      lstm::load_checkpoint(path);
      code = 4;
    } catch (const lstm::CheckpointError& e) {
      code = contains(e.what(), path.string()) ? 0 : 5;
    } catch (const std::bad_alloc&) {
      code = 6;
    } catch (...) {
      code = 7;
    }
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "child ended by signal " << WTERMSIG(status);
  const int code = WEXITSTATUS(status);
  EXPECT_NE(code, 4) << "a config of hidden_size 65536 loaded from a file of 4-wide tensors";
  EXPECT_NE(code, 6) << "load_checkpoint threw std::bad_alloc, not a CheckpointError: it allocates the model "
                        "of the stored config before checking the file's tensor shapes";
  EXPECT_EQ(code, 0);
#endif
}

TEST(CheckpointTraining, StateAndBuffersRoundTrip) {
  TempDir dir("checkpoint");
  TinyModel tiny;
  lstm::TrainSettings train;
  train.optimizer = lstm::OptimizerKind::kAdam;
  lstm::Optimizer optimizer(train, tiny.model->params().total_size());
  for (Eigen::Index i = 0; i < optimizer.first_moment().size(); ++i) {
    optimizer.first_moment()[i] = 0.001f * static_cast<float>(i);
    optimizer.second_moment()[i] = 0.002f * static_cast<float>(i);
  }
  optimizer.update_count() = 17;
  lstm::Workspace ws(tiny.settings.model, 2, 3);
  const int carried = ws.layers[0].batch * ws.layers[0].hidden_size;
  for (int i = 0; i < carried; ++i) {
    ws.layers[0].hbuf.data()[i] = 0.5f + static_cast<float>(i);
    ws.layers[0].cbuf.data()[i] = -0.25f * static_cast<float>(i);
  }
  lstm::TrainingState state;
  state.epoch = 1;
  state.position = 123;
  state.step = 456;
  state.lr = 0.625;
  state.lr_scale = 0.5;
  state.best_valid = 87.5;
  state.dropout_rng = {1, 2, 3, 0xFFFFFFFFFFFFFFFFULL};
  state.tokens_trained = 9999;

  const fs::path path = dir.path() / "last.safetensors";
  lstm::CheckpointInputs inputs{tiny.model.get(), &tiny.settings.resolved, &tiny.vocab, &state, &optimizer, &ws};
  lstm::save_checkpoint(path, inputs);

  const lstm::LoadedCheckpoint loaded = lstm::load_checkpoint(path);
  ASSERT_TRUE(loaded.state.has_value());
  EXPECT_EQ(loaded.state->epoch, 1);
  EXPECT_EQ(loaded.state->position, 123);
  EXPECT_EQ(loaded.state->step, 456);
  EXPECT_EQ(loaded.state->lr, 0.625);
  EXPECT_EQ(loaded.state->lr_scale, 0.5);
  ASSERT_TRUE(loaded.state->best_valid.has_value());
  EXPECT_EQ(*loaded.state->best_valid, 87.5);
  EXPECT_EQ(loaded.state->dropout_rng, state.dropout_rng);
  EXPECT_EQ(loaded.state->tokens_trained, 9999);

  lstm::Optimizer restored_optimizer(train, tiny.model->params().total_size());
  lstm::Workspace restored_ws(tiny.settings.model, 2, 3);
  lstm::restore_training_buffers(loaded, restored_optimizer, restored_ws);
  EXPECT_EQ(restored_optimizer.update_count(), 17);
  EXPECT_EQ(restored_optimizer.first_moment(), optimizer.first_moment());
  EXPECT_EQ(restored_optimizer.second_moment(), optimizer.second_moment());
  for (int i = 0; i < carried; ++i) {
    EXPECT_EQ(restored_ws.layers[0].hbuf.data()[i], ws.layers[0].hbuf.data()[i]) << i;
    EXPECT_EQ(restored_ws.layers[0].cbuf.data()[i], ws.layers[0].cbuf.data()[i]) << i;
  }
}

TEST(CheckpointTraining, MalformedAdamCountRejected) {
  TempDir dir("checkpoint");
  TinyModel tiny;
  lstm::TrainSettings train;
  train.optimizer = lstm::OptimizerKind::kAdam;
  lstm::Optimizer optimizer(train, tiny.model->params().total_size());
  lstm::Workspace ws(tiny.settings.model, 2, 3);
  lstm::TrainingState state;
  const fs::path path = dir.path() / "last.safetensors";
  lstm::CheckpointInputs inputs{tiny.model.get(), &tiny.settings.resolved, &tiny.vocab, &state, &optimizer, &ws};
  lstm::save_checkpoint(path, inputs);

  RawFile raw = parse_raw(read_bytes(path));
  raw.header["__metadata__"]["adam_updates"] = "many";
  write_raw(path, raw.header, raw.data);
  const lstm::LoadedCheckpoint loaded = lstm::load_checkpoint(path);
  std::string message = "<no exception>";
  try {
    lstm::restore_training_buffers(loaded, optimizer, ws);
  } catch (const lstm::CheckpointError& e) {
    message = e.what();
  } catch (const std::exception& e) {
    message = std::string("<not a CheckpointError: ") + e.what() + ">";
  }
  EXPECT_TRUE(contains(message, path.string())) << message;
  EXPECT_TRUE(contains(message, "adam_updates")) << message;
}

class CheckpointCells : public ::testing::TestWithParam<json> {};

TEST_P(CheckpointCells, RoundTripBitExact) {
  TempDir dir("checkpoint");
  TinyModel tiny(GetParam());
  const fs::path path = dir.path() / "model.safetensors";
  tiny.save(path);
  lstm::LoadedCheckpoint loaded = lstm::load_checkpoint(path);
  const lstm::Vector& saved = tiny.model->params().values();
  const lstm::Vector& restored = loaded.model->params().values();
  ASSERT_EQ(restored.size(), saved.size());
  EXPECT_EQ(std::memcmp(restored.data(), saved.data(), static_cast<std::size_t>(saved.size()) * sizeof(float)), 0);
  const double before = perplexity_of(*tiny.model, tiny.settings.model);
  const double after = perplexity_of(*loaded.model, loaded.settings.model);
  EXPECT_EQ(std::bit_cast<std::uint64_t>(after), std::bit_cast<std::uint64_t>(before));
}

INSTANTIATE_TEST_SUITE_P(
    Configs, CheckpointCells,
    ::testing::Values(json{{"cell", "rnn"}, {"embedding_size", 3}, {"hidden_size", 5}},
                      json{{"cell", "rnn_relu"}, {"embedding_size", 4}, {"hidden_size", 4}, {"num_layers", 2}},
                      json{{"cell", "gru"}, {"embedding_size", 6}, {"hidden_size", 3}},
                      json{{"cell", "lstm"}, {"embedding_size", 5}, {"hidden_size", 5}, {"tie_weights", true}},
                      json{{"cell", "lstm"}, {"embedding_size", 4}, {"hidden_size", 3}, {"num_layers", 3}}),
    [](const ::testing::TestParamInfo<json>& info) { return "Config" + std::to_string(info.index); });

// Sets the write fault for one scope and turns it off again, even when an
// assertion returns early.
class WriteFault {
 public:
  explicit WriteFault(std::int64_t bytes) { lstm::set_write_fault_after_bytes(bytes); }
  ~WriteFault() { lstm::set_write_fault_after_bytes(-1); }
};

std::vector<std::string> folder_listing(const fs::path& folder) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(folder)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(CheckpointWrite, DiskFullKeepsOldFile) {
  TempDir dir("checkpoint");
  const fs::path folder = dir.path() / "checkpoints";
  fs::create_directories(folder);
  const fs::path path = folder / "last.safetensors";
  TinyModel tiny;
  tiny.save(path);
  const std::string old_bytes = read_bytes(path);
  const lstm::Vector old_values = tiny.model->params().values();

  // The next save would write different values.
  tiny.model->params().values().array() += 1.0f;
  const std::int64_t size = static_cast<std::int64_t>(old_bytes.size());
  for (const std::int64_t budget : {std::int64_t{0}, std::int64_t{1}, std::int64_t{8}, std::int64_t{100},
                                    size / 2, size - 8, size - 1}) {
    SCOPED_TRACE("write fails after " + std::to_string(budget) + " of " + std::to_string(size) + " bytes");
    std::string message = "<no exception>";
    {
      WriteFault fault(budget);
      try {
        tiny.save(path);
      } catch (const lstm::CheckpointError& e) {
        message = e.what();
      }
    }
    EXPECT_TRUE(contains(message, path.string())) << message;
    EXPECT_TRUE(contains(message, "No space left on device")) << message;
    EXPECT_EQ(read_bytes(path), old_bytes);
    EXPECT_EQ(folder_listing(folder), std::vector<std::string>{"last.safetensors"});

    const lstm::LoadedCheckpoint loaded = lstm::load_checkpoint(path);
    EXPECT_EQ(std::memcmp(loaded.model->params().values().data(), old_values.data(),
                          static_cast<std::size_t>(old_values.size()) * sizeof(float)),
              0);
  }
}

TEST(CheckpointWrite, ExactBudgetSucceeds) {
  TempDir dir("checkpoint");
  const fs::path path = dir.path() / "last.safetensors";
  TinyModel tiny;
  tiny.save(path);
  const auto size = static_cast<std::int64_t>(fs::file_size(path));
  tiny.model->params().values().array() += 1.0f;
  {
    WriteFault fault(size);
    EXPECT_NO_THROW(tiny.save(path));
  }
  const lstm::LoadedCheckpoint loaded = lstm::load_checkpoint(path);
  EXPECT_EQ(loaded.model->params().values(), tiny.model->params().values());
}

TEST(CheckpointWrite, MissingFolderRejected) {
  TempDir dir("checkpoint");
  const fs::path path = dir.path() / "no_such_folder" / "last.safetensors";
  TinyModel tiny;
  std::string message = "<no exception>";
  try {
    tiny.save(path);
  } catch (const lstm::CheckpointError& e) {
    message = e.what();
  }
  EXPECT_TRUE(contains(message, path.string())) << message;
  EXPECT_FALSE(fs::exists(dir.path() / "no_such_folder"));
}

TEST(CheckpointPath, RunDirectoryResolvesToCheckpoint) {
  TempDir dir("checkpoint");
  EXPECT_EQ(lstm::resolve_checkpoint_path(dir.path(), "best"), dir.path() / "checkpoints" / "best.safetensors");
  const fs::path file = dir.path() / "x.safetensors";
  EXPECT_EQ(lstm::resolve_checkpoint_path(file, "last"), file);
}

}  // namespace

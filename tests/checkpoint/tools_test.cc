// Offline tools: inspect one tensor's saved state, export safetensors (and
// parse the file back as a safetensors reader would).
#include "server/checkpoint/tools.h"

#include <cstring>
#include <fstream>
#include <map>
#include <variant>

#include "gtest/gtest.h"
#include "server/checkpoint/reader.h"
#include "tests/checkpoint/checkpoint_test_util.h"

namespace sherd {
namespace {

// Just enough JSON for a safetensors header: objects, arrays, strings
// (with escapes), integers. Fails the test on anything else.
struct Json {
  std::variant<std::monostate, int64_t, std::string, std::vector<Json>,
               std::map<std::string, Json>>
      v;
  const std::map<std::string, Json>& obj() const { return std::get<4>(v); }
  const std::vector<Json>& arr() const { return std::get<3>(v); }
  const std::string& str() const { return std::get<2>(v); }
  int64_t num() const { return std::get<1>(v); }
};

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}
  bool Parse(Json* out) {
    bool ok = Value(out);
    Ws();
    return ok && i_ == s_.size();
  }

 private:
  void Ws() { while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_; }
  bool Eat(char c) { Ws(); if (i_ < s_.size() && s_[i_] == c) { ++i_; return true; } return false; }
  bool String(std::string* out) {
    if (!Eat('"')) return false;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') { *out += c; continue; }
      if (i_ >= s_.size()) return false;
      char e = s_[i_++];
      if (e == 'u') {
        if (i_ + 4 > s_.size()) return false;
        *out += static_cast<char>(std::stoi(s_.substr(i_, 4), nullptr, 16));
        i_ += 4;
      } else if (e == '"' || e == '\\' || e == '/') {
        *out += e;
      } else {
        return false;
      }
    }
    return Eat('"');
  }
  bool Value(Json* out) {
    Ws();
    if (i_ >= s_.size()) return false;
    if (s_[i_] == '"') { std::string s; if (!String(&s)) return false; out->v = s; return true; }
    if (Eat('{')) {
      std::map<std::string, Json> m;
      if (Eat('}')) { out->v = m; return true; }
      do {
        std::string k; Json v;
        if (!String(&k) || !Eat(':') || !Value(&v)) return false;
        if (!m.emplace(k, v).second) return false;  // duplicate key
      } while (Eat(','));
      out->v = m;
      return Eat('}');
    }
    if (Eat('[')) {
      std::vector<Json> a;
      if (Eat(']')) { out->v = a; return true; }
      do { Json v; if (!Value(&v)) return false; a.push_back(v); } while (Eat(','));
      out->v = a;
      return Eat(']');
    }
    size_t end = i_;
    while (end < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[end])) || s_[end] == '-')) ++end;
    if (end == i_) return false;
    out->v = static_cast<int64_t>(std::stoll(s_.substr(i_, end - i_)));
    i_ = end;
    return true;
  }
  const std::string& s_;
  size_t i_ = 0;
};

TEST(CheckpointTools, InspectMatchesTheSavedTensor) {
  testing::TempRoot root;
  ModelSpec spec = testing::RandomModel(71, 6);
  Layout layout = *Layout::Build(spec.tensors, 3);
  testing::FullState s = testing::RandomState(layout, 71);
  std::string dir = testing::Save(root.path(), spec, 3, 12, s,
                                  testing::SmallChunks());
  for (const TensorPlacement& t : layout.tensors()) {
    const std::vector<float>* arrays[] = {&s.p, &s.m, &s.v};
    for (int a = 0; a < kNumStateArrays; ++a) {
      auto got = InspectTensor(dir, t.desc.name, static_cast<StateArray>(a));
      ASSERT_TRUE(got.ok()) << got.status();
      RangeStats want = ComputeStats(arrays[a]->data() + t.offset, t.numel);
      EXPECT_EQ(got->numel, t.numel);
      EXPECT_EQ(got->shape, t.desc.shape);
      EXPECT_EQ(got->step, 12);
      EXPECT_EQ(got->stats.count, want.count);
      EXPECT_EQ(got->stats.min, want.min);
      EXPECT_EQ(got->stats.max, want.max);
      EXPECT_DOUBLE_EQ(got->stats.sum, want.sum);
      EXPECT_DOUBLE_EQ(got->stats.sum_sq, want.sum_sq);
    }
  }
  EXPECT_TRUE(absl::IsNotFound(
      InspectTensor(dir, "nope", StateArray::kParam).status()));
  EXPECT_EQ(*ParseStateArray("exp_avg_sq"), StateArray::kExpAvgSq);
  EXPECT_FALSE(ParseStateArray("grad").ok());
}

TEST(CheckpointTools, ExportIsAValidSafetensorsFile) {
  testing::TempRoot root;
  ModelSpec spec = testing::RandomModel(72, 7);
  spec.tensors[3].name = "needs \"escaping\"\\ and\ttabs";
  Layout layout = *Layout::Build(spec.tensors, 2);
  testing::FullState s = testing::RandomState(layout, 72);
  std::string dir = testing::Save(root.path(), spec, 2, 33, s,
                                  testing::SmallChunks());
  const std::string out = root.Sub("model.safetensors");
  auto result = ExportSafetensors(dir, out);
  ASSERT_TRUE(result.ok()) << result.status();

  std::ifstream f(out, std::ios::binary);
  std::string file((std::istreambuf_iterator<char>(f)), {});
  EXPECT_EQ(static_cast<int64_t>(file.size()), result->bytes);
  ASSERT_GE(file.size(), 8u);
  uint64_t n;
  std::memcpy(&n, file.data(), 8);
  ASSERT_LE(8 + n, file.size());
  EXPECT_EQ((8 + n) % 8, 0u);
  Json header;
  ASSERT_TRUE(JsonParser(file.substr(8, n)).Parse(&header)) << file.substr(8, n);
  const auto& obj = header.obj();
  EXPECT_EQ(obj.at("__metadata__").obj().at("sherd_step").str(), "33");
  ASSERT_EQ(obj.size(), spec.tensors.size() + 1);
  const char* data = file.data() + 8 + n;
  int64_t expected_begin = 0;
  for (const TensorPlacement& t : layout.tensors()) {
    const Json& e = obj.at(t.desc.name);
    EXPECT_EQ(e.obj().at("dtype").str(), "F32");
    std::vector<int64_t> shape;
    for (const Json& d : e.obj().at("shape").arr()) shape.push_back(d.num());
    EXPECT_EQ(shape, t.desc.shape);
    const int64_t b = e.obj().at("data_offsets").arr()[0].num();
    const int64_t end = e.obj().at("data_offsets").arr()[1].num();
    EXPECT_EQ(b, expected_begin);  // contiguous, no holes
    ASSERT_EQ(end - b, t.numel * 4);
    EXPECT_EQ(std::memcmp(data + b, s.p.data() + t.offset, t.numel * 4), 0);
    expected_begin = end;
  }
  EXPECT_EQ(static_cast<size_t>(8 + n + expected_begin), file.size());
  EXPECT_FALSE(std::filesystem::exists(out + ".tmp"));
}

TEST(CheckpointTools, ExportOfACorruptCheckpointFailsAndLeavesNoFile) {
  testing::TempRoot root;
  ModelSpec spec = testing::RandomModel(73, 3);
  Layout layout = *Layout::Build(spec.tensors, 1);
  std::string dir = testing::Save(root.path(), spec, 1, 1,
                                  testing::RandomState(layout, 1));
  std::filesystem::resize_file(dir + "/" + ShardFileName(0, 1), 300);
  const std::string out = root.Sub("x.safetensors");
  EXPECT_TRUE(absl::IsDataLoss(ExportSafetensors(dir, out).status()));
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_FALSE(std::filesystem::exists(out + ".tmp"));
}

}  // namespace
}  // namespace sherd

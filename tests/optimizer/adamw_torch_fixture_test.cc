// AdamW against torch.optim.AdamW: replays the trajectory recorded in
// tests/fixtures/torch_adamw.txt (see gen_torch_adamw.py; torch is not
// needed to run this) on every supported path and compares the final
// param, exp_avg and exp_avg_sq with torch's within 1e-6, using the
// criterion of adamw_reference.h (error scales from the float64 reference).

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/optimizer/adamw.h"
#include "tests/optimizer/adamw_reference.h"

#ifndef SHERD_TORCH_ADAMW_FIXTURE
#error "SHERD_TORCH_ADAMW_FIXTURE must name tests/fixtures/torch_adamw.txt"
#endif

namespace sherd {
namespace {

struct TorchFixture {
  int steps = 0;
  std::vector<AdamWSegment> segments;
  std::vector<float> p0, p, exp_avg, exp_avg_sq;
  std::vector<std::vector<float>> grads;  // [step - 1][element]
};

std::vector<float> ReadFloats(std::istringstream& in) {
  std::vector<float> v;
  for (float x; in >> x;) v.push_back(x);
  return v;
}

bool Load(const std::string& path, TorchFixture* f) {
  std::ifstream file(path);
  if (!file) return false;
  int64_t offset = 0;
  for (std::string line; std::getline(file, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    std::string key;
    in >> key;
    if (key == "steps") {
      in >> f->steps;
    } else if (key == "group") {
      AdamWSegment s;
      int64_t n = 0;
      in >> s.hyper.lr >> s.hyper.beta1 >> s.hyper.beta2 >> s.hyper.eps >>
          s.hyper.weight_decay >> n;
      s.begin = offset;
      s.end = offset += n;
      f->segments.push_back(s);
    } else if (key == "p0") {
      f->p0 = ReadFloats(in);
    } else if (key == "grad") {
      int step = 0;
      in >> step;
      f->grads.push_back(ReadFloats(in));
    } else if (key == "p") {
      f->p = ReadFloats(in);
    } else if (key == "exp_avg") {
      f->exp_avg = ReadFloats(in);
    } else if (key == "exp_avg_sq") {
      f->exp_avg_sq = ReadFloats(in);
    }
  }
  const size_t n = static_cast<size_t>(offset);
  bool ok = f->steps > 0 && f->grads.size() == static_cast<size_t>(f->steps) &&
            f->p0.size() == n && f->p.size() == n && f->exp_avg.size() == n &&
            f->exp_avg_sq.size() == n;
  for (const auto& g : f->grads) ok = ok && g.size() == n;
  return ok;
}

TEST(AdamWTorchFixture, MatchesTorchAdamW) {
  TorchFixture f;
  ASSERT_TRUE(Load(SHERD_TORCH_ADAMW_FIXTURE, &f))
      << "cannot read " << SHERD_TORCH_ADAMW_FIXTURE;
  ASSERT_EQ(f.segments.size(), 2u);

  // Error scales only: the float64 trajectory of the same inputs.
  testing::AdamWReference ref(f.p0);
  for (int t = 1; t <= f.steps; ++t) {
    const std::vector<double> g(f.grads[t - 1].begin(), f.grads[t - 1].end());
    ref.Step(g, f.segments, t, 1.0f);
  }
  const std::vector<double> torch_p(f.p.begin(), f.p.end());
  const std::vector<double> torch_m(f.exp_avg.begin(), f.exp_avg.end());
  const std::vector<double> torch_v(f.exp_avg_sq.begin(), f.exp_avg_sq.end());

  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!IsaSupported(isa)) continue;
    for (int threads : {1, 2}) {
      SCOPED_TRACE(std::string(IsaName(isa)) + " threads " +
                   std::to_string(threads));
      std::vector<float> p = f.p0, m(p.size(), 0.0f), v(p.size(), 0.0f);
      AdamW opt(threads, isa);
      for (int t = 1; t <= f.steps; ++t) {
        AdamWBuffers buf{f.grads[t - 1].data(), p.data(), m.data(), v.data()};
        opt.Apply(buf, f.segments, t, 1.0f);
      }
      const auto cp = testing::Close(p, torch_p, ref.p_mag, f.segments, 1e-6);
      EXPECT_TRUE(cp.ok) << cp.Describe("param");
      const auto cm = testing::Close(m, torch_m, ref.m_mag, f.segments, 1e-6);
      EXPECT_TRUE(cm.ok) << cm.Describe("exp_avg");
      const auto cv = testing::Close(v, torch_v, {}, f.segments, 1e-6);
      EXPECT_TRUE(cv.ok) << cv.Describe("exp_avg_sq");
    }
  }
}

}  // namespace
}  // namespace sherd

#include "bench/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "engine/base/json.hpp"

namespace aloft::bench {

namespace {

// The runs of one figure.
struct series {
  std::string scenario, name, unit;
  std::vector<double> values, baselines, ratios;
  std::vector<target> targets;
};

std::vector<series> group(const std::vector<figure>& figures) {
  std::vector<series> out;
  for (auto& f : figures) {
    auto i = std::find_if(out.begin(), out.end(), [&](const series& s) {
      return s.scenario == f.scenario && s.name == f.name;
    });
    if (i == out.end()) {
      out.push_back({f.scenario, f.name, f.unit, {}, {}, {}, f.targets});
      i = out.end() - 1;
    }
    i->values.push_back(f.value);
    if (f.baseline > 0) {
      i->baselines.push_back(f.baseline);
      i->ratios.push_back(f.value / f.baseline);
    }
  }
  return out;
}

// Numbers as people read them: thousands separated, few digits.
std::string readable(double v) {
  char buf[64];
  auto a = std::fabs(v);
  if (a >= 1000) {
    std::snprintf(buf, sizeof(buf), "%.0f", a);
    std::string digits = buf, out;
    for (size_t i = 0; i < digits.size(); ++i) {
      if (i > 0 && (digits.size() - i) % 3 == 0)
        out += ',';
      out += digits[i];
    }
    return (v < 0 ? "-" : "") + out;
  }
  if (a >= 100 || v == 0 || v == std::floor(v))
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  else if (a >= 10)
    std::snprintf(buf, sizeof(buf), "%.1f", v);
  else if (a >= 1)
    std::snprintf(buf, sizeof(buf), "%.2f", v);
  else
    std::snprintf(buf, sizeof(buf), "%.3g", v);
  return buf;
}

std::string describe(const target& t) {
  std::string op = t.bound == target::kind::at_least  ? ">= "
                   : t.bound == target::kind::at_most ? "<= "
                                                      : "< ";
  return op + readable(t.value) + (t.of_ratio ? "x" : "");
}

bool meets(const target& t, double v) {
  switch (t.bound) {
    case target::kind::at_least: return v >= t.value;
    case target::kind::at_most: return v <= t.value;
    case target::kind::below: return v < t.value;
  }
  return false;
}

} // namespace

double quantile(std::vector<double> samples, double q) {
  if (samples.empty())
    return 0;
  std::sort(samples.begin(), samples.end());
  auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(samples.size())));
  return samples[std::min(samples.size() - 1, rank == 0 ? 0 : rank - 1)];
}

summary summarize(std::vector<double> samples) {
  summary s;
  if (samples.empty())
    return s;
  std::sort(samples.begin(), samples.end());
  auto n = samples.size();
  s.runs = n;
  s.median = n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
  s.min = samples.front();
  s.max = samples.back();
  s.p10 = quantile(samples, 0.1);
  s.p90 = quantile(samples, 0.9);
  return s;
}

void report::check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "aloft-bench: not sane: %s\n", what.c_str());
    sane = false;
  }
}

void print(const report& r, const std::string& json_path) {
  auto all = group(r.figures);
  int width = 6;
  for (auto& s : all)
    width = std::max(width, static_cast<int>(s.name.size()));
  std::printf("%-16s %-*s %10s %21s %10s %8s %-6s %-11s %s\n", "scenario", width, "figure",
              "median", "spread (min..max)", "baseline", "ratio", "unit", "target", "met");
  auto arr = json::array();
  size_t met_n = 0, missed_n = 0;
  for (auto& s : all) {
    auto v = summarize(s.values);
    auto b = summarize(s.baselines);
    auto q = summarize(s.ratios);
    std::string spread = v.runs > 1 ? readable(v.min) + ".." + readable(v.max) : "(1 run)";
    std::string base = b.runs ? readable(b.median) : "-";
    std::string ratio = q.runs ? readable(q.median) + "x" : "-";
    std::string goal, verdict;
    bool all_met = true;
    auto jt = json::array();
    for (auto& t : s.targets) {
      bool ok = meets(t, t.of_ratio ? q.median : v.median) && (!t.of_ratio || q.runs > 0);
      all_met = all_met && ok;
      goal += (goal.empty() ? "" : ", ") + describe(t);
      auto j = json::object();
      j.set("target", describe(t));
      j.set("bound", t.bound == target::kind::at_least  ? "at_least"
                     : t.bound == target::kind::at_most ? "at_most"
                                                        : "below");
      j.set("value", t.value).set("of_ratio", t.of_ratio);
      if (!r.quick)
        j.set("met", ok);
      jt.push_back(std::move(j));
    }
    if (!s.targets.empty()) {
      verdict = r.quick ? "n/a" : all_met ? "yes" : "NO";
      if (!r.quick)
        ++(all_met ? met_n : missed_n);
    }
    std::printf("%-16s %-*s %10s %21s %10s %8s %-6s %-11s %s\n", s.scenario.c_str(), width,
                s.name.c_str(), readable(v.median).c_str(), spread.c_str(), base.c_str(),
                ratio.c_str(), s.unit.c_str(), goal.empty() ? "-" : goal.c_str(),
                verdict.c_str());
    auto j = json::object();
    j.set("scenario", s.scenario).set("figure", s.name).set("unit", s.unit);
    j.set("runs", v.runs).set("median", v.median).set("min", v.min).set("max", v.max);
    j.set("p10", v.p10).set("p90", v.p90);
    auto samples = json::array();
    for (auto x : s.values)
      samples.push_back(x);
    j.set("samples", std::move(samples));
    if (b.runs) {
      auto jb = json::object();
      jb.set("median", b.median).set("min", b.min).set("max", b.max);
      auto bs = json::array();
      for (auto x : s.baselines)
        bs.push_back(x);
      jb.set("samples", std::move(bs));
      j.set("baseline", std::move(jb));
      j.set("ratio", q.median).set("ratio_min", q.min).set("ratio_max", q.max);
    }
    if (!s.targets.empty())
      j.set("targets", std::move(jt));
    arr.push_back(std::move(j));
  }
  if (!r.quick && met_n + missed_n > 0)
    std::printf("targets met: %zu of %zu\n", met_n, met_n + missed_n);
  if (!json_path.empty()) {
    auto doc = json::object();
    doc.set("quick", r.quick).set("sane", r.sane).set("figures", std::move(arr));
    std::ofstream o{json_path};
    o << doc.pretty();
  }
}

} // namespace aloft::bench

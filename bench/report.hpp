// What a bench run measured, and the table and JSON it is printed as.
//
// A scenario adds one `figure` per run; figures of the same scenario and
// name are one series, reported as the median of its runs with their spread
// (min-max), its baseline (measured in the same runs) and the ratio to it
// (the median of each run's value over that run's own baseline).
// A figure may carry the targets issue 6 sets for it; the table says whether
// the median meets them, except in `--quick` runs, whose sizes are too small
// for the targets to mean anything.
//
// Not thread-safe: scenarios add figures from the thread that runs them.
#pragma once

#include <string>
#include <vector>

namespace aloft::bench {

/// A bound on a figure's median (or, with `of_ratio`, on its ratio to the
/// baseline).
struct target {
  enum class kind { at_least, at_most, below };
  kind bound = kind::at_least;
  double value = 0;
  bool of_ratio = false;
};

inline target at_least(double v) { return {target::kind::at_least, v, false}; }
inline target at_most(double v) { return {target::kind::at_most, v, false}; }
inline target below(double v) { return {target::kind::below, v, false}; }
inline target ratio_at_least(double v) { return {target::kind::at_least, v, true}; }
inline target ratio_at_most(double v) { return {target::kind::at_most, v, true}; }

/// One run's measurement.
struct figure {
  std::string scenario;
  std::string name;
  double value = 0;
  std::string unit;
  double baseline = 0; // the same run's baseline; 0: none
  std::vector<target> targets = {};
};

/// The median, spread and percentiles of samples. Empty samples give zeros.
struct summary {
  size_t runs = 0;
  double median = 0, min = 0, max = 0, p10 = 0, p90 = 0;
};

summary summarize(std::vector<double> samples);

/// The value below which `q` (0..1) of the samples lie (nearest rank).
double quantile(std::vector<double> samples, double q);

struct report {
  std::vector<figure> figures; // every run's, in the order added
  bool sane = true;
  bool quick = false; // targets are not judged

  void add(figure f) { figures.push_back(std::move(f)); }
  /// Marks the run as not sane (exit status 1) when `ok` is false.
  void check(bool ok, const std::string& what);
};

/// Prints the table to stdout and, unless `json_path` is empty, the series
/// with every sample as JSON.
void print(const report& r, const std::string& json_path);

} // namespace aloft::bench

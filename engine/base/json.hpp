// A small JSON value type: the one way Aloft reads and writes JSON.
//
// Parsing goes through simdjson (the only file that includes it is json.cpp);
// writing is a plain serializer. Objects keep their keys in insertion order,
// so what Aloft writes is stable and diffable. Numbers are kept as int64 when
// they are integral and fit, else as double.
//
// A json value is a plain value type: copy it freely; not synchronised.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <caf/expected.hpp>

namespace aloft {

class json {
public:
  enum class kind : uint8_t { null, boolean, integer, real, string, array, object };

  json() = default;
  json(std::nullptr_t) {}
  json(bool x) : kind_(kind::boolean), bool_(x) {}
  json(int x) : kind_(kind::integer), int_(x) {}
  json(unsigned x) : kind_(kind::integer), int_(x) {}
  json(long x) : kind_(kind::integer), int_(x) {}
  json(unsigned long x) : kind_(kind::integer), int_(static_cast<int64_t>(x)) {}
  json(long long x) : kind_(kind::integer), int_(x) {}
  json(unsigned long long x) : kind_(kind::integer), int_(static_cast<int64_t>(x)) {}
  json(double x) : kind_(kind::real), real_(x) {}
  json(const char* x) : kind_(kind::string), str_(x) {}
  json(std::string x) : kind_(kind::string), str_(std::move(x)) {}
  json(std::string_view x) : kind_(kind::string), str_(x) {}

  static json array();
  static json object();

  /// Parses `text`. Errors are `invalid_argument` naming the position.
  static caf::expected<json> parse(std::string_view text);

  /// Compact serialization (one line, no spaces).
  std::string dump() const;
  /// Indented serialization for files people read.
  std::string pretty() const;

  kind type() const { return kind_; }
  bool is_null() const { return kind_ == kind::null; }
  bool is_bool() const { return kind_ == kind::boolean; }
  bool is_number() const { return kind_ == kind::integer || kind_ == kind::real; }
  bool is_integer() const { return kind_ == kind::integer; }
  bool is_string() const { return kind_ == kind::string; }
  bool is_array() const { return kind_ == kind::array; }
  bool is_object() const { return kind_ == kind::object; }

  bool as_bool(bool fallback = false) const { return is_bool() ? bool_ : fallback; }
  int64_t as_int(int64_t fallback = 0) const;
  double as_double(double fallback = 0) const;
  const std::string& as_string() const; // empty for non-strings

  // -- arrays --------------------------------------------------------------
  size_t size() const;
  const json& at(size_t i) const;
  json& push_back(json x);
  const std::vector<json>& items() const { return items_; }

  // -- objects -------------------------------------------------------------
  /// Returns the member `key`, or nullptr.
  const json* find(std::string_view key) const;
  /// Sets member `key` (replacing an existing one); returns *this for chaining.
  json& set(std::string_view key, json value);
  /// Member names in order.
  const std::vector<std::string>& keys() const { return keys_; }

  /// Convenience readers with fallbacks for missing or mistyped members.
  std::string get_string(std::string_view key, std::string fallback = {}) const;
  int64_t get_int(std::string_view key, int64_t fallback = 0) const;
  bool get_bool(std::string_view key, bool fallback = false) const;

  friend bool operator==(const json& x, const json& y);
  friend bool operator!=(const json& x, const json& y) { return !(x == y); }

private:
  void dump_to(std::string& out, int indent, int depth) const;

  kind kind_ = kind::null;
  bool bool_ = false;
  int64_t int_ = 0;
  double real_ = 0;
  std::string str_;
  std::vector<std::string> keys_; // objects only
  std::vector<json> items_;       // array items, or object values
};

/// Appends `s` to `out` as a JSON string literal with escapes.
void append_json_string(std::string& out, std::string_view s);

} // namespace aloft

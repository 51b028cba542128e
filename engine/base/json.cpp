#include "engine/base/json.hpp"

#include <cmath>
#include <cstdio>

#include <simdjson.h>

#include "engine/base/error.hpp"

namespace aloft {

namespace {

const json null_value;
const std::string empty_string;

json convert(simdjson::dom::element e) {
  using simdjson::dom::element_type;
  switch (e.type()) {
    case element_type::ARRAY: {
      auto result = json::array();
      // Bind the array first: iterating a temporary's value would dangle.
      simdjson::dom::array items = e.get_array().value_unsafe();
      for (auto child : items)
        result.push_back(convert(child));
      return result;
    }
    case element_type::OBJECT: {
      auto result = json::object();
      simdjson::dom::object fields = e.get_object().value_unsafe();
      for (auto field : fields)
        result.set(field.key, convert(field.value));
      return result;
    }
    case element_type::INT64:
      return json{static_cast<long long>(e.get_int64().value_unsafe())};
    case element_type::UINT64: {
      auto v = e.get_uint64().value_unsafe();
      if (v <= static_cast<uint64_t>(INT64_MAX))
        return json{static_cast<long long>(v)};
      return json{static_cast<double>(v)};
    }
    case element_type::DOUBLE:
      return json{e.get_double().value_unsafe()};
    case element_type::STRING:
      return json{std::string_view{e.get_string().value_unsafe()}};
    case element_type::BOOL:
      return json{e.get_bool().value_unsafe()};
    case element_type::NULL_VALUE:
      return json{};
  }
  return json{};
}

} // namespace

json json::array() {
  json r;
  r.kind_ = kind::array;
  return r;
}

json json::object() {
  json r;
  r.kind_ = kind::object;
  return r;
}

caf::expected<json> json::parse(std::string_view text) {
  // A parser is not thread-safe and is expensive to create: one per thread.
  thread_local simdjson::dom::parser parser;
  simdjson::padded_string padded{text};
  simdjson::dom::element root;
  auto err = parser.parse(padded).get(root);
  if (err)
    return make_error(errc::invalid_argument,
                      std::string{"malformed JSON: "} + simdjson::error_message(err));
  return convert(root);
}

int64_t json::as_int(int64_t fallback) const {
  if (kind_ == kind::integer)
    return int_;
  if (kind_ == kind::real && std::isfinite(real_))
    return static_cast<int64_t>(real_);
  return fallback;
}

double json::as_double(double fallback) const {
  if (kind_ == kind::integer)
    return static_cast<double>(int_);
  if (kind_ == kind::real)
    return real_;
  return fallback;
}

const std::string& json::as_string() const {
  return kind_ == kind::string ? str_ : empty_string;
}

size_t json::size() const {
  return items_.size();
}

const json& json::at(size_t i) const {
  return i < items_.size() ? items_[i] : null_value;
}

json& json::push_back(json x) {
  kind_ = kind::array;
  items_.push_back(std::move(x));
  return items_.back();
}

const json* json::find(std::string_view key) const {
  if (kind_ != kind::object)
    return nullptr;
  for (size_t i = 0; i < keys_.size(); ++i)
    if (keys_[i] == key)
      return &items_[i];
  return nullptr;
}

json& json::set(std::string_view key, json value) {
  kind_ = kind::object;
  for (size_t i = 0; i < keys_.size(); ++i)
    if (keys_[i] == key) {
      items_[i] = std::move(value);
      return *this;
    }
  keys_.emplace_back(key);
  items_.push_back(std::move(value));
  return *this;
}

std::string json::get_string(std::string_view key, std::string fallback) const {
  auto v = find(key);
  return v && v->is_string() ? v->str_ : fallback;
}

int64_t json::get_int(std::string_view key, int64_t fallback) const {
  auto v = find(key);
  return v && v->is_number() ? v->as_int(fallback) : fallback;
}

bool json::get_bool(std::string_view key, bool fallback) const {
  auto v = find(key);
  return v && v->is_bool() ? v->bool_ : fallback;
}

bool operator==(const json& x, const json& y) {
  if (x.is_number() && y.is_number()) {
    if (x.kind_ == json::kind::integer && y.kind_ == json::kind::integer)
      return x.int_ == y.int_;
    return x.as_double() == y.as_double();
  }
  if (x.kind_ != y.kind_)
    return false;
  switch (x.kind_) {
    case json::kind::null: return true;
    case json::kind::boolean: return x.bool_ == y.bool_;
    case json::kind::string: return x.str_ == y.str_;
    default: return x.keys_ == y.keys_ && x.items_ == y.items_;
  }
}

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void json::dump_to(std::string& out, int indent, int depth) const {
  auto newline = [&](int d) {
    if (indent > 0) {
      out += '\n';
      out.append(static_cast<size_t>(indent * d), ' ');
    }
  };
  switch (kind_) {
    case kind::null: out += "null"; break;
    case kind::boolean: out += bool_ ? "true" : "false"; break;
    case kind::integer: out += std::to_string(int_); break;
    case kind::real: {
      if (!std::isfinite(real_)) {
        out += "null";
        break;
      }
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.17g", real_);
      out += buf;
      break;
    }
    case kind::string: append_json_string(out, str_); break;
    case kind::array:
      out += '[';
      for (size_t i = 0; i < items_.size(); ++i) {
        if (i > 0)
          out += ',';
        newline(depth + 1);
        items_[i].dump_to(out, indent, depth + 1);
      }
      if (!items_.empty())
        newline(depth);
      out += ']';
      break;
    case kind::object:
      out += '{';
      for (size_t i = 0; i < keys_.size(); ++i) {
        if (i > 0)
          out += ',';
        newline(depth + 1);
        append_json_string(out, keys_[i]);
        out += indent > 0 ? ": " : ":";
        items_[i].dump_to(out, indent, depth + 1);
      }
      if (!keys_.empty())
        newline(depth);
      out += '}';
      break;
  }
}

std::string json::dump() const {
  std::string out;
  dump_to(out, 0, 0);
  return out;
}

std::string json::pretty() const {
  std::string out;
  dump_to(out, 2, 0);
  out += '\n';
  return out;
}

} // namespace aloft

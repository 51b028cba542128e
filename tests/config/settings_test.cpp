#include "config/settings.hpp"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "engine/base/error.hpp"

namespace aloft {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

/// Joins lines with '\n', so a test states its line numbers plainly.
std::string lines(std::initializer_list<std::string_view> ls) {
  std::string out;
  for (auto l : ls) {
    out += l;
    out += '\n';
  }
  return out;
}

/// Wraps account objects (one per line) in a settings file: the first
/// account is on line 3, the second on line 4, and so on.
std::string with_accounts(std::initializer_list<std::string_view> accounts) {
  std::string out = "{\n  \"accounts\": [\n";
  size_t i = 0;
  for (auto a : accounts) {
    out += "    ";
    out += a;
    out += ++i < accounts.size() ? ",\n" : "\n";
  }
  out += "  ]\n}\n";
  return out;
}

std::string all_problems(const settings_load& l) {
  std::string out;
  for (auto& p : l.problems)
    out += p.describe() + "\n";
  return out;
}

/// The one problem of `l`; fails the test when there is not exactly one.
settings_problem only_problem(const settings_load& l) {
  EXPECT_EQ(l.problems.size(), 1u) << all_problems(l);
  return l.problems.empty() ? settings_problem{} : l.problems.front();
}

const settings_problem* problem_at(const settings_load& l, const std::string& path) {
  for (auto& p : l.problems)
    if (p.path == path)
      return &p;
  return nullptr;
}

/// A fresh directory under the build tree, removed with its files.
class temp_dir {
public:
  temp_dir() {
    std::string pattern = std::string{ALOFT_BINARY_DIR} + "/settings-test-XXXXXX";
    char* made = ::mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr) << std::strerror(errno);
    path_ = pattern;
  }
  ~temp_dir() { remove_tree(path_); }
  const std::string& path() const { return path_; }

private:
  static void remove_tree(const std::string& p) {
    if (auto* d = ::opendir(p.c_str())) {
      while (auto* e = ::readdir(d)) {
        std::string name = e->d_name;
        if (name != "." && name != "..")
          remove_tree(p + "/" + name);
      }
      ::closedir(d);
      ::rmdir(p.c_str());
    } else {
      ::unlink(p.c_str());
    }
  }
  std::string path_;
};

std::string read_text(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out{path, std::ios::binary | std::ios::trunc};
  out << text;
}

account fly_account(const std::string& name) {
  account a;
  a.name = name;
  a.provider = "fly";
  apply_option_defaults(a);
  return a;
}

settings sample_settings() {
  settings s;
  auto fly = fly_account("fly-main");
  fly.options["org"] = "acme";
  fly.options["ip_mode"] = "ipv6+ipv4";
  fly.guards.idle_timeout_s = 900;
  fly.guards.auto_destroy_on_idle = false;
  fly.max_concurrent_vms = 3;
  s.accounts.push_back(fly);
  account vercel;
  vercel.name = "vercel_team";
  vercel.provider = "vercel";
  vercel.enabled = false;
  vercel.options["team"] = "team_abc123";
  vercel.options["project"] = "prj_xyz";
  vercel.guards.hard_timeout_s = 3600;
  vercel.guards.hard_warning_s = 0;
  apply_option_defaults(vercel);
  s.accounts.push_back(vercel);
  account local = default_local_account();
  local.options["sandboxes_dir"] = "/var/tmp/aloft sandboxes";
  local.guards.idle_timeout_s = 60;
  s.accounts.push_back(local);
  s.default_account = "fly-main";
  s.credential_store = "file";
  s.profiles.push_back({"claude",
                        "claude --dangerously-skip-permissions",
                        {"ANTHROPIC_API_KEY", "GITHUB_TOKEN"},
                        ""});
  s.profiles.push_back({"codex", "codex exec", {}, "ghcr.io/acme/codex:1"});
  s.sync.max_upload_bytes = 50'000'000;
  s.sync.max_files = 20'000;
  return s;
}

// -- syntax --------------------------------------------------------------------

TEST(settings_parse, syntax_error_names_the_line_and_what_was_expected) {
  auto text = lines({
      "{",                          // 1
      "  \"accounts\": [",          // 2
      "    {\"name\": \"dev\",",    // 3
      "     \"provider\": \"fly\"", // 4
      "     \"enabled\": true}",    // 5: missing comma before this
      "  ]",                        // 6
      "}",                          // 7
  });
  auto l = parse_settings(text, "settings.json");
  auto p = only_problem(l);
  EXPECT_TRUE(l.value.accounts.empty());
  EXPECT_EQ(p.file, "settings.json");
  EXPECT_EQ(p.line, 5);
  EXPECT_EQ(p.path, "accounts[0]");
  EXPECT_EQ(p.describe(), "settings.json:5: accounts[0]: syntax error: expected ',' or "
                          "'}' after the value of \"provider\", found '\"'");
}

TEST(settings_parse, trailing_comma_is_a_syntax_error_with_a_hint) {
  auto text = lines({
      "{",
      "  \"accounts\": [",
      "    {\"name\": \"dev\", \"provider\": \"local\"},",
      "  ]",
      "}",
  });
  auto p = only_problem(parse_settings(text, "s.json"));
  EXPECT_EQ(p.line, 4);
  EXPECT_THAT(p.message, AllOf(HasSubstr("syntax error"),
                               HasSubstr("JSON allows no comma before ']'")));
}

TEST(settings_parse, unclosed_string_points_at_where_it_begins) {
  auto text = lines({
      "{",
      "  \"default_account\": \"dev,",
      "  \"version\": 1",
      "}",
  });
  auto p = only_problem(parse_settings(text, "s.json"));
  EXPECT_EQ(p.line, 2);
  EXPECT_THAT(p.message, HasSubstr("syntax error"));
}

TEST(settings_parse, string_never_closed_reports_its_first_line) {
  auto p = only_problem(parse_settings("{\n\n  \"version\": \"1", "s.json"));
  EXPECT_EQ(p.describe(),
            "s.json:3: version: syntax error: a string begins here and is never closed");
}

TEST(settings_parse, unquoted_key_and_bad_literal_are_named) {
  auto p = only_problem(parse_settings("{\n  version: 1\n}\n", "s.json"));
  EXPECT_EQ(p.line, 2);
  EXPECT_THAT(p.message,
              HasSubstr("expected a key in double quotes or '}', found 'version'"));

  p = only_problem(parse_settings("{\n\"accounts\": nul\n}", "s.json"));
  EXPECT_EQ(p.line, 2);
  EXPECT_EQ(p.path, "accounts");
  EXPECT_THAT(p.message, HasSubstr("found 'nul'"));
}

TEST(settings_parse, number_too_large_for_simdjson_is_a_syntax_error_with_a_line) {
  auto text = lines({
      "{\"accounts\": [{\"name\": \"dev\", \"provider\": \"local\",",
      "  \"guards\": {\"hard_timeout_s\": 123456789012345678901234}}]}",
  });
  auto p = only_problem(parse_settings(text, "s.json"));
  EXPECT_EQ(p.describe(), "s.json:2: accounts[0].guards.hard_timeout_s: syntax error: "
                          "the number 123456789012345678901234 is too large");
}

TEST(settings_parse, empty_file_is_a_syntax_error_on_line_one) {
  auto p = only_problem(parse_settings("", "s.json"));
  EXPECT_EQ(p.describe(),
            "s.json:1: syntax error: expected a value, found the end of the file");
}

TEST(settings_parse, text_after_the_top_level_object_is_a_syntax_error) {
  auto p = only_problem(parse_settings("{}\n{}\n", "s.json"));
  EXPECT_EQ(p.line, 2);
  EXPECT_THAT(p.message, HasSubstr("expected the end of the file"));
}

TEST(settings_parse, top_level_must_be_an_object) {
  auto p = only_problem(parse_settings("\n[1, 2]", "s.json"));
  EXPECT_EQ(p.describe(),
            "s.json:2: expected an object at the top level, found an array");
}

TEST(settings_parse, empty_object_is_empty_settings) {
  auto l = parse_settings("{}", "s.json");
  EXPECT_TRUE(l.problems.empty()) << all_problems(l);
  EXPECT_EQ(l.value, settings{});
}

// -- types, paths and lines -------------------------------------------------------

TEST(settings_parse, wrong_type_names_path_line_expected_and_found) {
  auto text = lines({
      "{",
      "  \"accounts\": [",
      "    {\"name\": \"a\", \"provider\": \"local\"},",
      "    {",
      "      \"name\": \"b\",",
      "      \"provider\": \"fly\",",
      "      \"guards\": {",
      "        \"idle_timeout_s\": \"ten\"",
      "      }",
      "    }",
      "  ]",
      "}",
  });
  auto l = parse_settings(text, "/home/me/.config/aloft/settings.json");
  auto p = only_problem(l);
  EXPECT_EQ(p.describe(), "/home/me/.config/aloft/settings.json:8: "
                          "accounts[1].guards.idle_timeout_s: "
                          "expected an integer >= 1, found the string \"ten\"");
  ASSERT_EQ(l.value.accounts.size(), 1u);
  EXPECT_EQ(l.value.accounts[0].name, "a");
}

TEST(settings_parse, each_kind_of_wrong_value_is_described) {
  auto l = parse_settings(
      with_accounts({
          R"({"name": "a", "provider": "fly", "enabled": "yes"})",
          R"({"name": "b", "provider": "fly", "guards": {"hard_timeout_s": 1.5}})",
          R"({"name": "c", "provider": "fly", "guards": {"auto_destroy_on_idle": 1}})",
          R"({"name": "d", "provider": "fly", "max_concurrent_vms": null})",
          R"({"name": "e", "provider": "fly", "guards": {"idle_timeout_s": 900.0}})",
          R"({"name": "f", "provider": "fly", "options": []})",
          R"({"name": 7, "provider": "fly"})",
      }),
      "s.json");
  EXPECT_EQ(l.problems.size(), 7u) << all_problems(l);
  EXPECT_TRUE(l.value.accounts.empty());
  auto expect = [&](const std::string& path, int line, const std::string& message) {
    auto p = problem_at(l, path);
    ASSERT_NE(p, nullptr) << path << "\n" << all_problems(l);
    EXPECT_EQ(p->line, line) << path;
    EXPECT_EQ(p->message, message) << path;
  };
  expect("accounts[0].enabled", 3, "expected true or false, found the string \"yes\"");
  expect("accounts[1].guards.hard_timeout_s", 4,
         "expected an integer >= 1, found the number 1.5");
  expect("accounts[2].guards.auto_destroy_on_idle", 5,
         "expected true or false, found the integer 1");
  expect("accounts[3].max_concurrent_vms", 6, "expected an integer >= 1, found null");
  expect("accounts[4].guards.idle_timeout_s", 7,
         "expected an integer >= 1, found the number 900.0");
  expect("accounts[5].options", 8,
         "expected an object of provider options, found an array");
  expect("accounts[6].name", 9, "expected a string, found the integer 7");
}

TEST(settings_parse, problems_come_in_file_order) {
  auto text = lines({
      "{\"accounts\": [{",
      "  \"name\": \"dev\", \"provider\": \"fly\",",
      "  \"options\": {\"ip_mode\": \"ipv4\"},",
      "  \"guards\": {\"idle_timeout_s\": 0}",
      "}],",
      "\"extra\": 1}",
  });
  auto l = parse_settings(text, "s.json");
  ASSERT_EQ(l.problems.size(), 3u) << all_problems(l);
  EXPECT_EQ(l.problems[0].line, 3);
  EXPECT_EQ(l.problems[1].line, 4);
  EXPECT_EQ(l.problems[2].line, 6);
}

TEST(settings_parse, accounts_and_profiles_must_be_arrays_of_objects) {
  auto l = parse_settings(lines({
                              "{",
                              "  \"accounts\": {\"name\": \"dev\"},",
                              "  \"profiles\": [\"claude\"]",
                              "}",
                          }),
                          "s.json");
  ASSERT_EQ(l.problems.size(), 2u) << all_problems(l);
  EXPECT_EQ(l.problems[0].describe(),
            "s.json:2: accounts: expected an array of accounts, found an object");
  EXPECT_EQ(
      l.problems[1].describe(),
      "s.json:3: profiles[0]: expected a profile object, found the string \"claude\"");
}

TEST(settings_parse, option_given_as_a_number_says_how_to_write_it) {
  auto p = only_problem(parse_settings(
      with_accounts({R"({"name": "v", "provider": "vercel", "options": {"vcpus": 4}})"}),
      "s.json"));
  EXPECT_EQ(p.path, "accounts[0].options.vcpus");
  EXPECT_EQ(p.line, 3);
  EXPECT_EQ(p.message, "expected a string (write \"4\"), found the integer 4");
}

TEST(settings_parse, missing_name_and_provider_point_at_the_account) {
  auto l = parse_settings(with_accounts({"{}"}), "s.json");
  ASSERT_EQ(l.problems.size(), 2u) << all_problems(l);
  EXPECT_EQ(l.problems[0].describe(),
            "s.json:3: accounts[0]: missing \"name\": every account needs one");
  EXPECT_EQ(l.problems[1].describe(),
            "s.json:3: accounts[0]: missing \"provider\": expected one of \"local\", "
            "\"fly\", \"modal\" or \"vercel\"");
}

// -- unknown keys -----------------------------------------------------------------

TEST(settings_parse, unknown_top_level_key_lists_the_known_ones) {
  auto l = parse_settings(lines({"{", "  \"version\": 1,", "  \"acounts\": []", "}"}),
                          "s.json");
  auto p = only_problem(l);
  EXPECT_EQ(p.describe(),
            "s.json:3: acounts: unknown key \"acounts\"; known keys: "
            "accounts, credential_store, default_account, profiles, sync, version");
}

TEST(settings_parse, unknown_account_key_lists_the_known_ones_and_drops_the_account) {
  auto l = parse_settings(
      with_accounts({R"({"name": "dev", "provider": "local", "enable": false})"}),
      "s.json");
  auto p = only_problem(l);
  EXPECT_EQ(p.describe(), "s.json:3: accounts[0].enable: unknown key \"enable\" in an "
                          "account; known keys: enabled, guards, max_concurrent_vms, "
                          "name, options, provider");
  EXPECT_TRUE(l.value.accounts.empty());
}

TEST(settings_parse, unknown_guard_lists_the_known_ones) {
  auto text = lines({
      "{\"accounts\": [{",
      "  \"name\": \"dev\", \"provider\": \"local\",",
      "  \"guards\": {",
      "    \"idle_timeout\": 60",
      "  }",
      "}]}",
  });
  auto p = only_problem(parse_settings(text, "s.json"));
  EXPECT_EQ(p.describe(), "s.json:4: accounts[0].guards.idle_timeout: unknown key "
                          "\"idle_timeout\" in guards; known keys: auto_destroy_on_idle, "
                          "hard_timeout_s, hard_warning_s, idle_timeout_s, "
                          "max_concurrent_vms");
}

TEST(settings_account, fly_machine_size_and_image_are_checked) {
  auto a = fly_account("f");
  EXPECT_FALSE(set_account_field(a, "cpus", "4"));
  EXPECT_FALSE(set_account_field(a, "memory_mb", "4096"));
  EXPECT_FALSE(set_account_field(a, "image", "ghcr.io/acme/agent:1"));
  EXPECT_EQ(a.options.at("memory_mb"), "4096");
  EXPECT_THAT(message_of(set_account_field(a, "cpus", "3")), HasSubstr("expected one of"));
  EXPECT_THAT(message_of(set_account_field(a, "memory_mb", "1000")),
              HasSubstr("a multiple of 256"));
  EXPECT_THAT(message_of(set_account_field(a, "image", "two words")),
              HasSubstr("without spaces"));
  EXPECT_EQ(a.options.at("cpus"), "4");
}

TEST(settings_parse, unknown_option_names_the_provider_and_its_options) {
  auto p = only_problem(parse_settings(
      with_accounts(
          {R"({"name": "dev", "provider": "fly", "options": {"region": "ams"}})"}),
      "s.json"));
  EXPECT_EQ(p.describe(), "s.json:3: accounts[0].options.region: unknown option "
                          "\"region\" for provider \"fly\"; known options: api_url, "
                          "app_prefix, cpus, image, ip_mode, memory_mb, org");
  p = only_problem(parse_settings(
      with_accounts({R"({"name": "dev", "provider": "modal", "options": {"org": "x"}})"}),
      "s.json"));
  EXPECT_THAT(p.message, HasSubstr("known options: api_url, app_name, environment"));
  p = only_problem(parse_settings(
      with_accounts({R"({"name": "dev", "provider": "local", "options": {"org": "x"}})"}),
      "s.json"));
  EXPECT_THAT(p.message, HasSubstr("known options: sandboxes_dir"));
}

TEST(settings_parse, odd_unknown_key_is_quoted_in_the_path) {
  auto p = only_problem(parse_settings("{\"my key\": 1}", "s.json"));
  EXPECT_EQ(p.path, "[\"my key\"]");
  EXPECT_EQ(p.line, 1);
}

TEST(settings_parse, repeated_key_is_reported_at_the_repeat) {
  auto text = lines({
      "{\"accounts\": [{",
      "  \"name\": \"dev\",",
      "  \"provider\": \"local\",",
      "  \"name\": \"prod\"",
      "}]}",
  });
  auto l = parse_settings(text, "s.json");
  auto p = only_problem(l);
  EXPECT_EQ(p.describe(), "s.json:4: accounts[0].name: the key \"name\" is given more "
                          "than once; JSON keeps only the last, so remove the others");
  EXPECT_TRUE(l.value.accounts.empty());
}

// -- values ---------------------------------------------------------------------

TEST(settings_parse, unknown_provider_lists_the_providers) {
  auto p = only_problem(
      parse_settings(with_accounts({R"({"name": "dev", "provider": "aws"})"}), "s.json"));
  EXPECT_EQ(p.describe(), "s.json:3: accounts[0].provider: expected one of \"local\", "
                          "\"fly\", \"modal\" or \"vercel\", found \"aws\"");
}

TEST(settings_parse, bad_account_names_are_refused) {
  for (auto bad : {"Dev", "-dev", "", "dev env",
                   "a234567890123456789012345678901234567890x", "dév"}) {
    std::string acct = std::string{R"({"provider": "local", "name": )"};
    append_json_string(acct, bad);
    acct += "}";
    auto l = parse_settings(with_accounts({acct}), "s.json");
    auto p = only_problem(l);
    EXPECT_EQ(p.path, "accounts[0].name") << bad;
    EXPECT_THAT(p.message,
                HasSubstr("expected a name of 1 to 40 characters from a-z, 0-9, "
                          "'_' and '-', starting with a letter or digit"))
        << bad;
    EXPECT_TRUE(l.value.accounts.empty());
  }
  for (auto good :
       {"dev", "0", "fly_prod-2", "a23456789012345678901234567890123456789"}) {
    account a;
    a.name = good;
    a.provider = "local";
    EXPECT_FALSE(validate_account(a)) << good;
  }
}

TEST(settings_parse, duplicate_account_names_keep_the_first) {
  auto l = parse_settings(with_accounts({
                              R"({"name": "dev", "provider": "local"})",
                              R"({"name": "prod", "provider": "fly"})",
                              R"({"name": "dev", "provider": "fly"})",
                          }),
                          "s.json");
  auto p = only_problem(l);
  EXPECT_EQ(
      p.describe(),
      "s.json:5: accounts[2].name: duplicate account name \"dev\" (also accounts[0])");
  ASSERT_EQ(l.value.accounts.size(), 2u);
  EXPECT_EQ(l.value.accounts[0].provider, "local");
  EXPECT_EQ(l.value.accounts[1].name, "prod");
}

TEST(settings_parse, timeouts_out_of_range_are_refused) {
  auto l = parse_settings(
      with_accounts({
          R"({"name": "a", "provider": "local", "guards": {"idle_timeout_s": 0}})",
          R"({"name": "b", "provider": "local", "guards": {"hard_timeout_s": -5}})",
          R"({"name": "c", "provider": "local", "guards": {"hard_warning_s": -1}})",
          R"({"name": "d", "provider": "local", "max_concurrent_vms": 0})",
          R"({"name": "e", "provider": "local", "guards": {"hard_timeout_s": 99999999999}})",
          R"({"name": "f", "provider": "local", "guards": {"hard_warning_s": 0}})",
      }),
      "s.json");
  EXPECT_EQ(l.problems.size(), 5u) << all_problems(l);
  EXPECT_EQ(problem_at(l, "accounts[0].guards.idle_timeout_s")->message,
            "expected an integer >= 1, found the integer 0");
  EXPECT_EQ(problem_at(l, "accounts[1].guards.hard_timeout_s")->message,
            "expected an integer >= 1, found the integer -5");
  EXPECT_EQ(problem_at(l, "accounts[2].guards.hard_warning_s")->message,
            "expected an integer >= 0, found the integer -1");
  EXPECT_EQ(problem_at(l, "accounts[3].max_concurrent_vms")->message,
            "expected an integer >= 1, found the integer 0");
  EXPECT_EQ(problem_at(l, "accounts[4].guards.hard_timeout_s")->message,
            "expected an integer <= 315360000, found the integer 99999999999");
  ASSERT_EQ(l.value.accounts.size(), 1u);
  EXPECT_EQ(l.value.accounts[0].guards.hard_warning_s, 0);
}

TEST(settings_parse, bad_provider_option_values_say_what_was_expected) {
  auto l = parse_settings(
      with_accounts({
          R"({"name": "a", "provider": "fly", "options": {"ip_mode": "ipv4"}})",
          R"({"name": "b", "provider": "vercel", "options": {"runtime": "node18"}})",
          R"({"name": "c", "provider": "vercel", "options": {"vcpus": "3"}})",
          R"({"name": "d", "provider": "modal", "options": {"api_url": "ftp://api.modal.com"}})",
          R"({"name": "e", "provider": "fly", "options": {"api_url": "https://"}})",
          R"({"name": "f", "provider": "fly", "options": {"app_prefix": "Aloft"}})",
          R"({"name": "g", "provider": "local", "options": {"sandboxes_dir": "tmp/x"}})",
      }),
      "s.json");
  EXPECT_EQ(l.problems.size(), 7u) << all_problems(l);
  EXPECT_TRUE(l.value.accounts.empty());
  EXPECT_EQ(problem_at(l, "accounts[0].options.ip_mode")->describe(),
            "s.json:3: accounts[0].options.ip_mode: expected one of \"ipv6\" or "
            "\"ipv6+ipv4\", found \"ipv4\"");
  EXPECT_EQ(problem_at(l, "accounts[1].options.runtime")->message,
            "expected one of \"node24\", \"node22\" or \"python3.13\", found \"node18\"");
  EXPECT_EQ(problem_at(l, "accounts[2].options.vcpus")->message,
            "expected one of \"1\", \"2\", \"4\" or \"8\", found \"3\"");
  EXPECT_EQ(problem_at(l, "accounts[3].options.api_url")->message,
            "expected an http:// or https:// URL, found \"ftp://api.modal.com\"");
  EXPECT_EQ(problem_at(l, "accounts[4].options.api_url")->message,
            "expected an http:// or https:// URL, found \"https://\"");
  EXPECT_THAT(problem_at(l, "accounts[5].options.app_prefix")->message,
              HasSubstr("expected 1 to 30 characters from a-z, 0-9 and '-'"));
  EXPECT_EQ(problem_at(l, "accounts[6].options.sandboxes_dir")->message,
            "expected an absolute path, found \"tmp/x\"");
}

TEST(settings_parse, local_name_belongs_to_the_local_provider) {
  auto p = only_problem(parse_settings(
      with_accounts({R"({"name": "local", "provider": "fly"})"}), "s.json"));
  EXPECT_EQ(p.path, "accounts[0].provider");
  EXPECT_THAT(p.message, HasSubstr("built-in local account"));
}

TEST(settings_parse, max_concurrent_vms_is_accepted_in_guards_too) {
  auto l = parse_settings(
      with_accounts({
          R"({"name": "a", "provider": "local", "guards": {"max_concurrent_vms": 4}})",
          R"({"name": "b", "provider": "local", "max_concurrent_vms": 2,
          "guards": {"max_concurrent_vms": 3}})",
      }),
      "s.json");
  auto p = only_problem(l);
  EXPECT_EQ(p.path, "accounts[1].guards.max_concurrent_vms");
  EXPECT_THAT(p.message, HasSubstr("given both here and in the account"));
  ASSERT_EQ(l.value.accounts.size(), 1u);
  EXPECT_EQ(l.value.accounts[0].max_concurrent_vms, 4);
}

TEST(settings_parse, top_level_values_are_checked) {
  auto l = parse_settings(lines({
                              "{",
                              "  \"version\": 2,",
                              "  \"credential_store\": \"vault\"",
                              "}",
                          }),
                          "s.json");
  ASSERT_EQ(l.problems.size(), 2u) << all_problems(l);
  EXPECT_EQ(l.problems[0].describe(), "s.json:2: version: expected 1 (the only version "
                                      "this Aloft reads), found the integer 2");
  EXPECT_EQ(l.problems[1].describe(),
            "s.json:3: credential_store: expected one of \"file\", \"env\", "
            "\"secret-service\" or \"keychain\", found \"vault\"");
  EXPECT_TRUE(l.value.credential_store.empty());
}

// -- secrets --------------------------------------------------------------------

TEST(settings_parse, key_named_like_a_secret_is_refused_wherever_it_is) {
  auto text = lines({
      "{",
      "  \"GitHub_Token\": \"x\",",
      "  \"accounts\": [",
      "    {\"name\": \"dev\", \"provider\": \"fly\",",
      "     \"options\": {\"api_key\": \"abc\"}},",
      "    {\"name\": \"m\", \"provider\": \"modal\", \"password\": \"hunter2\"},",
      "    {\"name\": \"z\", \"provider\": \"nope\", \"options\": {\"Private_Key\": 1}},",
      "    {\"name\": \"ok\", \"provider\": \"local\"}",
      "  ]",
      "}",
  });
  auto l = parse_settings(text, "s.json");
  EXPECT_EQ(l.problems.size(), 5u) << all_problems(l);
  auto top = problem_at(l, "GitHub_Token");
  ASSERT_NE(top, nullptr) << all_problems(l);
  EXPECT_EQ(top->describe(),
            "s.json:2: GitHub_Token: the key \"GitHub_Token\" is named like a secret; "
            "secrets do not belong in settings.json: store them in the credential store "
            "with `aloft account add`, which reads them from a prompt or stdin");
  auto opt = problem_at(l, "accounts[0].options.api_key");
  ASSERT_NE(opt, nullptr) << all_problems(l);
  EXPECT_EQ(opt->line, 5);
  EXPECT_THAT(opt->message,
              AllOf(HasSubstr("named like a secret"), HasSubstr("`aloft account add`")));
  auto pw = problem_at(l, "accounts[1].password");
  ASSERT_NE(pw, nullptr) << all_problems(l);
  EXPECT_EQ(pw->line, 6);
  EXPECT_NE(problem_at(l, "accounts[2].options.Private_Key"), nullptr) << all_problems(l);
  EXPECT_NE(problem_at(l, "accounts[2].provider"), nullptr) << all_problems(l);
  ASSERT_EQ(l.value.accounts.size(), 1u);
  EXPECT_EQ(l.value.accounts[0].name, "ok");
}

TEST(settings_parse, token_value_is_refused_pointing_at_account_add_and_not_echoed) {
  const std::string fly_token = "fo1_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcde";
  auto text = with_accounts({
      R"({"name": "dev", "provider": "fly", "options": {"org": ")" + fly_token + R"("}})",
  });
  auto p = only_problem(parse_settings(text, "s.json"));
  EXPECT_EQ(p.describe(),
            "s.json:3: accounts[0].options.org: looks like a Fly token (it begins with "
            "\"fo1_\"); secrets do not belong in settings.json: store them in the "
            "credential store with `aloft account add`, which reads them from a prompt "
            "or stdin");
  EXPECT_THAT(p.describe(), Not(HasSubstr("AbCdEf")));
}

TEST(settings_parse, every_known_token_prefix_is_refused) {
  for (std::string token :
       {"fo1_abc", "fm1r_abc", "fm1a_abc", "fm2_abc", "FlyV1 fm2_abc",
        "vercel_AbCdEfGhIjKlMnOpQrSt", "ak-AbCdEfGhIjKlMnOpQrSt",
        "as-AbCdEfGhIjKlMnOpQrSt", "sk-ant-api03-abc", "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx",
        "ghp_abc", "gho_abc", "github_pat_abc", "AKIAIOSFODNN7EXAMPLE"}) {
    EXPECT_TRUE(looks_like_secret(token)) << token;
    std::string text = R"({"default_account": )";
    append_json_string(text, token);
    text += "}";
    auto p = only_problem(parse_settings(text, "s.json"));
    EXPECT_EQ(p.path, "default_account") << token;
    EXPECT_THAT(p.message, AllOf(HasSubstr("looks like"), HasSubstr("aloft account add")))
        << token;
    EXPECT_THAT(p.message, Not(HasSubstr(token))) << token;
  }
}

TEST(settings_parse, names_that_merely_share_a_short_prefix_are_not_secrets) {
  for (auto value : {"as-east", "ak-prod", "sk-labs", "AKIA", "task", "skeleton",
                     "vercel_team", "vercel_production_east", "as-production-east-1"})
    EXPECT_FALSE(looks_like_secret(value)) << value;
  auto l =
      parse_settings(with_accounts({R"({"name": "as-east", "provider": "local"})",
                                    R"({"name": "vercel_team", "provider": "vercel"})"}),
                     "s.json");
  EXPECT_TRUE(l.problems.empty()) << all_problems(l);
}

TEST(settings_parse, token_pasted_as_a_key_is_refused_and_not_echoed) {
  auto text = lines({
      "{\"accounts\": [{\"name\": \"dev\", \"provider\": \"fly\",",
      "  \"options\": {\"fo1_SeCrEtSeCrEt\": \"\"}",
      "}]}",
  });
  auto l = parse_settings(text, "s.json");
  auto p = only_problem(l);
  EXPECT_EQ(p.path, "accounts[0].options[\"(a secret)\"]");
  EXPECT_EQ(p.line, 2);
  EXPECT_THAT(p.message, AllOf(HasSubstr("the key looks like a Fly token"),
                               HasSubstr("aloft account add")));
  EXPECT_THAT(all_problems(l), Not(HasSubstr("SeCrEt")));

  auto a = fly_account("dev");
  auto err = set_account_field(a, "fo1_SeCrEtSeCrEt", "x");
  EXPECT_THAT(message_of(err),
              AllOf(HasSubstr("looks like a Fly token"), Not(HasSubstr("SeCrEt"))));
}

TEST(settings_parse, token_inside_a_command_is_refused) {
  auto text = lines({
      "{\"profiles\": [",
      "  {\"name\": \"claude\",",
      "   \"command\": \"claude --api-key=sk-ant-api03-xyz\"}",
      "]}",
  });
  auto l = parse_settings(text, "s.json");
  auto p = only_problem(l);
  EXPECT_EQ(
      p.describe(),
      "s.json:3: profiles[0].command: contains what looks like an Anthropic API key "
      "(a word beginning with \"sk-ant-\"); secrets do not belong in settings.json: "
      "store them in the credential store with `aloft account add`, which reads "
      "them from a prompt or stdin");
  EXPECT_TRUE(l.value.profiles.empty());
}

TEST(settings_parse, secret_inside_an_unknown_key_is_refused_too) {
  auto l = parse_settings(R"({"extra": {"fly": "fo1_abc", "nested": {"secret": 1}}})",
                          "s.json");
  EXPECT_EQ(l.problems.size(), 3u) << all_problems(l);
  EXPECT_NE(problem_at(l, "extra"), nullptr);
  EXPECT_NE(problem_at(l, "extra.fly"), nullptr);
  EXPECT_NE(problem_at(l, "extra.nested.secret"), nullptr);
}

TEST(settings_parse, profile_secret_names_are_allowed) {
  auto text = lines({
      "{\"profiles\": [",
      "  {\"name\": \"claude\", \"command\": \"claude -p\",",
      "   \"secrets\": [\"ANTHROPIC_API_KEY\", \"GITHUB_TOKEN\", \"_PRIVATE_KEY_2\"],",
      "   \"image\": \"ghcr.io/acme/agent:1\"}",
      "]}",
  });
  auto l = parse_settings(text, "s.json");
  EXPECT_TRUE(l.problems.empty()) << all_problems(l);
  ASSERT_EQ(l.value.profiles.size(), 1u);
  EXPECT_EQ(l.value.profiles[0],
            (agent_profile{"claude",
                           "claude -p",
                           {"ANTHROPIC_API_KEY", "GITHUB_TOKEN", "_PRIVATE_KEY_2"},
                           "ghcr.io/acme/agent:1"}));
}

TEST(settings_parse, profile_secret_must_be_a_name_not_a_value) {
  auto text = lines({
      "{\"profiles\": [",
      "  {\"name\": \"a\", \"command\": \"x\", \"secrets\": [\"anthropic-key\"]},",
      "  {\"name\": \"b\", \"command\": \"x\", \"secrets\": [\"AKIAIOSFODNN7EXAMPLE\"]},",
      "  {\"name\": \"c\", \"command\": \"x\", \"secrets\": [3]},",
      "  {\"name\": \"d\"},",
      "  {\"name\": \"e\", \"command\": \"x\"},",
      "  {\"name\": \"e\", \"command\": \"y\"}",
      "]}",
  });
  auto l = parse_settings(text, "s.json");
  EXPECT_EQ(l.problems.size(), 5u) << all_problems(l);
  EXPECT_EQ(problem_at(l, "profiles[0].secrets[0]")->describe(),
            "s.json:2: profiles[0].secrets[0]: expected the name of a secret as an "
            "environment variable ([A-Z_][A-Z0-9_]*), found \"anthropic-key\"");
  EXPECT_THAT(problem_at(l, "profiles[1].secrets[0]")->message,
              AllOf(HasSubstr("looks like an AWS access key id"),
                    HasSubstr("aloft account add")));
  EXPECT_EQ(problem_at(l, "profiles[2].secrets[0]")->message,
            "expected the name of a secret as an environment variable, found the "
            "integer 3");
  EXPECT_EQ(problem_at(l, "profiles[3]")->describe(),
            "s.json:5: profiles[3]: missing \"command\": every profile needs the command "
            "that runs the agent");
  EXPECT_EQ(problem_at(l, "profiles[5].name")->message,
            "duplicate profile name \"e\" (also profiles[4])");
  ASSERT_EQ(l.value.profiles.size(), 1u);
  EXPECT_EQ(l.value.profiles[0].command, "x");
}

// -- forgiveness, defaults, default_account ------------------------------------------

TEST(settings_parse, one_bad_account_is_left_out_and_the_others_load) {
  auto l = parse_settings(
      with_accounts({
          R"({"name": "dev", "provider": "local"})",
          R"({"name": "broken", "provider": "fly", "guards": {"idle_timeout_s": "ten"}})",
          R"({"name": "prod", "provider": "fly", "options": {"org": "acme"}})",
      }),
      "s.json");
  auto p = only_problem(l);
  EXPECT_EQ(p.path, "accounts[1].guards.idle_timeout_s");
  EXPECT_EQ(p.line, 4);
  ASSERT_EQ(l.value.accounts.size(), 2u);
  EXPECT_EQ(l.value.accounts[0].name, "dev");
  EXPECT_EQ(l.value.accounts[1].name, "prod");
  EXPECT_EQ(l.value.accounts[1].options.at("org"), "acme");
}

TEST(settings_parse, defaults_are_applied_on_load) {
  auto l = parse_settings(with_accounts({
                              R"({"name": "f", "provider": "fly"})",
                              R"({"name": "v", "provider": "vercel"})",
                              R"({"name": "m", "provider": "modal"})",
                              R"({"name": "l", "provider": "local"})",
                          }),
                          "s.json");
  ASSERT_TRUE(l.problems.empty()) << all_problems(l);
  ASSERT_EQ(l.value.accounts.size(), 4u);
  using opts = std::map<std::string, std::string>;
  EXPECT_EQ(l.value.accounts[0].options, (opts{{"api_url", "https://api.machines.dev"},
                                               {"app_prefix", "aloft"},
                                               {"cpus", "2"},
                                               {"image", "docker.io/library/debian:bookworm-slim"},
                                               {"ip_mode", "ipv6"},
                                               {"memory_mb", "2048"},
                                               {"org", "personal"}}));
  EXPECT_EQ(l.value.accounts[1].options, (opts{{"api_url", "https://vercel.com/api"},
                                               {"runtime", "node24"},
                                               {"vcpus", "2"}}));
  EXPECT_EQ(l.value.accounts[2].options, (opts{{"api_url", "https://api.modal.com"},
                                               {"app_name", "aloft"},
                                               {"environment", "main"}}));
  EXPECT_TRUE(l.value.accounts[3].options.empty());
  for (auto& a : l.value.accounts) {
    EXPECT_TRUE(a.enabled);
    EXPECT_EQ(a.guards, guards{});
    EXPECT_TRUE(a.guards.auto_destroy_on_idle);
    EXPECT_EQ(a.guards.idle_timeout_s, 800);
    EXPECT_EQ(a.guards.hard_timeout_s, 28800);
    EXPECT_EQ(a.guards.hard_warning_s, 600);
    EXPECT_EQ(a.max_concurrent_vms, 10);
  }
}

TEST(settings_parse, given_options_win_over_defaults) {
  auto l = parse_settings(with_accounts({R"({"name": "f", "provider": "fly",
                       "options": {"api_url": "http://localhost:4280", "ip_mode": "ipv6+ipv4"}})"}),
                          "s.json");
  ASSERT_TRUE(l.problems.empty()) << all_problems(l);
  EXPECT_EQ(l.value.accounts[0].options.at("api_url"), "http://localhost:4280");
  EXPECT_EQ(l.value.accounts[0].options.at("ip_mode"), "ipv6+ipv4");
  EXPECT_EQ(l.value.accounts[0].options.at("org"), "personal");
}

TEST(settings_parse, default_account_must_name_an_account_or_local) {
  auto text = lines({
      "{",
      "  \"accounts\": [{\"name\": \"dev\", \"provider\": \"local\"},",
      "               {\"name\": \"prod\", \"provider\": \"fly\"}],",
      "  \"default_account\": \"staging\"",
      "}",
  });
  auto l = parse_settings(text, "s.json");
  auto p = only_problem(l);
  EXPECT_EQ(p.describe(),
            "s.json:4: default_account: expected the name of an account in "
            "this file or \"local\", found \"staging\"; accounts: dev, prod");
  EXPECT_TRUE(l.value.default_account.empty());
  EXPECT_EQ(l.value.accounts.size(), 2u);

  l = parse_settings(R"({"default_account": "local"})", "s.json");
  EXPECT_TRUE(l.problems.empty()) << all_problems(l);
  EXPECT_EQ(l.value.default_account, "local");
}

TEST(settings_parse, default_account_may_name_an_account_left_out_for_a_problem) {
  auto l = parse_settings(
      R"({"accounts": [{"name": "prod", "provider": "fly", "enabled": 1}],
        "default_account": "prod"})",
      "s.json");
  auto p = only_problem(l);
  EXPECT_EQ(p.path, "accounts[0].enabled");
  EXPECT_EQ(l.value.default_account, "prod");
}

TEST(settings_problem, describe_leaves_out_an_unknown_line_and_an_empty_path) {
  EXPECT_EQ((settings_problem{"f.json", "a.b", 3, "m"}.describe()), "f.json:3: a.b: m");
  EXPECT_EQ((settings_problem{"f.json", "a.b", 0, "m"}.describe()), "f.json: a.b: m");
  EXPECT_EQ((settings_problem{"f.json", "", 0, "m"}.describe()), "f.json: m");
}

// -- validate_account, apply_option, set_account_field -------------------------------

TEST(settings_account, validate_account_names_the_field) {
  auto a = fly_account("dev");
  EXPECT_FALSE(validate_account(a));
  a.options["ip_mode"] = "ipv4";
  auto err = validate_account(a);
  EXPECT_EQ(code_of(err), errc::invalid_argument);
  EXPECT_EQ(message_of(err),
            "options.ip_mode: expected one of \"ipv6\" or \"ipv6+ipv4\", found \"ipv4\"");
  a = fly_account("dev");
  a.guards.idle_timeout_s = 0;
  EXPECT_EQ(message_of(validate_account(a)),
            "guards.idle_timeout_s: expected an integer >= 1, found 0");
  a = fly_account("dev");
  a.options["token"] = "x";
  EXPECT_THAT(message_of(validate_account(a)),
              AllOf(HasSubstr("options.token: the key \"token\" is named like a secret"),
                    HasSubstr("aloft account add")));
  a = fly_account("dev");
  a.options["app_prefix"] = "ghp_0123456789";
  EXPECT_THAT(message_of(validate_account(a)),
              AllOf(HasSubstr("options.app_prefix: looks like a GitHub token"),
                    Not(HasSubstr("0123456789"))));
  a = fly_account("Dev");
  EXPECT_THAT(message_of(validate_account(a)), HasSubstr("name: expected a name"));
  a.name = "dev";
  a.provider = "aws";
  EXPECT_THAT(message_of(validate_account(a)), HasSubstr("provider: expected one of"));
  a = fly_account("dev");
  a.options["zone"] = "x";
  EXPECT_THAT(message_of(validate_account(a)),
              HasSubstr("unknown option \"zone\" for provider \"fly\""));
}

TEST(settings_account, apply_option_validates_and_fills_in_defaults) {
  account a;
  a.name = "v";
  a.provider = "vercel";
  EXPECT_FALSE(apply_option(a, "team", "team_123"));
  EXPECT_EQ(a.options.at("team"), "team_123");
  EXPECT_EQ(a.options.at("runtime"), "node24");
  EXPECT_EQ(a.options.at("vcpus"), "2");

  auto err = apply_option(a, "vcpus", "16");
  EXPECT_EQ(code_of(err), errc::invalid_argument);
  EXPECT_EQ(message_of(err),
            "vcpus: expected one of \"1\", \"2\", \"4\" or \"8\", found \"16\"");
  EXPECT_EQ(a.options.at("vcpus"), "2");

  err = apply_option(a, "region", "iad1");
  EXPECT_EQ(message_of(err), "unknown option \"region\" for provider \"vercel\"; known "
                             "options: api_url, project, runtime, team, vcpus");

  err = apply_option(a, "token", "abc");
  EXPECT_THAT(message_of(err), AllOf(HasSubstr("token: the key \"token\" is named like a "
                                               "secret"),
                                     HasSubstr("`aloft account add`")));
  err = apply_option(a, "project", "vercel_AbCdEfGhIjKlMnOpQr");
  EXPECT_THAT(message_of(err), AllOf(HasSubstr("project: looks like a Vercel token"),
                                     Not(HasSubstr("AbCdEf"))));
  EXPECT_EQ(a.options.count("project"), 0u);

  EXPECT_EQ(known_options("fly"),
            (std::vector<std::string>{"api_url", "app_prefix", "cpus", "image", "ip_mode",
                                      "memory_mb", "org"}));
  EXPECT_TRUE(known_options("aws").empty());
}

TEST(settings_account, set_account_field_takes_guards_as_strings) {
  auto a = fly_account("dev");
  EXPECT_FALSE(set_account_field(a, "idle_timeout_s", "900"));
  EXPECT_FALSE(set_account_field(a, "hard_timeout_s", "3600"));
  EXPECT_FALSE(set_account_field(a, "hard_warning_s", "0"));
  EXPECT_FALSE(set_account_field(a, "auto_destroy_on_idle", "false"));
  EXPECT_FALSE(set_account_field(a, "max_concurrent_vms", "3"));
  EXPECT_FALSE(set_account_field(a, "enabled", "false"));
  EXPECT_FALSE(set_account_field(a, "org", "acme"));
  EXPECT_EQ(a.guards.idle_timeout_s, 900);
  EXPECT_EQ(a.guards.hard_timeout_s, 3600);
  EXPECT_EQ(a.guards.hard_warning_s, 0);
  EXPECT_FALSE(a.guards.auto_destroy_on_idle);
  EXPECT_EQ(a.max_concurrent_vms, 3);
  EXPECT_FALSE(a.enabled);
  EXPECT_EQ(a.options.at("org"), "acme");

  auto before = a;
  EXPECT_EQ(message_of(set_account_field(a, "idle_timeout_s", "ten")),
            "idle_timeout_s: expected an integer >= 1, found \"ten\"");
  EXPECT_EQ(message_of(set_account_field(a, "idle_timeout_s", "0")),
            "idle_timeout_s: expected an integer >= 1, found \"0\"");
  EXPECT_EQ(message_of(set_account_field(a, "hard_warning_s", "-1")),
            "hard_warning_s: expected an integer >= 0, found \"-1\"");
  EXPECT_EQ(message_of(set_account_field(a, "hard_timeout_s", "99999999999999999999")),
            "hard_timeout_s: expected an integer >= 1, found \"99999999999999999999\"");
  EXPECT_EQ(message_of(set_account_field(a, "hard_timeout_s", "400000000")),
            "hard_timeout_s: expected an integer <= 315360000, found \"400000000\"");
  EXPECT_EQ(message_of(set_account_field(a, "auto_destroy_on_idle", "yes")),
            "auto_destroy_on_idle: expected true or false, found \"yes\"");
  EXPECT_EQ(message_of(set_account_field(a, "max_concurrent_vms", "1.5")),
            "max_concurrent_vms: expected an integer >= 1, found \"1.5\"");
  EXPECT_EQ(message_of(set_account_field(a, "ip_mode", "ipv4")),
            "ip_mode: expected one of \"ipv6\" or \"ipv6+ipv4\", found \"ipv4\"");
  EXPECT_THAT(message_of(set_account_field(a, "name", "x")),
              HasSubstr("cannot be changed"));
  EXPECT_EQ(
      message_of(set_account_field(a, "idle", "5")),
      "unknown setting \"idle\" for a fly account; known: auto_destroy_on_idle, "
      "enabled, hard_timeout_s, hard_warning_s, idle_timeout_s, max_concurrent_vms, "
      "and the options api_url, app_prefix, cpus, image, ip_mode, memory_mb, org");
  EXPECT_THAT(message_of(set_account_field(a, "api_token", "x")),
              HasSubstr("is named like a secret"));
  EXPECT_EQ(a, before);
}

TEST(settings_account, secret_named_keys_are_recognised_case_insensitively) {
  for (auto key : {"token", "FLY_API_TOKEN", "client_secret", "Password", "passwd",
                   "api_key", "ApiKey", "private_key", "credentials"})
    EXPECT_TRUE(named_like_secret(key)) << key;
  EXPECT_FALSE(named_like_secret("api_url"));
  EXPECT_FALSE(named_like_secret("org"));
}

// -- sync bounds -------------------------------------------------------------------

TEST(settings_parse, sync_bounds_are_read_and_the_rest_keep_their_defaults) {
  auto l = parse_settings(lines({
                            "{",
                            "  \"sync\": {",
                            "    \"max_upload_bytes\": 1000000,",
                            "    \"max_tree_bytes\": 5000000000",
                            "  }",
                            "}",
                          }),
                          "s.json");
  ASSERT_TRUE(l.problems.empty()) << all_problems(l);
  EXPECT_EQ(l.value.sync.max_upload_bytes, 1'000'000u);
  EXPECT_EQ(l.value.sync.max_tree_bytes, 5'000'000'000u);
  sync_settings defaults;
  EXPECT_EQ(l.value.sync.max_download_bytes, defaults.max_download_bytes);
  EXPECT_EQ(l.value.sync.max_file_bytes, defaults.max_file_bytes);
  EXPECT_EQ(l.value.sync.max_files, defaults.max_files);
}

TEST(settings_parse, bad_sync_bounds_name_the_key_and_keep_the_default) {
  auto l = parse_settings(lines({
                            "{",
                            "  \"sync\": {",
                            "    \"max_upload_bytes\": 0,",
                            "    \"max_files\": \"many\",",
                            "    \"max_upload_mb\": 5",
                            "  }",
                            "}",
                          }),
                          "s.json");
  ASSERT_EQ(l.problems.size(), 3u) << all_problems(l);
  EXPECT_EQ(l.problems[0].describe(),
            "s.json:3: sync.max_upload_bytes: expected an integer >= 1, found the integer 0");
  EXPECT_EQ(l.problems[1].describe(),
            "s.json:4: sync.max_files: expected an integer >= 1, found the string \"many\"");
  EXPECT_EQ(l.problems[2].describe(),
            "s.json:5: sync.max_upload_mb: unknown key \"max_upload_mb\" in sync; known keys: "
            "max_download_bytes, max_file_bytes, max_files, max_tree_bytes, max_upload_bytes");
  EXPECT_EQ(l.value.sync, sync_settings{});
}

TEST(settings_parse, sync_must_be_an_object) {
  auto p = only_problem(parse_settings(lines({"{", "  \"sync\": 5", "}"}), "s.json"));
  EXPECT_EQ(p.describe(), "s.json:2: sync: expected an object of sync bounds, found the integer 5");
}

TEST(settings_json, validate_settings_refuses_a_zero_sync_bound) {
  auto s = sample_settings();
  s.sync.max_download_bytes = 0;
  auto err = validate_settings(s);
  ASSERT_TRUE(err);
  EXPECT_NE(describe(err).find("sync.max_download_bytes: expected an integer >= 1"),
            std::string::npos)
    << describe(err);
}

// -- to_json, round trip ----------------------------------------------------------

TEST(settings_json, round_trips_through_the_text) {
  auto s = sample_settings();
  auto text = to_json(s).pretty();
  auto l = parse_settings(text, "s.json");
  ASSERT_TRUE(l.problems.empty()) << all_problems(l) << text;
  EXPECT_EQ(l.value, s) << text;
}

TEST(settings_json, writes_only_what_is_set) {
  auto j = to_json(settings{});
  EXPECT_EQ(j.dump(), R"({"version":1,"accounts":[],"profiles":[]})");
  auto s = sample_settings();
  j = to_json(s);
  EXPECT_EQ(j.get_string("default_account"), "fly-main");
  EXPECT_EQ(j.get_string("credential_store"), "file");
  EXPECT_EQ(j.find("accounts")->at(0).find("guards")->get_int("idle_timeout_s"), 900);
  EXPECT_EQ(j.find("profiles")->at(0).find("image"), nullptr);
  EXPECT_EQ(j.find("profiles")->at(1).get_string("image"), "ghcr.io/acme/codex:1");
  // Only the sync bounds that differ from their defaults.
  ASSERT_NE(j.find("sync"), nullptr);
  EXPECT_EQ(j.find("sync")->dump(), R"({"max_upload_bytes":50000000,"max_files":20000})");
}

TEST(settings_json, validate_settings_names_the_path) {
  auto s = sample_settings();
  EXPECT_FALSE(validate_settings(s));
  s.accounts[1].options["vcpus"] = "3";
  EXPECT_EQ(message_of(validate_settings(s)),
            "accounts[1].options.vcpus: expected one of \"1\", \"2\", \"4\" or \"8\", "
            "found \"3\"");
  s = sample_settings();
  s.accounts.push_back(s.accounts[0]);
  EXPECT_EQ(message_of(validate_settings(s)),
            "accounts[3].name: duplicate account name \"fly-main\"");
  s = sample_settings();
  s.default_account = "nope";
  EXPECT_THAT(message_of(validate_settings(s)), HasSubstr("default_account: expected"));
  s = sample_settings();
  s.profiles[0].secrets.push_back("sk-ant-api03-abc");
  EXPECT_THAT(message_of(validate_settings(s)),
              AllOf(HasSubstr("profiles[0].secrets[2]: looks like an Anthropic API key"),
                    Not(HasSubstr("api03"))));
}

// -- files ----------------------------------------------------------------------

TEST(settings_file, missing_file_is_empty_settings) {
  temp_dir dir;
  auto l = load_settings(dir.path() + "/nope/settings.json");
  EXPECT_TRUE(l.problems.empty()) << all_problems(l);
  EXPECT_EQ(l.value, settings{});
}

TEST(settings_file, unreadable_file_is_one_problem) {
  temp_dir dir;
  auto path = dir.path() + "/settings.json";
  ASSERT_EQ(::mkdir(path.c_str(), 0700), 0);
  auto p = only_problem(load_settings(path));
  EXPECT_EQ(p.describe(), path + ": cannot read the file: " + std::strerror(EISDIR));
}

TEST(settings_file, problems_name_the_file_loaded) {
  temp_dir dir;
  auto path = dir.path() + "/settings.json";
  write_text(path, "{\n  \"verison\": 1\n}\n");
  auto p = only_problem(load_settings(path));
  EXPECT_EQ(p.file, path);
  EXPECT_EQ(p.line, 2);
}

TEST(settings_file, save_then_load_gives_the_same_settings) {
  temp_dir dir;
  auto path = dir.path() + "/config/aloft/settings.json";
  auto s = sample_settings();
  ASSERT_FALSE(save_settings(path, s));
  auto l = load_settings(path);
  ASSERT_TRUE(l.problems.empty()) << all_problems(l);
  EXPECT_EQ(l.value, s);
}

TEST(settings_file, file_is_0600_and_created_directories_0700) {
  temp_dir dir;
  auto parent = dir.path() + "/a/b";
  auto path = parent + "/settings.json";
  // A wide umask must not widen the file.
  auto old_mask = ::umask(0);
  auto err = save_settings(path, sample_settings());
  ::umask(old_mask);
  ASSERT_FALSE(err) << describe(err);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_EQ(::stat(parent.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(::stat((dir.path() + "/a").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);

  // Replacing a file someone made world-readable makes it private again.
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  ASSERT_FALSE(save_settings(path, settings{}));
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  // No temporary file is left behind.
  auto* d = ::opendir(parent.c_str());
  ASSERT_NE(d, nullptr);
  int entries = 0;
  while (auto* e = ::readdir(d))
    if (std::string{e->d_name} != "." && std::string{e->d_name} != "..")
      ++entries;
  ::closedir(d);
  EXPECT_EQ(entries, 1);
}

TEST(settings_file, invalid_settings_are_not_written) {
  temp_dir dir;
  auto path = dir.path() + "/settings.json";
  auto s = sample_settings();
  s.accounts[0].options["org"] = "fo1_secretvalue";
  auto err = save_settings(path, s);
  EXPECT_EQ(code_of(err), errc::invalid_argument);
  EXPECT_THAT(message_of(err),
              AllOf(HasSubstr("save " + path),
                    HasSubstr("accounts[0].options.org: looks like a Fly"),
                    Not(HasSubstr("secretvalue"))));
  struct stat st;
  EXPECT_NE(::stat(path.c_str(), &st), 0);
}

TEST(settings_file, errors_name_the_path_and_the_errno_text) {
  temp_dir dir;
  auto blocker = dir.path() + "/file";
  write_text(blocker, "x");
  auto err = save_settings(blocker + "/settings.json", settings{});
  ASSERT_TRUE(err);
  EXPECT_THAT(message_of(err),
              AllOf(HasSubstr(blocker), HasSubstr(std::strerror(ENOTDIR))));
}

/// Runs `body` in a child process and returns its wait status.
template <class F> int in_child(F body) {
  pid_t pid = ::fork();
  if (pid == 0) {
    body();
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

settings huge_settings() {
  settings s;
  for (int i = 0; i < 2000; ++i) {
    auto a = fly_account("account-" + std::to_string(i));
    a.options["org"] = "org-" + std::to_string(i);
    s.accounts.push_back(a);
  }
  return s;
}

TEST(settings_file, killed_between_fsync_and_rename_leaves_the_old_file_whole) {
  temp_dir dir;
  auto path = dir.path() + "/settings.json";
  auto old = sample_settings();
  ASSERT_FALSE(save_settings(path, old));
  auto old_text = read_text(path);

  int status = in_child([&] {
    ignore_error(save_settings(path, huge_settings(), [] { ::raise(SIGKILL); }));
  });
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);

  EXPECT_EQ(read_text(path), old_text);
  auto l = load_settings(path);
  EXPECT_TRUE(l.problems.empty()) << all_problems(l);
  EXPECT_EQ(l.value, old);
}

// The child dies inside write(2) itself: RLIMIT_FSIZE makes the kernel send
// SIGXFSZ when the temporary file reaches the limit, halfway through.
TEST(settings_file, killed_mid_write_leaves_the_old_file_whole) {
  temp_dir dir;
  auto path = dir.path() + "/settings.json";
  auto old = sample_settings();
  ASSERT_FALSE(save_settings(path, old));
  auto old_text = read_text(path);
  auto huge = huge_settings();
  auto huge_size = to_json(huge).pretty().size();
  constexpr rlim_t limit = 64 * 1024;
  ASSERT_GT(huge_size, 2 * limit);

  int status = in_child([&] {
    struct rlimit no_core {
      0, 0
    };
    ::setrlimit(RLIMIT_CORE, &no_core);
    struct rlimit fsize {
      limit, limit
    };
    ::setrlimit(RLIMIT_FSIZE, &fsize);
    ignore_error(save_settings(path, huge));
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGXFSZ);

  // The half-written temporary file is there, and it is not the settings.
  bool saw_partial = false;
  auto* d = ::opendir(dir.path().c_str());
  ASSERT_NE(d, nullptr);
  while (auto* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.rfind("settings.json.tmp-", 0) == 0) {
      saw_partial = true;
      EXPECT_EQ(read_text(dir.path() + "/" + name).size(), limit);
    }
  }
  ::closedir(d);
  EXPECT_TRUE(saw_partial);

  EXPECT_EQ(read_text(path), old_text);
  auto l = load_settings(path);
  EXPECT_TRUE(l.problems.empty()) << all_problems(l);
  EXPECT_EQ(l.value, old);

  // The next save still works and replaces the file.
  ASSERT_FALSE(save_settings(path, huge));
  auto again = load_settings(path);
  EXPECT_TRUE(again.problems.empty());
  EXPECT_EQ(again.value.accounts.size(), 2000u);
}

} // namespace
} // namespace aloft

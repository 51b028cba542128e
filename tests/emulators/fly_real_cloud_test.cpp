// One short session against the real Fly.io API. Opt-in: skipped unless
// ALOFT_FLY_TOKEN is set (with ALOFT_FLY_ORG, default "personal", and
// optionally ALOFT_FLY_IMAGE and ALOFT_FLY_API_URL). It makes an app named
// after a fresh installation, one machine, and destroys the machine at the
// end whatever happened; CI never sets the token.
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "engine/app/api.hpp"
#include "engine/base/error.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;

std::string env_or(const char* name, const std::string& fallback) {
  auto v = std::getenv(name);
  return v && *v ? std::string{v} : fallback;
}

TEST(fly_real_cloud, one_short_session_and_nothing_left) {
  auto token = env_or("ALOFT_FLY_TOKEN", "");
  if (token.empty())
    GTEST_SKIP() << "set ALOFT_FLY_TOKEN (and ALOFT_FLY_ORG) to run against the real Fly API";
  test::temp_dir home;
  test::temp_dir wt;
  std::ofstream{home.path() + "/settings.json"} << R"({"version": 1, "credential_store": "file"})";
  engine_options opts;
  opts.home = home.path();
  auto e = open_engine(opts);
  ASSERT_TRUE(e) << describe(e.error());
  auto& eng = **e;
  account a;
  a.name = "fly-smoke";
  a.provider = "fly";
  a.options["org"] = env_or("ALOFT_FLY_ORG", "personal");
  a.options["api_url"] = env_or("ALOFT_FLY_API_URL", "https://api.machines.dev");
  if (auto image = env_or("ALOFT_FLY_IMAGE", ""); !image.empty())
    a.options["image"] = image;
  a.guards.idle_timeout_s = 600;
  a.guards.hard_timeout_s = 1800; // the machine ends itself by then regardless
  auto added = eng.add_account(a, {{"token", token}});
  ASSERT_TRUE(added) << describe(added.error());
  launch_request req;
  req.account = "fly-smoke";
  req.agent_cmd = "echo hello-from-fly-cloud; sleep 600";
  req.worktree = wt.path();
  auto rec = eng.launch(req);
  ASSERT_TRUE(rec) << describe(rec.error());
  auto id = rec->id;
  bool up = test::wait_until(
    [&] {
      auto v = eng.show(id);
      return v && (v->record.state == session_state::running || is_terminal(v->record.state));
    },
    600s);
  auto v = eng.show(id);
  EXPECT_TRUE(up && v && v->record.state == session_state::running)
    << (v ? v->record.reason : std::string{});
  if (up && v && v->record.state == session_state::running) {
    auto log = eng.log_path(id);
    ASSERT_TRUE(log);
    EXPECT_TRUE(test::wait_until(
      [&] {
        std::ifstream in{*log};
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str().find("hello-from-fly-cloud") != std::string::npos;
      },
      60s));
  }
  eng.destroy(id);
  EXPECT_TRUE(test::wait_until(
    [&] {
      auto s = eng.show(id);
      return s && is_terminal(s->record.state);
    },
    300s))
    << "the machine was not confirmed destroyed; check the Fly dashboard";
}

} // namespace
} // namespace aloft

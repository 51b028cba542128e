// The fly-emulator program: it prints its URL, serves with the faults its
// flags set, and destroys every sandbox when it is told to stop.
#include <csignal>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "engine/base/base64.hpp"
#include "engine/base/error.hpp"
#include "engine/base/json.hpp"
#include "engine/base/proc_table.hpp"
#include "engine/keys.hpp"
#include "engine/process.hpp"
#include "providers/http/http_client.hpp"
#include "tests/emulators/fly/machine_sandbox.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft::test {
namespace {

using namespace std::chrono_literals;

const std::string program = std::string{ALOFT_BINARY_DIR} + "/fly-emulator";

// The program running on a thread of its own; its first line of output is
// handed over through `url`.
struct running_program {
  explicit running_program(std::vector<std::string> args) {
    args.insert(args.begin(), program);
    thread = std::thread([this, args] {
      process_spec spec;
      spec.argv = args;
      spec.env = environment_without({"FLY_EMULATOR_TOKEN"});
      std::string out;
      spec.on_output = [&](std::string_view bytes) {
        out.append(bytes);
        if (auto nl = out.find('\n'); nl != std::string::npos && !sent) {
          sent = true;
          url.set(out.substr(0, nl));
        }
        return true;
      };
      result.set(run_process(spec));
    });
  }
  ~running_program() {
    if (thread.joinable())
      thread.join();
  }

  /// The pid of the program, found by its command line.
  pid_t pid(const std::string& marker) const {
    for (auto p : processes_matching(marker))
      if (proc::cmdline(p).rfind(program + " ", 0) == 0)
        return p;
    return -1;
  }

  bool sent = false;
  slot<std::string> url;
  slot<caf::expected<process_result>> result;
  std::thread thread;
};

caf::expected<http_response> send(const std::string& method, const std::string& url,
                                  const std::string& body = {}) {
  http_request req;
  req.method = method;
  req.url = url;
  req.body = body;
  req.headers = {{"Authorization", "Bearer t-prog"}};
  return http_call(req);
}

TEST(fly_emulator_program_test, serves_until_sigterm_then_destroys_every_sandbox) {
  temp_dir tmp;
  auto sandboxes = tmp.path() + "/sb";
  auto keys = make_session_keys(tmp.path() + "/keys");
  ASSERT_TRUE(keys);
  running_program p{{"--port", "0", "--token", "t-prog", "--sandboxes", sandboxes,
                     "--boot-delay-ms", "10", "--fail", "apps_get:1:503"}};
  auto url = p.url.take(10s);
  ASSERT_TRUE(url) << "no URL printed";
  ASSERT_EQ(url->rfind("http://127.0.0.1:", 0), 0u) << *url;

  auto r = send("GET", *url + "/v1/tokens/current");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = send("POST", *url + "/v1/apps", R"({"name":"prog-app","org_slug":"personal"})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 201);
  r = send("GET", *url + "/v1/apps/prog-app");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503) << "the fault the flags asked for";

  auto files = json::array();
  files.push_back(json::object()
                      .set("guest_path", "/etc/ssh/ssh_host_ed25519_key")
                      .set("raw_value", base64_encode(keys->host_private_key)));
  files.push_back(json::object()
                      .set("guest_path", "/aloft/init.sh")
                      .set("raw_value", base64_encode("sleep 300\nexit 0\n")));
  auto exec = json::array();
  exec.push_back("/bin/sh");
  exec.push_back("/aloft/init.sh");
  auto config = json::object();
  config.set("image", "debian")
      .set("files", files)
      .set("init", json::object().set("exec", exec));
  r = send("POST", *url + "/v1/apps/prog-app/machines",
           json::object().set("config", config).dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  auto id = json::parse(r->body)->get_string("id");
  r = send("GET",
           *url + "/v1/apps/prog-app/machines/" + id + "/wait?state=started&timeout=30");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_GE(processes_matching(sandboxes).size(), 3u)
      << "the program, sshd and the init (a shell that waits for sleep)";

  auto pid = p.pid(sandboxes);
  ASSERT_GT(pid, 0);
  ::kill(pid, SIGTERM);
  auto result = p.result.take(30s);
  ASSERT_TRUE(result && *result) << "the program did not end";
  EXPECT_EQ((*result)->exit_code, 0) << (*result)->error;
  EXPECT_TRUE(processes_matching(sandboxes).empty());
  size_t left = 0;
  for (auto& e : std::filesystem::directory_iterator(sandboxes))
    left += e.path().filename().string().rfind("local-", 0) == 0 ? 1 : 0;
  EXPECT_EQ(left, 0u);
}

TEST(fly_emulator_program_test, refuses_to_start_without_a_token_or_on_a_taken_port) {
  process_spec spec;
  spec.argv = {program};
  spec.env = environment_without({"FLY_EMULATOR_TOKEN"});
  auto r = run_process(spec);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->exit_code, 2);
  EXPECT_NE(r->error.find("token"), std::string::npos) << r->error;

  temp_dir tmp;
  running_program first{{"--token", "t", "--sandboxes", tmp.path() + "/a"}};
  auto url = first.url.take(10s);
  ASSERT_TRUE(url);
  auto port = url->substr(url->rfind(':') + 1);
  spec.argv = {program, "--token", "t", "--port", port, "--sandboxes", tmp.path() + "/b"};
  r = run_process(spec);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->exit_code, 1);
  EXPECT_NE(r->error.find(port), std::string::npos) << r->error;
  ::kill(first.pid(tmp.path() + "/a"), SIGINT);
  auto done = first.result.take(30s);
  ASSERT_TRUE(done && *done);
  EXPECT_EQ((*done)->exit_code, 0);
}

} // namespace
} // namespace aloft::test

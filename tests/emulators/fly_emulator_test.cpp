// The Fly Machines API emulator, driven over HTTP with the project's client:
// auth, apps, IPs, the machine lifecycle with real sandboxes behind it, the
// emulated proxy, waits, and every kind of fault it injects.
#include "engine/base/base64.hpp"
#include "tests/emulators/fly/fly_emulator.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string>

#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "engine/base/json.hpp"
#include "engine/keys.hpp"
#include "engine/ssh_transport.hpp"
#include "providers/http/http_client.hpp"
#include "tests/emulators/fly/machine_sandbox.hpp"
#include "tests/support/http_server.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft::test {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

constexpr const char* token = "fo1_emulator-test-token";

bool path_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

std::string read_text(const std::string& path) {
  std::ifstream in{path};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The first line a TCP server at host:port sends within a second; "" when
// the connection is refused or closed without a word.
std::string banner(const std::string& host, uint16_t port) {
  bool v6 = host.find(':') != std::string::npos;
  int fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return {};
  timeval tv{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  int rc;
  if (v6) {
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    ::inet_pton(AF_INET6, host.c_str(), &a.sin6_addr);
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  } else {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    ::inet_pton(AF_INET, host.c_str(), &a.sin_addr);
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  }
  std::string out;
  if (rc == 0) {
    char buf[256];
    while (out.find('\n') == std::string::npos && out.size() < 255) {
      auto n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0)
        break;
      out.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  return out;
}

class fly_emulator_test : public ::testing::Test {
protected:
  void SetUp() override {
    auto keys = make_session_keys(tmp_.path() + "/keys");
    ASSERT_TRUE(keys) << describe(keys.error());
    keys_ = *keys;
    start_emulator();
  }

  void TearDown() override {
    emu_.reset();
    // The emulator destroyed every sandbox on its way out.
    EXPECT_TRUE(processes_matching(sandboxes()).empty());
  }

  std::string sandboxes() const { return tmp_.path() + "/sandboxes"; }

  void start_emulator(fly_emulator_options opts = {}) {
    emu_.reset();
    opts.token = token;
    opts.sandboxes_dir = sandboxes();
    opts.boot_delay = 20ms;
    opts.wait_second = 50ms;
    emu_ = std::make_unique<fly_emulator>(std::move(opts));
    ASSERT_TRUE(emu_->ok()) << emu_->error();
  }

  /// One call; `auth` replaces the Authorization header ("" for none).
  http_response call(const std::string& method, const std::string& path,
                     const std::string& body = {},
                     std::optional<std::string> auth = std::nullopt) {
    http_request req;
    req.method = method;
    req.url = emu_->base_url() + path;
    req.body = body;
    req.timeout = 10s;
    auto a = auth ? *auth : std::string{"Bearer "} + token;
    if (!a.empty())
      req.headers.emplace_back("Authorization", a);
    if (!body.empty())
      req.headers.emplace_back("Content-Type", "application/json");
    auto resp = http_call(req);
    EXPECT_TRUE(resp) << method << " " << path << ": " << describe(resp.error());
    return resp ? *resp : http_response{};
  }

  static json body_of(const http_response& r) {
    auto j = json::parse(r.body);
    EXPECT_TRUE(j) << r.body;
    return j ? *j : json{};
  }

  void make_app(const std::string& name, std::vector<std::string> ip_types = {"v6"}) {
    auto r = call("POST", "/v1/apps",
                  json::object().set("name", name).set("org_slug", "personal").dump());
    ASSERT_EQ(r.status, 201) << r.body;
    for (auto& t : ip_types) {
      auto ip = call("POST", "/v1/apps/" + name + "/ip_assignments",
                     json::object().set("type", t).dump());
      ASSERT_EQ(ip.status, 200) << ip.body;
    }
  }

  /// A machine config as Aloft's provider makes it (keys, files, service,
  /// metadata); `init` is the init script, if any.
  json machine_config(uint16_t ssh_port, const std::string& init = {},
                      json metadata = json::object()) {
    auto file = [](const std::string& path, const std::string& content) {
      auto f = json::object();
      f.set("guest_path", path).set("raw_value", base64_encode(content));
      return f;
    };
    auto files = json::array();
    files.push_back(file("/root/.ssh/authorized_keys", keys_.client_public_key + "\n"));
    files.push_back(file("/etc/ssh/ssh_host_ed25519_key", keys_.host_private_key));
    files.push_back(file("/etc/ssh/ssh_host_ed25519_key.pub", keys_.host_public_key));
    auto config = json::object();
    config.set("image", "docker.io/library/debian:bookworm-slim");
    if (!init.empty()) {
      files.push_back(file("/aloft/init.sh", init));
      auto exec = json::array();
      exec.push_back("/bin/sh");
      exec.push_back("/aloft/init.sh");
      config.set("init", json::object().set("exec", exec));
    }
    config.set("files", files);
    if (ssh_port != 0) {
      auto ports = json::array();
      ports.push_back(json::object().set("port", static_cast<int>(ssh_port)));
      auto service = json::object();
      service.set("protocol", "tcp").set("internal_port", 22).set("ports", ports);
      auto services = json::array();
      services.push_back(service);
      config.set("services", services);
    }
    if (metadata.find("aloft_session") == nullptr)
      metadata.set("aloft_session", "s-0123456789ab");
    config.set("metadata", metadata);
    return config;
  }

  /// Creates a machine; returns its id ("" on failure, with a test failure).
  std::string create_machine(const std::string& app, const json& config,
                             bool skip_launch = false) {
    auto body = json::object();
    body.set("config", config);
    if (skip_launch)
      body.set("skip_launch", true);
    auto r = call("POST", "/v1/apps/" + app + "/machines", body.dump());
    EXPECT_EQ(r.status, 200) << r.body;
    auto m = body_of(r);
    EXPECT_EQ(m.get_string("state"), "created");
    return m.get_string("id");
  }

  /// Waits through the wait endpoint (408: ask again) for `state`, at most
  /// `bound`; returns the last status.
  long wait_for(const std::string& app, const std::string& id, const std::string& state,
                std::chrono::milliseconds bound = 15s) {
    auto deadline = steady::now() + bound;
    for (;;) {
      auto r = call("GET", "/v1/apps/" + app + "/machines/" + id + "/wait?state=" + state
                               + "&timeout=1");
      if (r.status != 408 || steady::now() >= deadline)
        return r.status;
    }
  }

  json get_machine(const std::string& app, const std::string& id) {
    auto r = call("GET", "/v1/apps/" + app + "/machines/" + id);
    EXPECT_EQ(r.status, 200) << r.body;
    return body_of(r);
  }

  std::string workdir_of(const json& machine) {
    auto config = machine.find("config");
    if (config == nullptr || config->find("metadata") == nullptr)
      return {};
    return config->find("metadata")->get_string("aloft_workdir");
  }

  temp_dir tmp_;
  session_keys keys_;
  std::unique_ptr<fly_emulator> emu_;
};

// -- auth and tokens ---------------------------------------------------------------

TEST_F(fly_emulator_test, requires_the_token_and_tags_every_answer_with_a_request_id) {
  for (std::string auth : {"", "Bearer wrong", "Basic abc", token}) {
    auto r = call("GET", "/v1/tokens/current", {}, auth);
    EXPECT_EQ(r.status, 401) << auth;
    EXPECT_FALSE(body_of(r).get_string("error").empty());
    EXPECT_NE(r.header("fly-request-id"), nullptr);
  }
  for (std::string auth : {std::string{"Bearer "} + token, std::string{"FlyV1 "} + token,
                           std::string{"flyv1 fm2_other,"} + token}) {
    auto r = call("GET", "/v1/tokens/current", {}, auth);
    ASSERT_EQ(r.status, 200) << auth;
    ASSERT_NE(r.header("fly-request-id"), nullptr);
    EXPECT_FALSE(r.header("fly-request-id")->empty());
    auto body = body_of(r);
    auto tokens = body.find("tokens");
    ASSERT_TRUE(tokens != nullptr && tokens->size() == 1);
    EXPECT_EQ(tokens->at(0).get_string("org_slug"), "personal");
  }
  auto a = call("GET", "/v1/tokens/current");
  auto b = call("GET", "/v1/tokens/current");
  EXPECT_NE(*a.header("fly-request-id"), *b.header("fly-request-id"));
  EXPECT_EQ(emu_->calls("tokens_current"), 9);
  EXPECT_EQ(call("GET", "/v1/nothing/here").status, 404);
  EXPECT_EQ(call("PUT", "/v1/apps").status, 405);
}

// -- apps ------------------------------------------------------------------------------

TEST_F(fly_emulator_test, apps_are_created_found_listed_and_names_are_global) {
  emu_->reserve_app_name("someone-elses");
  auto create = [&](const std::string& name, const std::string& org = "personal") {
    return call("POST", "/v1/apps",
                json::object().set("name", name).set("org_slug", org).dump());
  };
  auto r = create("aloft-one");
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(body_of(r).get_string("name"), "aloft-one");
  r = call("GET", "/v1/apps/aloft-one");
  ASSERT_EQ(r.status, 200);
  auto app = body_of(r);
  EXPECT_EQ(app.get_string("name"), "aloft-one");
  EXPECT_EQ(app.find("organization")->get_string("slug"), "personal");
  EXPECT_EQ(app.get_int("machine_count", -1), 0);

  for (auto name : {"aloft-one", "someone-elses"}) {
    r = create(name);
    EXPECT_EQ(r.status, 422) << name;
    EXPECT_EQ(body_of(r).get_string("status"), "name_taken");
  }
  EXPECT_EQ(call("GET", "/v1/apps/someone-elses").status, 403);
  EXPECT_EQ(call("GET", "/v1/apps/nobody").status, 404);
  EXPECT_EQ(create("aloft-two", "other-org").status, 404);
  EXPECT_EQ(create("Not_A_Name").status, 422);
  EXPECT_EQ(call("POST", "/v1/apps", "{not json").status, 400);
  EXPECT_EQ(call("POST", "/v1/apps", json::object().set("name", "x-y").dump()).status,
            400);

  ASSERT_EQ(create("aloft-two").status, 201);
  r = call("GET", "/v1/apps?org_slug=personal");
  ASSERT_EQ(r.status, 200);
  auto list = body_of(r);
  EXPECT_EQ(list.get_int("total_apps"), 2);
  ASSERT_EQ(list.find("apps")->size(), 2u);
  EXPECT_EQ(call("GET", "/v1/apps").status, 400);
  EXPECT_EQ(call("GET", "/v1/apps?org_slug=other").status, 404);
}

TEST_F(fly_emulator_test, an_app_with_live_machines_is_deleted_only_with_force) {
  make_app("aloft-del", {});
  auto id = create_machine("aloft-del", machine_config(0), true);
  auto r = call("DELETE", "/v1/apps/aloft-del");
  EXPECT_EQ(r.status, 409) << r.body;
  EXPECT_EQ(call("GET", "/v1/apps/aloft-del").status, 200);
  r = call("DELETE", "/v1/apps/aloft-del?force=true");
  EXPECT_EQ(r.status, 202) << r.body;
  EXPECT_EQ(call("GET", "/v1/apps/aloft-del").status, 404);
  EXPECT_TRUE(
      wait_until([&] { return emu_->machine_state("aloft-del", id) == "destroyed"; }));
  // The name is free again, and the new app does not see the old machines.
  make_app("aloft-del", {});
  r = call("GET", "/v1/apps/aloft-del/machines?include_deleted=true");
  EXPECT_EQ(body_of(r).size(), 0u);
  EXPECT_EQ(call("DELETE", "/v1/apps/aloft-del").status, 202);
}

// -- IP assignments -----------------------------------------------------------------

TEST_F(fly_emulator_test, ip_assignments_are_listed_created_checked_and_deleted) {
  make_app("aloft-ips", {});
  auto assign = [&](const std::string& type) {
    return call("POST", "/v1/apps/aloft-ips/ip_assignments",
                json::object().set("type", type).dump());
  };
  auto r = assign("v6");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(body_of(r).get_string("ip"), "::1");
  EXPECT_FALSE(body_of(r).get_bool("shared", true));
  r = assign("v4");
  EXPECT_EQ(body_of(r).get_string("ip"), "127.0.0.1");
  r = assign("shared_v4");
  EXPECT_TRUE(body_of(r).get_bool("shared"));
  EXPECT_NE(body_of(r).get_string("ip"), "127.0.0.1");
  EXPECT_EQ(assign("private_v6").status, 200);
  EXPECT_EQ(assign("v5").status, 400);
  EXPECT_EQ(call("POST", "/v1/apps/nobody/ip_assignments", R"({"type":"v6"})").status,
            404);

  r = call("GET", "/v1/apps/aloft-ips/ip_assignments");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(body_of(r).find("ips")->size(), 4u);
  EXPECT_EQ(
      call("DELETE", "/v1/apps/aloft-ips/ip_assignments/" + url_encode("::1")).status,
      200);
  EXPECT_EQ(
      call("DELETE", "/v1/apps/aloft-ips/ip_assignments/" + url_encode("::1")).status,
      404);
  r = call("GET", "/v1/apps/aloft-ips/ip_assignments");
  EXPECT_EQ(body_of(r).find("ips")->size(), 3u);
}

// -- machines -----------------------------------------------------------------------

TEST_F(fly_emulator_test, create_requires_an_image_an_app_and_readable_files) {
  make_app("aloft-bad", {});
  auto post = [&](const json& body) {
    return call("POST", "/v1/apps/aloft-bad/machines", body.dump());
  };
  EXPECT_EQ(post(json::object()).status, 400);
  EXPECT_EQ(post(json::object().set("config", json::object())).status, 400);
  auto files = json::array();
  files.push_back(
      json::object().set("guest_path", "/etc/x").set("raw_value", "not base64!"));
  auto r = post(json::object().set(
      "config", json::object().set("image", "debian").set("files", files)));
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(body_of(r).get_string("error").find("base64"), std::string::npos);
  EXPECT_EQ(call("POST", "/v1/apps/nobody/machines",
                 json::object().set("config", json::object().set("image", "x")).dump())
                .status,
            404);
  r = call("GET", "/v1/apps/aloft-bad/machines");
  EXPECT_EQ(body_of(r).size(), 0u);
  EXPECT_EQ(call("GET", "/v1/apps/aloft-bad/machines/0000000000").status, 404);
}

TEST_F(fly_emulator_test, a_machine_boots_and_its_service_answers_ssh_on_the_app_ips) {
  make_app("aloft-boot", {"v6", "v4"});
  auto port = closed_port();
  auto id = create_machine("aloft-boot", machine_config(port));
  ASSERT_FALSE(id.empty());
  auto state = get_machine("aloft-boot", id).get_string("state");
  EXPECT_TRUE(state == "starting" || state == "started") << state;
  ASSERT_EQ(wait_for("aloft-boot", id, "started"), 200);

  auto m = get_machine("aloft-boot", id);
  EXPECT_EQ(m.get_string("state"), "started");
  EXPECT_EQ(m.get_string("region"), "iad");
  EXPECT_FALSE(m.get_string("instance_id").empty());
  EXPECT_FALSE(m.get_string("created_at").empty());
  EXPECT_FALSE(m.get_string("updated_at").empty());
  ASSERT_NE(m.find("events"), nullptr);
  EXPECT_GE(m.find("events")->size(), 2u);
  EXPECT_EQ(m.find("image_ref")->get_string("repository"), "library/debian");
  auto workdir = workdir_of(m);
  EXPECT_TRUE(path_exists(workdir)) << workdir;
  EXPECT_EQ(workdir, emu_->sandbox_dir("aloft-boot", id) + "/work");
  // The files are in the sandbox's stand-in for the root file system.
  EXPECT_EQ(
      read_text(emu_->sandbox_dir("aloft-boot", id) + "/fs/root/.ssh/authorized_keys"),
      keys_.client_public_key + "\n");

  EXPECT_EQ(banner("127.0.0.1", port).rfind("SSH-2.0", 0), 0u);
  EXPECT_EQ(banner("::1", port).rfind("SSH-2.0", 0), 0u);

  // A real login through the emulated proxy, with the pinned host key.
  auto factory = make_ssh_transport_factory();
  ssh_endpoint ep;
  ep.host = "::1";
  ep.port = port;
  ep.user = m.find("config")->find("metadata")->get_string("aloft_ssh_user");
  ep.client_key_path = keys_.client_key_path;
  ep.host_public_key = keys_.host_public_key;
  auto t = connect(*factory, ep);
  ASSERT_TRUE(t) << describe(t.error());
  auto out = run(**t, "cd '" + workdir + "' && pwd");
  ASSERT_TRUE(out);
  EXPECT_EQ(out->exit_code, 0) << out->err;
  EXPECT_EQ(out->out, workdir + "\n");
}

TEST_F(fly_emulator_test, raw_tcp_needs_an_ip_of_its_family_and_never_a_shared_v4) {
  make_app("aloft-net", {"shared_v4"});
  auto port = closed_port();
  auto id = create_machine("aloft-net", machine_config(port));
  ASSERT_EQ(wait_for("aloft-net", id, "started"), 200);
  EXPECT_EQ(banner("127.0.0.1", port), "") << "a shared v4 routes no raw TCP";
  EXPECT_EQ(banner("::1", port), "") << "no v6 yet";
  EXPECT_EQ(banner("127.0.0.2", port), "");
  ASSERT_EQ(call("POST", "/v1/apps/aloft-net/ip_assignments", R"({"type":"v6"})").status,
            200);
  EXPECT_EQ(banner("::1", port).rfind("SSH-2.0", 0), 0u);
  EXPECT_EQ(banner("127.0.0.1", port), "") << "a v6 does not open the v4 address";
  ASSERT_EQ(call("POST", "/v1/apps/aloft-net/ip_assignments", R"({"type":"v4"})").status,
            200);
  EXPECT_EQ(banner("127.0.0.1", port).rfind("SSH-2.0", 0), 0u);
  // A stopped machine is not served, though its port stays reserved.
  ASSERT_EQ(call("POST", "/v1/apps/aloft-net/machines/" + id + "/stop").status, 200);
  ASSERT_EQ(wait_for("aloft-net", id, "stopped"), 200);
  EXPECT_EQ(banner("::1", port), "");
}

TEST_F(fly_emulator_test, a_service_port_taken_on_the_host_fails_the_create) {
  make_app("aloft-port");
  http_server squatter; // holds 127.0.0.1:<port>
  auto body = json::object().set("config", machine_config(squatter.port()));
  auto r = call("POST", "/v1/apps/aloft-port/machines", body.dump());
  EXPECT_EQ(r.status, 422);
  EXPECT_NE(body_of(r).get_string("error").find("taken"), std::string::npos) << r.body;
  EXPECT_EQ(body_of(call("GET", "/v1/apps/aloft-port/machines")).size(), 0u);
  // Two machines cannot share a port either.
  auto port = closed_port();
  create_machine("aloft-port", machine_config(port), true);
  r = call("POST", "/v1/apps/aloft-port/machines",
           json::object().set("config", machine_config(port)).dump());
  EXPECT_EQ(r.status, 422);
}

TEST_F(fly_emulator_test, list_filters_by_state_region_metadata_and_deletion) {
  make_app("aloft-list", {});
  auto tagged = [&](const std::string& inst) {
    return machine_config(0, {}, json::object().set("aloft_installation", inst));
  };
  auto a = create_machine("aloft-list", tagged("i-a"), true);
  auto b = create_machine("aloft-list", tagged("i-a"), true);
  auto c = create_machine("aloft-list", tagged("i-b"), true);
  auto list = [&](const std::string& q) {
    auto r = call("GET", "/v1/apps/aloft-list/machines" + q);
    EXPECT_EQ(r.status, 200);
    std::vector<std::string> ids;
    auto j = body_of(r);
    for (auto& m : j.items())
      ids.push_back(m.get_string("id"));
    return ids;
  };
  EXPECT_EQ(list(""), (std::vector<std::string>{a, b, c}));
  EXPECT_EQ(list("?metadata.aloft_installation=i-a"), (std::vector<std::string>{a, b}));
  EXPECT_EQ(list("?metadata.aloft_installation=i-z"), std::vector<std::string>{});
  EXPECT_EQ(list("?state=created"), (std::vector<std::string>{a, b, c}));
  EXPECT_EQ(list("?state=started,stopped"), std::vector<std::string>{});
  EXPECT_EQ(list("?region=iad").size(), 3u);
  EXPECT_EQ(list("?region=ams").size(), 0u);
  auto summary = body_of(call("GET", "/v1/apps/aloft-list/machines?summary=true"));
  ASSERT_EQ(summary.size(), 3u);
  EXPECT_EQ(summary.at(0).find("events"), nullptr);

  ASSERT_EQ(call("DELETE", "/v1/apps/aloft-list/machines/" + b).status, 200);
  ASSERT_EQ(wait_for("aloft-list", b, "destroyed"), 200);
  EXPECT_EQ(list(""), (std::vector<std::string>{a, c}));
  EXPECT_EQ(list("?include_deleted=true"), (std::vector<std::string>{a, b, c}));
  EXPECT_EQ(get_machine("aloft-list", b).get_string("state"), "destroyed");
  EXPECT_EQ(call("DELETE", "/v1/apps/aloft-list/machines/" + b).status, 404);
}

TEST_F(fly_emulator_test, stop_and_start_take_down_and_bring_back_the_sandbox) {
  make_app("aloft-ss");
  auto port = closed_port();
  auto id = create_machine("aloft-ss", machine_config(port));
  ASSERT_EQ(wait_for("aloft-ss", id, "started"), 200);
  auto first = emu_->sandbox_dir("aloft-ss", id);
  ASSERT_FALSE(first.empty());
  EXPECT_EQ(call("POST", "/v1/apps/aloft-ss/machines/" + id + "/start").status, 412)
      << "a started machine does not start again";

  ASSERT_EQ(call("POST", "/v1/apps/aloft-ss/machines/" + id + "/stop",
                 R"({"signal":"SIGTERM","timeout":"2s"})")
                .status,
            200);
  ASSERT_EQ(wait_for("aloft-ss", id, "stopped"), 200);
  EXPECT_FALSE(path_exists(first));
  EXPECT_TRUE(processes_matching(first).empty());
  EXPECT_EQ(emu_->sandbox_dir("aloft-ss", id), "");

  auto r = call("POST", "/v1/apps/aloft-ss/machines/" + id + "/start");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(body_of(r).get_string("previous_state"), "stopped");
  ASSERT_EQ(wait_for("aloft-ss", id, "started"), 200);
  EXPECT_EQ(banner("::1", port).rfind("SSH-2.0", 0), 0u);
  EXPECT_EQ(
      call("POST", "/v1/apps/aloft-ss/machines/" + id + "/stop", R"({"signal":"BOGUS"})")
          .status,
      400);
}

TEST_F(fly_emulator_test, delete_needs_force_for_a_live_machine_and_leaves_nothing) {
  make_app("aloft-rm");
  auto port = closed_port();
  auto id = create_machine("aloft-rm", machine_config(port, "sleep 300\n"));
  ASSERT_EQ(wait_for("aloft-rm", id, "started"), 200);
  auto dir = emu_->sandbox_dir("aloft-rm", id);
  ASSERT_FALSE(processes_matching(dir).empty()) << "sshd and the init run in the sandbox";

  auto r = call("DELETE", "/v1/apps/aloft-rm/machines/" + id);
  EXPECT_EQ(r.status, 412) << r.body;
  EXPECT_EQ(emu_->machine_state("aloft-rm", id), "started");
  r = call("DELETE", "/v1/apps/aloft-rm/machines/" + id + "?force=true");
  EXPECT_EQ(r.status, 200) << r.body;
  ASSERT_EQ(wait_for("aloft-rm", id, "destroyed"), 200);
  EXPECT_FALSE(path_exists(dir));
  EXPECT_TRUE(processes_matching(dir).empty());
  EXPECT_EQ(banner("127.0.0.1", port), "") << "the proxy's port is closed";
  EXPECT_EQ(get_machine("aloft-rm", id).get_string("state"), "destroyed");
  EXPECT_EQ(emu_->live_machines(), 0u);
}

TEST_F(fly_emulator_test,
       the_init_runs_with_its_files_and_its_exit_destroys_the_machine) {
  make_app("aloft-init");
  auto out = tmp_.path() + "/init.out";
  // The init reports what it was given, then ends: the machine stops and
  // (auto_destroy) is destroyed.
  auto script =
      "echo \"$0|$ALOFT_SKIP_SSHD|$ALOFT_WORKDIR|$GREETING\" > \"$OUT\"\nexit 3\n";
  auto config = machine_config(closed_port(), script);
  auto env = json::object();
  env.set("OUT", out).set("GREETING", "hi");
  config.set("env", env).set("auto_destroy", true);
  auto id = create_machine("aloft-init", config);
  ASSERT_EQ(wait_for("aloft-init", id, "destroyed"), 200);
  auto seen = read_text(out);
  auto bar = seen.find('|');
  ASSERT_NE(bar, std::string::npos) << seen;
  EXPECT_NE(seen.find("/fs/aloft/init.sh|1|"), std::string::npos) << seen;
  EXPECT_NE(seen.find("/work|hi"), std::string::npos) << seen;
  auto m = get_machine("aloft-init", id);
  bool exit_seen = false;
  for (auto& e : m.find("events")->items())
    if (e.get_string("type") == "exit") {
      exit_seen = true;
      EXPECT_EQ(e.find("request")->find("exit_event")->get_int("exit_code"), 3);
    }
  EXPECT_TRUE(exit_seen);
  EXPECT_TRUE(wait_until([&] { return processes_matching(sandboxes()).empty(); }));
}

TEST_F(fly_emulator_test, without_auto_destroy_an_init_exit_leaves_the_machine_stopped) {
  make_app("aloft-keep");
  auto id = create_machine("aloft-keep", machine_config(0, "exit 0\n"));
  ASSERT_EQ(wait_for("aloft-keep", id, "stopped"), 200);
  EXPECT_EQ(emu_->machine_state("aloft-keep", id), "stopped");
  EXPECT_EQ(emu_->sandbox_dir("aloft-keep", id), "");
}

// -- wait ------------------------------------------------------------------------------

TEST_F(fly_emulator_test, wait_checks_its_parameters_and_answers_408_on_expiry) {
  make_app("aloft-wait", {});
  auto id = create_machine("aloft-wait", machine_config(0), true);
  auto wait = [&](const std::string& q) {
    return call("GET", "/v1/apps/aloft-wait/machines/" + id + "/wait" + q);
  };
  for (auto q : {"?state=running", "?state=started&timeout=0",
                 "?state=started&timeout=61", "?timeout=abc"})
    EXPECT_EQ(wait(q).status, 400) << q;
  EXPECT_EQ(call("GET", "/v1/apps/aloft-wait/machines/0000/wait").status, 404);
  auto r = wait("?state=started&timeout=1");
  EXPECT_EQ(r.status, 408);
  EXPECT_NE(r.header("fly-request-id"), nullptr);
  r = wait("?state=stopped,started&timeout=2");
  EXPECT_EQ(r.status, 408);
  // A state reached already answers at once; several states may be asked.
  ASSERT_EQ(call("POST", "/v1/apps/aloft-wait/machines/" + id + "/start").status, 200);
  EXPECT_EQ(wait_for("aloft-wait", id, "stopped,started"), 200);
  r = wait("?state=started&timeout=60");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(body_of(r).get_string("state"), "started");
}

// -- faults ---------------------------------------------------------------------------

TEST_F(fly_emulator_test, injected_statuses_hit_their_operation_with_retry_after) {
  make_app("aloft-f");
  fly_fault f;
  f.op = "apps_get";
  f.count = 2;
  f.status = 429;
  f.retry_after_s = 3;
  emu_->inject(f);
  for (int i = 0; i < 2; ++i) {
    auto r = call("GET", "/v1/apps/aloft-f");
    EXPECT_EQ(r.status, 429);
    ASSERT_NE(r.header("Retry-After"), nullptr);
    EXPECT_EQ(*r.header("Retry-After"), "3");
    EXPECT_FALSE(body_of(r).get_string("error").empty());
  }
  EXPECT_EQ(call("GET", "/v1/apps/aloft-f").status, 200);
  f = fly_fault{};
  f.status = 502; // any operation
  emu_->inject(f);
  EXPECT_EQ(call("GET", "/v1/tokens/current").status, 502);
  EXPECT_EQ(call("GET", "/v1/tokens/current").status, 200);
  auto s = emu_->stats();
  EXPECT_EQ(s.calls["apps_get"], 3);
  EXPECT_EQ(s.faults["apps_get 429"], 2);
  EXPECT_EQ(s.faults["any 502"], 1);
  EXPECT_EQ(s.faults_total, 3);
}

TEST_F(fly_emulator_test, a_408_on_create_still_creates_the_machine) {
  make_app("aloft-408");
  emu_->inject_create_timeout();
  auto config = machine_config(closed_port(), {}, json::object().set("aloft_key", "k-1"));
  auto r = call("POST", "/v1/apps/aloft-408/machines",
                json::object().set("config", config).dump());
  EXPECT_EQ(r.status, 408);
  auto listed =
      body_of(call("GET", "/v1/apps/aloft-408/machines?metadata.aloft_key=k-1"));
  ASSERT_EQ(listed.size(), 1u) << "the client must look before it retries";
  auto id = listed.at(0).get_string("id");
  EXPECT_EQ(wait_for("aloft-408", id, "started"), 200);
}

TEST_F(fly_emulator_test, insufficient_capacity_makes_nothing_and_says_so_in_the_body) {
  make_app("aloft-cap");
  emu_->inject_insufficient_capacity();
  auto r = call("POST", "/v1/apps/aloft-cap/machines",
                json::object().set("config", machine_config(0)).dump());
  EXPECT_EQ(r.status, 412);
  EXPECT_EQ(body_of(r).get_string("status"), "insufficient_capacity");
  EXPECT_EQ(body_of(call("GET", "/v1/apps/aloft-cap/machines")).size(), 0u);
  EXPECT_EQ(emu_->stats().faults["machines_create 412 insufficient_capacity"], 1);
}

TEST_F(fly_emulator_test, resets_drop_the_connection_before_or_after_the_effect) {
  make_app("aloft-reset", {});
  fly_fault f;
  f.what = fly_fault::kind::reset;
  f.op = "apps_get";
  emu_->inject(f);
  http_request req;
  req.url = emu_->base_url() + "/v1/apps/aloft-reset";
  req.headers = {{"Authorization", std::string{"Bearer "} + token}};
  auto resp = http_call(req);
  ASSERT_FALSE(resp);
  EXPECT_EQ(code_of(resp.error()), errc::unavailable);
  EXPECT_EQ(call("GET", "/v1/apps/aloft-reset").status, 200);

  f.op = "machines_create";
  f.after_effect = true;
  emu_->inject(f);
  req.method = "POST";
  req.url = emu_->base_url() + "/v1/apps/aloft-reset/machines";
  req.body = json::object().set("config", machine_config(0)).dump();
  resp = http_call(req);
  ASSERT_FALSE(resp);
  EXPECT_EQ(body_of(call("GET", "/v1/apps/aloft-reset/machines")).size(), 1u);
  EXPECT_EQ(emu_->stats().faults["machines_create reset after effect"], 1);
}

TEST_F(fly_emulator_test, a_malformed_body_does_not_parse) {
  make_app("aloft-mal", {});
  fly_fault f;
  f.what = fly_fault::kind::malformed_json;
  f.op = "apps_get";
  emu_->inject(f);
  auto r = call("GET", "/v1/apps/aloft-mal");
  EXPECT_EQ(r.status, 200);
  EXPECT_FALSE(json::parse(r.body)) << r.body;
  EXPECT_TRUE(json::parse(call("GET", "/v1/apps/aloft-mal").body));
}

TEST_F(fly_emulator_test, a_stuck_machine_stays_starting_until_deleted) {
  make_app("aloft-stuck");
  emu_->stick_next_launches(1);
  auto id = create_machine("aloft-stuck", machine_config(closed_port()));
  EXPECT_EQ(wait_for("aloft-stuck", id, "started", 300ms), 408);
  EXPECT_EQ(emu_->machine_state("aloft-stuck", id), "starting");
  EXPECT_EQ(emu_->sandbox_dir("aloft-stuck", id), "");
  EXPECT_EQ(call("DELETE", "/v1/apps/aloft-stuck/machines/" + id + "?force=true").status,
            200);
  EXPECT_EQ(wait_for("aloft-stuck", id, "destroyed"), 200);
  EXPECT_EQ(emu_->stats().faults["stuck_starting"], 1);
  // Only the next launch was stuck.
  auto next = create_machine("aloft-stuck", machine_config(closed_port()));
  EXPECT_EQ(wait_for("aloft-stuck", next, "started"), 200);
}

TEST_F(fly_emulator_test, a_slow_boot_is_still_starting_within_its_delay) {
  make_app("aloft-slow", {});
  emu_->set_boot_delay(400ms);
  auto begin = steady::now();
  auto id = create_machine("aloft-slow", machine_config(0));
  auto first =
      call("GET", "/v1/apps/aloft-slow/machines/" + id + "/wait?state=started&timeout=1");
  EXPECT_EQ(first.status, 408) << "50 ms into a 400 ms boot";
  ASSERT_EQ(wait_for("aloft-slow", id, "started"), 200);
  EXPECT_GE(steady::now() - begin, 400ms);
}

TEST_F(fly_emulator_test, an_expired_token_is_refused_until_replaced) {
  emu_->expire_token_after(2);
  EXPECT_EQ(call("GET", "/v1/tokens/current").status, 200);
  EXPECT_EQ(call("GET", "/v1/tokens/current").status, 200);
  auto r = call("GET", "/v1/tokens/current");
  EXPECT_EQ(r.status, 401);
  EXPECT_NE(body_of(r).get_string("error").find("expired"), std::string::npos);
  EXPECT_EQ(call("GET", "/v1/apps?org_slug=personal").status, 401);
  emu_->set_token("fo1_new");
  EXPECT_EQ(call("GET", "/v1/tokens/current", {}, std::string{"Bearer fo1_new"}).status,
            200);
  EXPECT_EQ(emu_->stats().faults["token_expired"], 2);
}

TEST_F(fly_emulator_test, a_list_may_come_back_empty_while_machines_exist) {
  make_app("aloft-empty", {});
  create_machine("aloft-empty", machine_config(0), true);
  emu_->empty_next_lists(1);
  EXPECT_EQ(body_of(call("GET", "/v1/apps/aloft-empty/machines")).size(), 0u);
  EXPECT_EQ(body_of(call("GET", "/v1/apps/aloft-empty/machines")).size(), 1u);
}

TEST_F(fly_emulator_test, random_faults_hit_about_their_rate_and_replay_with_the_seed) {
  auto statuses = [&] {
    std::vector<long> out;
    http_request req;
    req.url = emu_->base_url() + "/v1/tokens/current";
    req.headers = {{"Authorization", std::string{"Bearer "} + token}};
    for (int i = 0; i < 60; ++i) {
      auto r = http_call(req);
      out.push_back(r ? r->status : -1);
    }
    return out;
  };
  emu_->set_fault_rate(0.3, 7);
  auto first = statuses();
  emu_->set_fault_rate(0.3, 7);
  EXPECT_EQ(statuses(), first);
  int ok = 0;
  std::set<long> seen;
  for (auto s : first) {
    ok += s == 200 ? 1 : 0;
    seen.insert(s);
  }
  EXPECT_GT(ok, 25);
  EXPECT_LT(ok, 58);
  EXPECT_EQ(seen, (std::set<long>{-1, 200, 429, 503}));
  emu_->clear_faults();
  EXPECT_EQ(call("GET", "/v1/tokens/current").status, 200);
}

TEST_F(fly_emulator_test, the_rate_limit_allows_a_burst_of_three_per_machine_and_action) {
  make_app("aloft-rate", {});
  auto id = create_machine("aloft-rate", machine_config(0), true);
  auto other = create_machine("aloft-rate", machine_config(0), true);
  emu_->set_rate_limit(true);
  auto stop = [&](const std::string& m) {
    return call("POST", "/v1/apps/aloft-rate/machines/" + m + "/stop");
  };
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(stop(id).status, 200) << i;
  auto r = stop(id);
  EXPECT_EQ(r.status, 429);
  ASSERT_NE(r.header("Retry-After"), nullptr);
  EXPECT_EQ(stop(other).status, 200) << "another machine has its own bucket";
  EXPECT_EQ(call("GET", "/v1/apps/aloft-rate/machines/" + id).status, 200)
      << "another action too";
  EXPECT_EQ(emu_->stats().faults["rate_limited"], 1);
}

// -- the emulator's own lifetime ----------------------------------------------------

TEST_F(fly_emulator_test, destroying_the_emulator_destroys_every_sandbox) {
  make_app("aloft-end");
  auto a = create_machine("aloft-end", machine_config(closed_port(), "sleep 300\n"));
  auto b = create_machine("aloft-end", machine_config(closed_port()));
  ASSERT_EQ(wait_for("aloft-end", a, "started"), 200);
  ASSERT_EQ(wait_for("aloft-end", b, "started"), 200);
  ASSERT_FALSE(processes_matching(sandboxes()).empty());
  emu_.reset();
  EXPECT_TRUE(processes_matching(sandboxes()).empty());
  size_t left = 0;
  for (auto& e : std::filesystem::directory_iterator(sandboxes()))
    left += e.path().filename().string().rfind("local-", 0) == 0 ? 1 : 0;
  EXPECT_EQ(left, 0u);
}

TEST_F(fly_emulator_test, a_taken_api_port_is_reported) {
  http_server squatter;
  fly_emulator_options opts;
  opts.token = token;
  opts.sandboxes_dir = sandboxes();
  opts.port = squatter.port();
  // http_server records a test failure when it cannot bind: expected here.
  ::testing::TestPartResultArray failures;
  bool ok = true;
  std::string error;
  {
    ::testing::ScopedFakeTestPartResultReporter reporter{
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD,
        &failures};
    fly_emulator other{opts};
    ok = other.ok();
    error = other.error();
  }
  EXPECT_FALSE(ok);
  EXPECT_NE(error.find(std::to_string(squatter.port())), std::string::npos) << error;
  EXPECT_EQ(failures.size(), 1);
}

} // namespace
} // namespace aloft::test

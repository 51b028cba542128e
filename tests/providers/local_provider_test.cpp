// The local provider against real sshd processes: each test makes its own
// sandboxes under a temporary directory and destroys them.
#include "providers/local/local_provider.hpp"

#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <gtest/gtest.h>

#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"
#include "engine/base/json.hpp"
#include "engine/keys.hpp"
#include "engine/ssh_transport.hpp"
#include "tests/support/local_vm.hpp"

namespace aloft {
namespace {

using namespace std::chrono_literals;

mode_t mode_of(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0)
    return 0;
  return st.st_mode & 07777;
}

bool exists(const std::string& path) {
  struct stat st{};
  return ::lstat(path.c_str(), &st) == 0;
}

std::string slurp(const std::string& path) {
  std::ifstream in{path};
  return {std::istreambuf_iterator<char>{in}, {}};
}

class local_provider_test : public ::testing::Test {
protected:
  void SetUp() override {
    pool_ = std::make_shared<thread_pool>(2);
    local_provider_options opts;
    opts.sandboxes_dir = sandboxes();
    opts.exec = pool_;
    prov_ = make_local_provider(opts);
  }

  void TearDown() override {
    // Whatever a test left behind is destroyed, so no sshd outlives it.
    auto all = list(installation_);
    if (all) {
      for (auto& vm : *all)
        EXPECT_FALSE(destroy(vm.vm_id));
    }
    EXPECT_TRUE(test::processes_matching(tmp_.path()).empty());
  }

  std::string sandboxes() const { return tmp_.path() + "/sandboxes"; }

  vm_request request(const std::string& installation_id = {}) {
    auto session = make_session_id();
    auto keys = make_session_keys(tmp_.path() + "/keys/" + session);
    EXPECT_TRUE(keys);
    keys_[session] = *keys;
    vm_request req;
    req.installation_id = installation_id.empty() ? installation_ : installation_id;
    req.session_id = session;
    req.idempotency_key = make_idempotency_key();
    req.client_public_key = keys->client_public_key;
    req.host_private_key = keys->host_private_key;
    req.host_public_key = keys->host_public_key;
    return req;
  }

  caf::expected<vm_info> create(const vm_request& req) {
    return test::await<vm_info>([&](auto cb) { prov_->create(req, cb); });
  }
  caf::expected<vm_info> wait_ready(const std::string& id) {
    return test::await<vm_info>([&](auto cb) { prov_->wait_ready(id, cb); });
  }
  caf::expected<vm_info> get(const std::string& id) {
    return test::await<vm_info>([&](auto cb) { prov_->get(id, cb); });
  }
  caf::expected<std::vector<vm_info>> list(const std::string& inst) {
    return test::await<std::vector<vm_info>>([&](auto cb) { prov_->list(inst, cb); });
  }
  caf::error destroy(const std::string& id) {
    return test::await_done([&](auto cb) { prov_->destroy(id, cb); });
  }

  ssh_endpoint endpoint(const vm_info& vm) {
    auto& keys = keys_.at(vm.session_id);
    return {vm.host, vm.port, vm.user, keys.client_key_path, keys.host_public_key};
  }

  pid_t sshd_pid(const vm_info& vm) {
    std::ifstream in{sandboxes() + "/" + vm.vm_id + "/sshd.pid"};
    pid_t pid = -1;
    in >> pid;
    return pid;
  }

  test::temp_dir tmp_;
  std::string installation_ = make_installation_id();
  std::shared_ptr<thread_pool> pool_;
  std::shared_ptr<provider> prov_;
  std::map<std::string, session_keys> keys_;
};

TEST_F(local_provider_test, create_lays_out_the_sandbox) {
  auto req = request();
  auto t0 = std::chrono::steady_clock::now();
  auto vm = create(req);
  ASSERT_TRUE(vm) << describe(vm.error());
  auto ready = wait_ready(vm->vm_id);
  ASSERT_TRUE(ready) << describe(ready.error());
  std::printf("[ measure ] create + wait_ready: %.1f ms\n",
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
  EXPECT_EQ(vm->vm_id.rfind("local-" + req.session_id + "-", 0), 0u);
  EXPECT_EQ(vm->vm_id.size(), std::string{"local-"}.size() + req.session_id.size() + 5);
  EXPECT_EQ(ready->status, vm_status::running);
  EXPECT_EQ(ready->host, "127.0.0.1");
  EXPECT_GT(ready->port, 0);
  EXPECT_FALSE(ready->user.empty());
  EXPECT_EQ(ready->installation_id, req.installation_id);
  EXPECT_EQ(ready->session_id, req.session_id);
  EXPECT_EQ(ready->idempotency_key, req.idempotency_key);
  auto dir = sandboxes() + "/" + vm->vm_id;
  EXPECT_EQ(ready->workdir, dir + "/work");
  EXPECT_EQ(mode_of(sandboxes()), 0700u);
  EXPECT_EQ(mode_of(dir), 0700u);
  EXPECT_EQ(mode_of(dir + "/host_key"), 0600u);
  EXPECT_EQ(mode_of(dir + "/authorized_keys"), 0600u);
  EXPECT_EQ(slurp(dir + "/host_key"), req.host_private_key);
  EXPECT_EQ(slurp(dir + "/authorized_keys"), req.client_public_key + "\n");
  for (auto name : {"sshd_config", "tags.json", "sshd.pid", "work", "aloft"})
    EXPECT_TRUE(exists(dir + "/" + name)) << name;
  EXPECT_FALSE(exists(dir + "/creating"));
  auto tags = json::parse(slurp(dir + "/tags.json"));
  ASSERT_TRUE(tags);
  EXPECT_EQ(tags->get_string("installation_id"), req.installation_id);
  EXPECT_EQ(tags->get_string("session_id"), req.session_id);
  EXPECT_EQ(tags->get_string("idempotency_key"), req.idempotency_key);
  EXPECT_EQ(tags->get_string("vm_id"), vm->vm_id);
  EXPECT_EQ(tags->get_int("port"), ready->port);
  // No secret on sshd's command line.
  auto cmd = slurp("/proc/" + std::to_string(sshd_pid(*ready)) + "/cmdline");
  EXPECT_EQ(cmd.find("PRIVATE"), std::string::npos);
}

TEST_F(local_provider_test, login_works_and_lands_in_a_shell_that_knows_its_sandbox) {
  auto vm = create(request());
  ASSERT_TRUE(vm);
  ASSERT_TRUE(wait_ready(vm->vm_id));
  ssh_io_loop loop;
  auto t = test::connect(loop, endpoint(*vm));
  ASSERT_TRUE(t) << describe(t.error());
  auto r = test::run(**t, "cd \"" + vm->workdir + "\" && pwd && echo $ALOFT_SANDBOX && id -un");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->exit_code, 0) << r->err;
  EXPECT_EQ(r->out, vm->workdir + "\n" + sandboxes() + "/" + vm->vm_id + "\n" + vm->user
                      + "\n");
}

TEST_F(local_provider_test, get_reports_running_stopped_gone) {
  auto vm = create(request());
  ASSERT_TRUE(vm);
  ASSERT_TRUE(wait_ready(vm->vm_id));
  auto running = get(vm->vm_id);
  ASSERT_TRUE(running);
  EXPECT_EQ(running->status, vm_status::running);
  auto pid = sshd_pid(*vm);
  ASSERT_GT(pid, 0);
  test::kill_process_tree(pid);
  ASSERT_TRUE(test::wait_until([&] { return !test::process_running(pid); }));
  auto stopped = get(vm->vm_id);
  ASSERT_TRUE(stopped);
  EXPECT_EQ(stopped->status, vm_status::stopped);
  EXPECT_EQ(stopped->session_id, vm->session_id) << "tags still read back";
  // get never revives a VM.
  EXPECT_FALSE(test::process_running(pid));
  auto w = wait_ready(vm->vm_id);
  ASSERT_FALSE(w);
  EXPECT_EQ(code_of(w.error()), errc::failed_precondition);
  EXPECT_FALSE(destroy(vm->vm_id));
  auto gone = get(vm->vm_id);
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->status, vm_status::gone);
  auto unknown = get("local-s-000000000000-0000");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, vm_status::gone);
  auto bad = get("../etc");
  ASSERT_FALSE(bad);
  EXPECT_EQ(code_of(bad.error()), errc::invalid_argument);
  auto missing = wait_ready("local-s-000000000000-0000");
  ASSERT_FALSE(missing);
  EXPECT_EQ(code_of(missing.error()), errc::not_found);
}

TEST_F(local_provider_test, list_finds_vms_by_installation_id_only) {
  auto other_installation = make_installation_id();
  auto a1 = create(request());
  auto a2 = create(request());
  auto b1 = create(request(other_installation));
  ASSERT_TRUE(a1 && a2 && b1);
  auto mine = list(installation_);
  ASSERT_TRUE(mine);
  std::set<std::string> ids;
  for (auto& vm : *mine)
    ids.insert(vm.vm_id);
  EXPECT_EQ(ids, (std::set<std::string>{a1->vm_id, a2->vm_id}));
  auto theirs = list(other_installation);
  ASSERT_TRUE(theirs);
  ASSERT_EQ(theirs->size(), 1u);
  EXPECT_EQ(theirs->front().vm_id, b1->vm_id);
  EXPECT_EQ(theirs->front().idempotency_key, b1->idempotency_key);
  auto nobody = list(make_installation_id());
  ASSERT_TRUE(nobody);
  EXPECT_TRUE(nobody->empty());
  EXPECT_FALSE(destroy(b1->vm_id));
}

TEST_F(local_provider_test, create_with_the_same_idempotency_key_makes_one_vm) {
  auto req = request();
  auto first = create(req);
  auto second = create(req);
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->vm_id, second->vm_id);
  auto all = list(installation_);
  ASSERT_TRUE(all);
  EXPECT_EQ(all->size(), 1u);
}

TEST_F(local_provider_test, destroy_leaves_no_process_and_no_directory) {
  auto vm = create(request());
  ASSERT_TRUE(vm);
  ASSERT_TRUE(wait_ready(vm->vm_id));
  auto dir = sandboxes() + "/" + vm->vm_id;
  // An agent as the engine starts it: detached, in its own session, under
  // tmux with its socket in the sandbox, plus a stray child in the worktree.
  ssh_io_loop loop;
  auto t = test::connect(loop, endpoint(*vm));
  ASSERT_TRUE(t);
  auto r = test::run(**t, "cd \"" + vm->workdir + "\" && "
                          "tmux -S \"" + dir + "/aloft/tmux.sock\" new-session -d 'sleep 600' && "
                          "(setsid sleep 601 </dev/null >/dev/null 2>&1 &) && echo ok");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->out, "ok\n") << r->err;
  // Read-only directories, as some tools leave behind, are removed too.
  auto r2 = test::run(**t, "mkdir -p \"" + vm->workdir + "/ro/sub\" && touch \"" + vm->workdir
                             + "/ro/sub/f\" && chmod 0500 \"" + vm->workdir + "/ro/sub\" \""
                             + vm->workdir + "/ro\"");
  ASSERT_TRUE(r2);
  ASSERT_EQ(r2->exit_code, 0) << r2->err;
  ASSERT_TRUE(test::wait_until([&] { return !test::processes_matching("sleep 60").empty(); }));
  auto pid = sshd_pid(*vm);
  auto t0 = std::chrono::steady_clock::now();
  auto err = destroy(vm->vm_id);
  ASSERT_FALSE(err) << describe(err);
  std::printf("[ measure ] destroy with agent processes: %.1f ms\n",
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
  EXPECT_FALSE(exists(dir));
  EXPECT_FALSE(test::process_running(pid));
  EXPECT_TRUE(test::processes_matching(dir).empty());
  EXPECT_TRUE(test::processes_matching("sleep 600").empty());
  EXPECT_TRUE(test::processes_matching("sleep 601").empty());
  EXPECT_TRUE(test::wait_until([&] { return !(*t)->is_open(); }));
  // Destroying what is gone succeeds.
  EXPECT_FALSE(destroy(vm->vm_id));
  auto gone = get(vm->vm_id);
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->status, vm_status::gone);
}

TEST_F(local_provider_test, sshd_outlives_the_process_that_created_it) {
  auto req = request();
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The "engine" that creates the VM, then dies at once.
    ::close(fds[0]);
    local_provider_options opts;
    opts.sandboxes_dir = sandboxes();
    opts.exec = std::make_shared<inline_executor>();
    auto prov = make_local_provider(opts);
    std::string id;
    prov->create(req, [&](caf::expected<vm_info> vm) {
      if (vm)
        id = vm->vm_id;
    });
    auto n = ::write(fds[1], id.data(), id.size());
    ::_exit(n == static_cast<ssize_t>(id.size()) && !id.empty() ? 0 : 1);
  }
  ::close(fds[1]);
  std::string id;
  char buf[256];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof(buf))) > 0)
    id.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_FALSE(id.empty());
  auto vm = wait_ready(id);
  ASSERT_TRUE(vm) << describe(vm.error());
  EXPECT_EQ(vm->status, vm_status::running);
  // sshd is not our child: it was re-parented when its creator died.
  auto stat = slurp("/proc/" + std::to_string(sshd_pid(*vm)) + "/stat");
  auto fields = stat.substr(stat.rfind(')') + 2);
  auto ppid = std::stol(fields.substr(2));
  EXPECT_NE(ppid, ::getpid());
  EXPECT_NE(ppid, child);
  ssh_io_loop loop;
  auto t = test::connect(loop, endpoint(*vm));
  ASSERT_TRUE(t) << describe(t.error());
  auto r = test::run(**t, "echo alive");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->out, "alive\n");
}

// Regression: the provider's work held the executor through the options, so
// a provider dropped while its work was queued made the pool's own thread
// destroy (and try to join) the pool.
TEST_F(local_provider_test, provider_dropped_with_work_queued_does_not_make_the_pool_join_itself) {
  auto done = std::make_shared<test::slot<bool>>();
  {
    local_provider_options opts;
    opts.sandboxes_dir = sandboxes();
    opts.exec = pool_;
    auto prov = make_local_provider(opts);
    prov->get("local-s-000000000000-0000", [done](caf::expected<vm_info> vm) {
      done->set(vm && vm->status == vm_status::gone);
    });
  }
  auto r = done->take();
  ASSERT_TRUE(r);
  EXPECT_TRUE(*r);
}

// The engine may run as any user: sshd then runs unprivileged and can log in
// only as that user. Run the whole flow in a child that became another user.
TEST_F(local_provider_test, login_works_for_a_non_root_user) {
  if (::geteuid() != 0)
    GTEST_SKIP() << "needs root to become another user";
  uid_t uid = 0;
  gid_t gid = 0;
  std::string name;
  ::setpwent();
  while (auto pw = ::getpwent()) {
    std::string shell = pw->pw_shell ? pw->pw_shell : "";
    if (pw->pw_uid != 0 && (shell == "/bin/bash" || shell == "/bin/sh")
        && ::access(shell.c_str(), X_OK) == 0) {
      uid = pw->pw_uid;
      gid = pw->pw_gid;
      name = pw->pw_name;
      break;
    }
  }
  ::endpwent();
  if (name.empty())
    GTEST_SKIP() << "no non-root user with a login shell";
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0)
      ::_exit(10);
    char root[] = "/tmp/aloft-nonroot-XXXXXX";
    if (::mkdtemp(root) == nullptr)
      ::_exit(11);
    int code = 0;
    {
      auto keys = make_session_keys(std::string{root} + "/keys");
      local_provider_options opts;
      opts.sandboxes_dir = std::string{root} + "/sandboxes";
      opts.exec = std::make_shared<inline_executor>();
      auto prov = make_local_provider(opts);
      vm_request req;
      req.installation_id = "i-nonroot";
      req.session_id = make_session_id();
      req.idempotency_key = make_idempotency_key();
      if (keys) {
        req.client_public_key = keys->client_public_key;
        req.host_private_key = keys->host_private_key;
        req.host_public_key = keys->host_public_key;
      }
      caf::expected<vm_info> vm = make_error(errc::unknown, "not run");
      prov->create(req, [&](caf::expected<vm_info> x) { vm = std::move(x); });
      if (vm)
        prov->wait_ready(vm->vm_id, [&](caf::expected<vm_info> x) { vm = std::move(x); });
      if (!keys || !vm) {
        std::fprintf(stderr, "non-root create: %s\n",
                     describe(keys ? vm.error() : keys.error()).c_str());
        code = 12;
      } else {
        ssh_io_loop loop;
        auto t = test::connect(loop, {vm->host, vm->port, vm->user, keys->client_key_path,
                                      keys->host_public_key});
        auto r = t ? test::run(**t, "id -un") : std::nullopt;
        if (!t)
          std::fprintf(stderr, "non-root connect: %s\n", describe(t.error()).c_str());
        if (!r || r->out != name + "\n" || vm->user != name)
          code = 13;
      }
      if (vm)
        prov->destroy(vm->vm_id, [&](caf::error err) {
          if (err)
            code = 14;
        });
    }
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "as user " << name;
}

TEST_F(local_provider_test, create_without_sshd_says_so) {
  local_provider_options opts;
  opts.sandboxes_dir = sandboxes();
  opts.exec = pool_;
  opts.sshd_path = "/nonexistent/sshd";
  auto prov = make_local_provider(opts);
  auto vm = test::await<vm_info>([&](auto cb) { prov->create(request(), cb); });
  ASSERT_FALSE(vm);
  EXPECT_EQ(code_of(vm.error()), errc::failed_precondition);
  EXPECT_NE(message_of(vm.error()).find("/nonexistent/sshd"), std::string::npos);
}

TEST_F(local_provider_test, create_rejects_malformed_requests) {
  auto req = request();
  req.session_id = "../../etc";
  auto vm = create(req);
  ASSERT_FALSE(vm);
  EXPECT_EQ(code_of(vm.error()), errc::invalid_argument);
  auto all = list(installation_);
  ASSERT_TRUE(all);
  EXPECT_TRUE(all->empty());
}

} // namespace
} // namespace aloft

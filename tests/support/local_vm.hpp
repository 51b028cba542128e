// Test support for suites that need a real VM: a local sandbox (real sshd on
// loopback) started and destroyed by the test itself, plus small helpers for
// waiting on asynchronous callbacks and on real processes.
//
// Why: the SSH transport and the local provider are tested end to end
// against OpenSSH's sshd; every test starts its own sandbox under its own
// temporary directory and removes it, so tests never share state.
//
// Concurrency: helpers block the calling (test) thread; callbacks of the
// provider and of the transport run on their own threads and hand results
// over through the slots below.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <sys/types.h>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "engine/base/error.hpp"
#include "engine/executor.hpp"
#include "engine/keys.hpp"
#include "engine/transport.hpp"
#include "providers/provider.hpp"

namespace aloft::test {

using namespace std::chrono_literals;

/// A fresh 0700 directory under $TMPDIR (or /tmp), removed with its contents.
class temp_dir {
public:
  temp_dir();
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::string& path() const { return path_; }

private:
  std::string path_;
};

/// Polls `pred` (every millisecond) until it holds or `bound` passes; returns
/// its last value. For conditions on real processes and sockets only.
bool wait_until(const std::function<bool()>& pred,
                std::chrono::milliseconds bound = 10000ms);

/// A value delivered once by another thread.
template <class T>
class slot {
public:
  void set(T value) {
    std::lock_guard<std::mutex> guard{mtx_};
    value_ = std::move(value);
    cv_.notify_all();
  }
  /// Waits up to `bound`; nullopt on timeout.
  std::optional<T> take(std::chrono::milliseconds bound = 30000ms) {
    std::unique_lock<std::mutex> guard{mtx_};
    if (!cv_.wait_for(guard, bound, [&] { return value_.has_value(); }))
      return std::nullopt;
    auto out = std::move(value_);
    value_.reset();
    return out;
  }

private:
  std::mutex mtx_;
  std::condition_variable cv_;
  std::optional<T> value_;
};

/// Runs an asynchronous provider call and waits for its callback.
template <class T, class Start>
caf::expected<T> await(Start&& start, std::chrono::milliseconds bound = 30000ms) {
  auto s = std::make_shared<slot<caf::expected<T>>>();
  start([s](caf::expected<T> x) { s->set(std::move(x)); });
  auto r = s->take(bound);
  if (!r)
    return make_error(errc::deadline_exceeded, "test: no callback in time");
  return std::move(*r);
}

template <class Start>
caf::error await_done(Start&& start, std::chrono::milliseconds bound = 30000ms) {
  auto s = std::make_shared<slot<caf::error>>();
  start([s](caf::error x) { s->set(std::move(x)); });
  auto r = s->take(bound);
  if (!r)
    return make_error(errc::deadline_exceeded, "test: no callback in time");
  return std::move(*r);
}

/// The number of threads of this process (/proc/self/task).
size_t thread_count();

/// Whether `pid` runs (and is not a zombie).
bool process_running(pid_t pid);

/// SIGKILLs `pid` and all its descendants: a VM that dies at once.
void kill_process_tree(pid_t pid);

/// Pids of live processes whose command line contains `needle`.
std::vector<pid_t> processes_matching(const std::string& needle);

/// What a finished command produced.
struct exec_result {
  std::string out;
  std::string err;
  caf::error error;
  int exit_code = -1;
};

/// Runs `command` on `t` and waits for it to end.
std::optional<exec_result> run(transport& t, const std::string& command,
                               std::chrono::milliseconds bound = 30000ms);

/// Connects and waits.
caf::expected<std::shared_ptr<transport>>
connect(transport_factory& f, const ssh_endpoint& ep, std::chrono::milliseconds bound = 30000ms);

/// A local sandbox for one test: keys, provider, a created and ready VM.
class local_vm {
public:
  /// Creates the VM under `root` (keys in root/keys, sandboxes in
  /// root/sandboxes) and waits until sshd answers.
  static caf::expected<std::unique_ptr<local_vm>>
  start(const std::string& root, const std::string& installation_id = "i-test");

  /// Destroys the VM if the test did not.
  ~local_vm();

  provider& prov() { return *provider_; }
  const session_keys& keys() const { return keys_; }
  const vm_info& info() const { return info_; }
  std::string sandbox_dir() const;
  /// The pid in the sandbox's sshd.pid, or -1.
  pid_t sshd_pid() const;
  /// Endpoint with the pinned host key and the session's client key.
  ssh_endpoint endpoint() const;
  caf::error destroy();

private:
  local_vm() = default;
  std::string root_;
  std::shared_ptr<thread_pool> pool_;
  std::shared_ptr<provider> provider_;
  session_keys keys_;
  vm_info info_;
  bool destroyed_ = false;
};

} // namespace aloft::test

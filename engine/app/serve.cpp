#include "engine/app/serve.hpp"

#include <atomic>
#include <csignal>
#include <iostream>
#include <unistd.h>

#include "engine/app/api.hpp"
#include "engine/app/daemon.hpp"
#include "engine/app/protocol.hpp"
#include "engine/base/error.hpp"
#include "engine/base/redact.hpp"
#include "engine/home.hpp"

namespace aloft {

namespace {

// The daemon a signal stops. A signal handler can reach nothing else.
std::atomic<daemon*> signal_target{nullptr};

extern "C" void on_stop_signal(int) {
  if (auto d = signal_target.load())
    d->stop(); // async-signal-safe: an atomic store and a write(2)
}

extern "C" void on_reload_signal(int) {
  if (auto d = signal_target.load())
    d->reload(); // the same: an atomic store and a write(2)
}

int fail(const cli_command& cmd, std::ostream& out, std::ostream& err,
         const caf::error& e) {
  if (cmd.json) {
    auto j = json::object();
    j.set("error", json::object()
                     .set("code", to_string(code_of(e)))
                     .set("message", message_of(e)));
    out << encode_line(j) << std::flush;
  } else {
    err << "aloft serve: " << message_of(e) << "\n";
  }
  return exit_code_for(code_of(e));
}

} // namespace

int run_serve(const cli_command& cmd, std::ostream& out, std::ostream& err) {
  auto layout = resolve_home(cmd.home);
  auto socket = layout.socket_path();
  // Look for a running daemon before opening the engine: its store lock
  // would otherwise fail with a less helpful message.
  if (auto probe = connect_unix_socket(socket)) {
    ::close(*probe);
    return fail(cmd, out, err,
                make_error(errc::already_exists,
                           "a daemon is already running for this home (it answers on "
                             + socket + ")"));
  }
  if (auto e = create_home(layout))
    return fail(cmd, out, err, e);
  engine_options opts;
  opts.home = cmd.home;
  auto eng = open_engine(opts);
  if (!eng)
    return fail(cmd, out, err, annotate(eng.error(), "cannot open the engine"));
  daemon_options dopts;
  dopts.log = [&err](const std::string& line) {
    err << "aloft serve: " << redact(line) << "\n";
  };
  daemon d{**eng, socket, dopts};
  if (auto e = d.listen())
    return fail(cmd, out, err, e);

  signal_target.store(&d);
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {}, old_pipe {}, old_hup {};
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);
  struct sigaction hup {};
  hup.sa_handler = on_reload_signal;
  sigemptyset(&hup.sa_mask);
  ::sigaction(SIGHUP, &hup, &old_hup);
  // A client that goes away mid-reply must not kill the daemon (sends use
  // MSG_NOSIGNAL; this covers anything else that writes to a socket).
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  ::sigaction(SIGPIPE, &ignore, &old_pipe);

  if (cmd.json) {
    auto j = json::object();
    j.set("socket", socket).set("home", layout.data_dir).set("protocol", protocol_version);
    out << encode_line(j) << std::flush;
  } else {
    out << "aloft: serving on " << socket << " (home " << layout.data_dir
        << "); stop with Ctrl-C or SIGTERM, reload settings with SIGHUP" << std::endl;
  }
  auto result = d.run();

  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  ::sigaction(SIGPIPE, &old_pipe, nullptr);
  ::sigaction(SIGHUP, &old_hup, nullptr);
  signal_target.store(nullptr);
  if (result)
    return fail(cmd, out, err, result);
  return exit_codes::ok;
}

} // namespace aloft

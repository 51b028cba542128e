// Sync: the local provider (a real sshd on loopback) and a generated tree,
// each figure beside what plain tools do with the same files over the same
// sshd in the same run:
//   - the initial sync up against `tar c | ssh tar x` and `rsync -a`;
//   - a one-file incremental sync up against `rsync -a` of the tree with
//     that one file changed (rsync's own incremental case);
//   - a sync down of 100 files the agent changed.
// Each run is one session: launched (its initial sync), then the baselines,
// then the incremental sync and the sync down on it.
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sys/stat.h>

#include "bench/harness.hpp"
#include "bench/scenarios.hpp"
#include "engine/base/error.hpp"

namespace aloft::bench {

namespace {

int run_shell(const std::string& cmd) {
  return std::system(("sh -c '" + cmd + "' > /dev/null 2>&1").c_str());
}

// A tree of `files` files and about `bytes` bytes of text, committed and
// packed, as a clone leaves a repository. The commit is made with
// fast-import, straight into a pack: `git add` would leave loose objects for
// a gc to delete, and deleting many files here slows every file written for
// seconds afterwards (the first initial sync, never the baseline). Then the
// pack is made again with a full delta search, as the server of a clone
// makes it: fast-import stores each blob as a delta of the one before it
// whatever they share (here 98 % of the blobs, in chains of up to 50, which
// every checkout then has to unwind), where the search finds no delta
// between these files worth keeping.
void generate_tree(const std::string& dir, size_t files, size_t bytes) {
  std::mt19937 rng{7};
  const char* words[] = {"int", "return", "value", "struct", "for", "while", "session",
                         "actor", "engine", "sync", "const", "auto", "std::string", "{", "}"};
  auto per_file = bytes / files;
  std::string stream, tree;
  for (size_t i = 0; i < files; ++i) {
    auto rel = "d" + std::to_string(i % 100) + "/f" + std::to_string(i) + ".txt";
    ::mkdir((dir + "/d" + std::to_string(i % 100)).c_str(), 0755);
    std::string text;
    text.reserve(per_file + 64);
    while (text.size() < per_file) {
      text += words[rng() % 15];
      text += (rng() % 8 == 0) ? '\n' : ' ';
      if (rng() % 64 == 0)
        text += std::to_string(rng());
    }
    std::ofstream{dir + "/" + rel} << text;
    stream += "blob\nmark :" + std::to_string(i + 1) + "\ndata " + std::to_string(text.size())
              + "\n" + text + "\n";
    tree += "M 100644 :" + std::to_string(i + 1) + " " + rel + "\n";
  }
  stream += "commit refs/heads/main\ncommitter b <b@b> 1700000000 +0000\ndata 4\ntree\n" + tree;
  run_shell("cd " + dir + " && git init -q -b main");
  auto import = ::popen(("cd " + dir + " && git fast-import --quiet").c_str(), "w");
  if (import) {
    std::fwrite(stream.data(), 1, stream.size(), import);
    ::pclose(import);
  }
  run_shell("cd " + dir + " && git repack -a -d -f -q");
  // The index from HEAD, with the files' stat data (hashing each once).
  run_shell("cd " + dir + " && git reset -q");
}

// Runs `cmd` and returns how long it took, or -1 when it failed.
double timed_shell(const std::string& cmd) {
  auto t0 = clock_type::now();
  if (run_shell(cmd) != 0)
    return -1;
  return seconds_since(t0);
}

// The first sync of each session, from its first event to "synced up".
class initial_sync_spans {
public:
  void on(const event& ev, bool trace) {
    if (ev.kind != "sync")
      return;
    if (trace)
      std::fprintf(stderr, "%lld %s\n", static_cast<long long>(ev.at_ms), ev.message.c_str());
    std::lock_guard<std::mutex> guard{mtx_};
    auto& span = spans_[ev.session];
    if (span.second != 0)
      return; // only the first sync of a session
    if (span.first == 0)
      span.first = ev.at_ms;
    if (ev.message.rfind("up: synced up", 0) == 0)
      span.second = ev.at_ms;
  }

  // Seconds, or -1 while the session's first sync has not ended.
  double of(const std::string& session) {
    std::lock_guard<std::mutex> guard{mtx_};
    auto i = spans_.find(session);
    if (i == spans_.end() || i->second.second < i->second.first || i->second.second == 0)
      return -1;
    return static_cast<double>(i->second.second - i->second.first) / 1000.0;
  }

private:
  std::mutex mtx_;
  std::map<std::string, std::pair<int64_t, int64_t>> spans_;
};

} // namespace

void sync_scenario(report& out, const sync_options& o) {
  const std::string scenario = "sync";
  if (run_shell("rsync --version") != 0) {
    out.check(false, "sync: rsync is not installed (scripts/setup installs it)");
    return;
  }
  auto home = temp_home();
  auto wt = home + "/worktree";
  ::mkdir(wt.c_str(), 0755);
  generate_tree(wt, o.files, o.bytes);
  auto aloft_home = home + "/aloft";
  auto e = open_local_engine(aloft_home, static_cast<size_t>(o.runs));
  if (!e) {
    out.check(false, "open engine: " + describe(e.error()));
    remove_tree(home);
    return;
  }
  auto& eng = **e;
  // ALOFT_BENCH_TRACE=1 prints every sync event with its time, to see
  // where a sync spends it.
  bool trace = std::getenv("ALOFT_BENCH_TRACE") != nullptr;
  auto spans = std::make_shared<initial_sync_spans>();
  auto sub = eng.subscribe([spans, trace](const event& ev) { spans->on(ev, trace); });
  auto size = " (" + std::to_string(o.files) + " files, "
              + std::to_string(o.bytes >> 20) + " MiB)";
  for (int run = 0; run < o.runs; ++run) {
    launch_request req;
    req.agent_cmd = "sleep 3600";
    req.worktree = wt;
    auto t0 = clock_type::now();
    auto rec = eng.launch(req);
    if (!rec) {
      out.check(false, "sync: launch failed: " + describe(rec.error()));
      break;
    }
    session_record live;
    bool up = wait_for([&] {
      auto v = eng.show(rec->id);
      if (v && v->record.state == session_state::running) {
        live = v->record;
        return true;
      }
      return v && is_terminal(v->record.state);
    }, 300);
    auto launch_s = seconds_since(t0);
    out.check(up && !live.synced_up.empty(),
              "sync: the initial sync did not happen: " + describe_states(eng, session_state::running));
    if (!up || live.synced_up.empty())
      break;
    double sync_s = -1;
    wait_for([&] { return (sync_s = spans->of(live.id)) >= 0; }, 10);
    out.check(sync_s >= 0, "sync: the initial sync's events are missing");

    // Baselines: the same files over the same sshd, as the same user.
    auto key = aloft_home + "/keys/" + live.id + "/client";
    auto ssh_opts = "-i " + key + " -p " + std::to_string(live.port)
                    + " -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                      " -o LogLevel=ERROR";
    auto remote = live.user + "@127.0.0.1";
    auto tar_dir = live.workdir + "-tar";
    auto rsync_dir = live.workdir + "-rsync";
    auto tar_s = timed_shell("tar c -C " + wt + " --exclude=.git . | ssh " + ssh_opts + " "
                             + remote + " \"mkdir -p " + tar_dir + " && tar x -C " + tar_dir
                             + "\"");
    auto rsync = "rsync -a --exclude=/.git -e \"ssh " + ssh_opts + "\" " + wt + "/ " + remote
                 + ":";
    auto rsync_s = timed_shell(rsync + rsync_dir + "/");
    out.check(tar_s > 0 && rsync_s > 0, "sync: a baseline (tar or rsync over ssh) failed");

    // One changed file: rsync's incremental run, then ours on the open session.
    std::ofstream{wt + "/d0/f0.txt", std::ios::app} << "one more line " << run << "\n";
    auto rsync_inc_s = timed_shell(rsync + rsync_dir + "/");
    t0 = clock_type::now();
    auto inc = eng.sync_up(live.id);
    auto inc_s = seconds_since(t0);
    out.check(bool(inc), "sync: incremental sync up failed");
    out.check(!inc || inc->bytes < 64 * 1024, "sync: one changed file sent more than 64 KiB");

    // 100 files changed by the agent, brought down.
    for (int i = 0; i < 100; ++i)
      std::ofstream{live.workdir + "/d" + std::to_string(i % 100) + "/f"
                      + std::to_string(i + 100) + ".txt",
                    std::ios::app}
        << "agent edit " << run << "\n";
    t0 = clock_type::now();
    auto dn = eng.sync_down({live.id, sync_down_mode::apply, {}});
    auto down_s = seconds_since(t0);
    out.check(dn && dn->changed.size() >= 100, "sync: sync down of 100 files failed");
    run_shell("cd " + wt + " && git -c user.name=b -c user.email=b@b commit -qam next");

    if (sync_s > 0 && tar_s > 0) {
      out.add({scenario, "initial sync up (snapshot to checkout), vs tar | ssh" + size, sync_s,
               "s", tar_s, {ratio_at_most(1.3)}});
      out.add({scenario, "initial sync up, vs rsync -a over ssh" + size, sync_s, "s",
               rsync_s});
      out.add({scenario, "launch to running with the initial sync, vs tar | ssh", launch_s,
               "s", tar_s});
    }
    out.add({scenario, "one-file incremental sync up, vs rsync -a", inc_s * 1000, "ms",
             rsync_inc_s > 0 ? rsync_inc_s * 1000 : 0, {at_most(150)}});
    out.add({scenario, "bytes sent by the one-file incremental sync up",
             inc ? static_cast<double>(inc->bytes) : 0, "B"});
    out.add({scenario, "sync down of 100 changed files", down_s * 1000, "ms", 0,
             {at_most(300)}});
  }
  // Every VM lives until the end: removing a 200 MB sandbox between runs
  // would slow whatever writes files next (here, deleting many files makes
  // creating files slower for seconds afterwards), and that would be the
  // next initial sync, never the baseline.
  // Every VM gone before the engine closes, or the bench would leave them.
  out.check(destroy_all(eng, 60), "sync: not every session was destroyed: "
                    + describe_states(eng, session_state::destroyed));
  eng.unsubscribe(sub);
  e->reset();
  remove_tree(home);
}

} // namespace aloft::bench

#include "engine/agent_script.hpp"

#include <cstdlib>
#include <sstream>
#include <vector>

namespace aloft {

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  out += '\'';
  return out;
}

std::string agent_state_dir(const std::string& workdir) {
  auto pos = workdir.find_last_of('/');
  if (pos == std::string::npos || pos == 0)
    return "/aloft";
  return workdir.substr(0, pos) + "/aloft";
}

namespace {

// The runner: records its pid (it is a session leader, so the pid is the
// SID of the agent's whole process tree) and the agent's exit code.
const char* runner_script = R"(cd "$W" || { echo 127 > "$S/exit"; exit 1; }
echo $$ > "$S/pid"
if [ -f "$S/agent.env" ]; then set -a; . "$S/agent.env"; set +a; rm -f "$S/agent.env"; fi
if [ -n "$ALOFT_TMUX" ]; then
  ( sh "$S/agent.sh"; echo $? > "$S/exit.tmp"; mv "$S/exit.tmp" "$S/exit" ) 2>&1 | tee -a "$S/agent.log"
else
  ( sh "$S/agent.sh"; echo $? > "$S/exit.tmp"; mv "$S/exit.tmp" "$S/exit" ) >> "$S/agent.log" 2>&1 < /dev/null
fi
)";

} // namespace

std::string agent_launch_command(const std::string& workdir) {
  auto state = agent_state_dir(workdir);
  auto run = state + "/run.sh";
  // The runner gets its paths baked in, so the tmux command line stays one
  // quoted word.
  std::ostringstream cmd;
  cmd << "S=" << shell_quote(state) << "; W=" << shell_quote(workdir)
      << "; mkdir -p \"$S\" \"$W\" || exit 1; "
      << "if [ -e \"$S/started\" ]; then cat > /dev/null; echo already-started; exit 0; fi; "
      << "cat > \"$S/agent.sh\" || exit 1; "
      << "cat > \"$S/run.sh\" <<'ALOFT_RUNNER'\n"
      << "S=" << shell_quote(state) << "\nW=" << shell_quote(workdir) << "\n"
      << runner_script << "ALOFT_RUNNER\n"
      << "touch \"$S/agent.log\"; "
      << "if command -v tmux > /dev/null 2>&1; then "
      << "tmux -S \"$S/tmux.sock\" new-session -d -s aloft -x 160 -y 48 "
      << shell_quote("ALOFT_TMUX=1 exec sh " + shell_quote(run)) << " || exit 1; "
      // Keep the terminal after the agent exits, so attach still shows how
      // it ended; destroy ends the tmux server.
      << "tmux -S \"$S/tmux.sock\" set-option -t aloft remain-on-exit on > /dev/null 2>&1; "
      << "else setsid sh \"$S/run.sh\" < /dev/null > /dev/null 2>&1 & fi; "
      << "touch \"$S/started\"; echo started";
  return cmd.str();
}

std::string agent_deadline_command(const std::string& workdir, int64_t deadline_s) {
  auto state = shell_quote(agent_state_dir(workdir));
  return "S=" + state + "; mkdir -p \"$S\" && echo " + std::to_string(deadline_s)
         + " > \"$S/deadline.tmp\" && mv \"$S/deadline.tmp\" \"$S/deadline\"";
}

std::string agent_env_command(const std::string& workdir) {
  auto state = shell_quote(agent_state_dir(workdir));
  // An agent already started has its secrets; a file written now would
  // outlive it (the runner that deletes it does not run again).
  return "S=" + state + "; umask 077; mkdir -p \"$S\" || exit 1; "
         "if [ -e \"$S/started\" ]; then cat > /dev/null; exit 0; fi; "
         "cat > \"$S/agent.env.tmp\" && mv \"$S/agent.env.tmp\" \"$S/agent.env\"";
}

std::string agent_env_file(const std::vector<std::pair<std::string, std::string>>& vars) {
  std::string out;
  for (auto& [name, value] : vars)
    out += "export " + name + "=" + shell_quote(value) + "\n";
  return out;
}

bool is_env_name(const std::string& name) {
  if (name.empty() || name.size() > 128 || (name[0] >= '0' && name[0] <= '9'))
    return false;
  for (char c : name)
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
          || c == '_'))
      return false;
  return true;
}

std::string agent_tail_command(const std::string& workdir, uint64_t offset) {
  auto s = shell_quote(agent_state_dir(workdir) + "/agent.log");
  return "exec tail -c +" + std::to_string(offset + 1) + " -F " + s + " 2>/dev/null";
}

std::string agent_status_command(const std::string& workdir, int interval_s) {
  auto s = shell_quote(agent_state_dir(workdir));
  std::ostringstream cmd;
  cmd << "S=" << s << "; while :; do "
      << "e=$(cat \"$S/exit\" 2>/dev/null); [ -n \"$e\" ] || e=-; "
      << "z=$(wc -c < \"$S/agent.log\" 2>/dev/null); [ -n \"$z\" ] || z=0; "
      << "a=$(tmux -S \"$S/tmux.sock\" display -p -t aloft '#{session_activity}' 2>/dev/null); "
      << "[ -n \"$a\" ] || a=0; "
      << "p=$(cat \"$S/pid\" 2>/dev/null); [ -n \"$p\" ] || p=0; "
      << "c=$(cat /proc/[0-9]*/stat 2>/dev/null | awk -v s=\"$p\" "
         "'$6==s {t+=$14+$15} END {print t+0}'); "
      << "echo \"S $e $z $a $c\"; "
      << "[ \"$e\" = - ] || exit 0; sleep " << interval_s << "; done";
  return cmd.str();
}

std::string agent_stop_command(const std::string& workdir) {
  auto s = shell_quote(agent_state_dir(workdir));
  return "S=" + s + "; p=$(cat \"$S/pid\" 2>/dev/null); "
         "if [ -n \"$p\" ]; then kill -TERM -- -\"$p\" 2>/dev/null; fi; "
         "tmux -S \"$S/tmux.sock\" kill-server 2>/dev/null; "
         "[ -e \"$S/exit\" ] || echo 143 > \"$S/exit\"; echo stopped";
}

std::string agent_attach_command(const std::string& workdir) {
  auto s = shell_quote(agent_state_dir(workdir) + "/tmux.sock");
  return "exec tmux -S " + s + " attach -t aloft";
}

std::optional<agent_probe> parse_agent_probe(const std::string& line) {
  std::istringstream in{line};
  std::string tag, exit_code, size, activity, cpu, extra;
  if (!(in >> tag >> exit_code >> size >> activity >> cpu) || tag != "S" || (in >> extra))
    return std::nullopt;
  auto parse_u64 = [](const std::string& s, uint64_t& out) {
    if (s.empty() || s.size() > 19)
      return false;
    for (char c : s)
      if (c < '0' || c > '9')
        return false;
    out = std::strtoull(s.c_str(), nullptr, 10);
    return true;
  };
  agent_probe p;
  uint64_t v = 0;
  if (exit_code != "-") {
    if (!parse_u64(exit_code, v) || v > 255)
      return std::nullopt;
    p.exit_code = static_cast<int>(v);
  }
  if (!parse_u64(size, p.log_size) || !parse_u64(activity, v) || !parse_u64(cpu, p.cpu_ticks))
    return std::nullopt;
  p.terminal_activity = static_cast<int64_t>(v);
  return p;
}

} // namespace aloft

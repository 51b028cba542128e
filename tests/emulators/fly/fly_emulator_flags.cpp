#include "tests/emulators/fly/fly_emulator_flags.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "engine/base/error.hpp"

namespace aloft::test {

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    auto end = s.find(sep, start);
    out.push_back(
        s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos)
      return out;
    start = end + 1;
  }
}

bool to_int(const std::string& s, long long lo, long long hi, long long& out) {
  if (s.empty() || s.size() > 18
      || s.find_first_not_of("0123456789") != std::string::npos)
    return false;
  out = std::stoll(s);
  return out >= lo && out <= hi;
}

bool known_op(const std::string& op) {
  auto& ops = fly_ops();
  return op == "any" || std::find(ops.begin(), ops.end(), op) != ops.end();
}

} // namespace

std::string fly_emulator_usage() {
  return "usage: fly-emulator [--port P] [--token T] [--org SLUG] [--region R]\n"
         "                    [--sandboxes DIR] [--boot-delay-ms N] [--rate-limit]\n"
         "                    [--fault-rate F --seed S] [--log]\n"
         "                    [--fail OP:N:STATUS[:RETRY_AFTER_S]] [--fail-after "
         "OP:N:STATUS]\n"
         "                    [--reset OP:N] [--reset-after OP:N] [--malformed OP:N]\n"
         "                    [--create-timeout N] [--capacity N[:STATUS]]\n"
         "                    [--stuck-starting N] [--token-expires-after N]\n"
         "                    [--empty-list N] [--taken-app NAME]\n"
         "Serves the Fly Machines API on 127.0.0.1 (prints its base URL on one line)\n"
         "until SIGINT or SIGTERM, then destroys every machine's sandbox. The token\n"
         "may come from FLY_EMULATOR_TOKEN. OP is an operation (tokens_current,\n"
         "apps_create, apps_get, apps_list, apps_delete, ips_list, ips_create,\n"
         "ips_delete, machines_create, machines_list, machines_get, machines_delete,\n"
         "machines_start, machines_stop, machines_wait) or any.\n";
}

caf::expected<fly_emulator_cli>
parse_fly_emulator_flags(const std::vector<std::string>& args,
                         const std::string& env_token) {
  fly_emulator_cli cli;
  cli.options.token = env_token;
  bool seen_token = !env_token.empty();
  for (size_t i = 0; i < args.size(); ++i) {
    auto flag = args[i];
    auto bad = [&](const std::string& why) {
      return make_error(errc::invalid_argument, flag + ": " + why);
    };
    if (flag == "-h" || flag == "--help") {
      cli.help = true;
      continue;
    }
    if (flag == "--rate-limit") {
      cli.options.rate_limit = true;
      continue;
    }
    if (flag == "--log") {
      cli.log = true;
      continue;
    }
    if (i + 1 >= args.size())
      return make_error(errc::invalid_argument, flag.rfind("--", 0) == 0
                                                    ? flag + ": a value is required"
                                                    : "unexpected argument " + flag);
    auto value = args[++i];
    long long n = 0;
    // OP:N[:...]: the operation and a count.
    auto op_count = [&](std::vector<std::string>& parts, size_t min_parts,
                        size_t max_parts) -> caf::error {
      parts = split(value, ':');
      if (parts.size() < min_parts || parts.size() > max_parts)
        return bad("expected " + std::string{max_parts > 2 ? "OP:N:STATUS" : "OP:N"});
      if (!known_op(parts[0]))
        return bad("unknown operation '" + parts[0] + "'");
      if (!to_int(parts[1], 1, 1000000, n))
        return bad("the count must be a positive number");
      return {};
    };
    if (flag == "--port") {
      if (!to_int(value, 0, 65535, n))
        return bad("expected a port number (0: ephemeral)");
      cli.options.port = static_cast<uint16_t>(n);
    } else if (flag == "--token") {
      cli.options.token = value;
      seen_token = !value.empty();
    } else if (flag == "--org") {
      if (value.empty())
        return bad("expected an org slug");
      cli.options.org = value;
    } else if (flag == "--region") {
      if (value.empty())
        return bad("expected a region");
      cli.options.region = value;
    } else if (flag == "--sandboxes") {
      if (value.empty() || value[0] != '/')
        return bad("expected an absolute directory");
      cli.options.sandboxes_dir = value;
      cli.own_sandboxes_dir = true;
    } else if (flag == "--boot-delay-ms") {
      if (!to_int(value, 0, 3600000, n))
        return bad("expected milliseconds");
      cli.options.boot_delay = std::chrono::milliseconds(n);
    } else if (flag == "--fault-rate") {
      char* end = nullptr;
      errno = 0;
      double rate = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || errno != 0 || !(rate >= 0 && rate <= 1))
        return bad("expected a probability from 0 to 1");
      cli.options.fault_rate = rate;
    } else if (flag == "--seed") {
      if (!to_int(value, 0, 999999999999999999LL, n))
        return bad("expected a number");
      cli.options.seed = static_cast<uint64_t>(n);
    } else if (flag == "--fail" || flag == "--fail-after") {
      std::vector<std::string> parts;
      bool after = flag == "--fail-after";
      if (auto err = op_count(parts, 3, after ? 3 : 4))
        return err;
      fly_fault f;
      f.op = parts[0] == "any" ? "" : parts[0];
      f.count = static_cast<int>(n);
      if (!to_int(parts[2], 400, 599, n))
        return bad("the status must be from 400 to 599");
      f.status = static_cast<int>(n);
      if (parts.size() == 4) {
        if (!to_int(parts[3], 0, 3600, n))
          return bad("Retry-After must be seconds");
        f.retry_after_s = static_cast<int>(n);
      }
      f.after_effect = after;
      cli.faults.push_back(f);
    } else if (flag == "--reset" || flag == "--reset-after" || flag == "--malformed") {
      std::vector<std::string> parts;
      if (auto err = op_count(parts, 2, 2))
        return err;
      fly_fault f;
      f.what = flag == "--malformed" ? fly_fault::kind::malformed_json
                                     : fly_fault::kind::reset;
      f.op = parts[0] == "any" ? "" : parts[0];
      f.count = static_cast<int>(n);
      f.after_effect = flag == "--reset-after";
      cli.faults.push_back(f);
    } else if (flag == "--create-timeout") {
      if (!to_int(value, 0, 1000000, n))
        return bad("expected a count");
      cli.create_timeouts = static_cast<int>(n);
    } else if (flag == "--capacity") {
      auto parts = split(value, ':');
      if (parts.size() > 2 || !to_int(parts[0], 0, 1000000, n))
        return bad("expected N[:STATUS]");
      cli.capacity_errors = static_cast<int>(n);
      if (parts.size() == 2) {
        if (!to_int(parts[1], 400, 599, n))
          return bad("the status must be from 400 to 599");
        cli.capacity_status = static_cast<int>(n);
      }
    } else if (flag == "--stuck-starting") {
      if (!to_int(value, 0, 1000000, n))
        return bad("expected a count");
      cli.stuck_launches = static_cast<int>(n);
    } else if (flag == "--token-expires-after") {
      if (!to_int(value, 0, 1000000000, n))
        return bad("expected a number of calls");
      cli.token_expires_after = static_cast<int>(n);
    } else if (flag == "--empty-list") {
      if (!to_int(value, 0, 1000000, n))
        return bad("expected a count");
      cli.empty_lists = static_cast<int>(n);
    } else if (flag == "--taken-app") {
      if (value.empty())
        return bad("expected an app name");
      cli.taken_apps.push_back(value);
    } else {
      return make_error(errc::invalid_argument, "unknown flag " + flag);
    }
  }
  if (!seen_token && !cli.help)
    return make_error(errc::invalid_argument,
                      "a token is required: --token T or FLY_EMULATOR_TOKEN");
  return cli;
}

} // namespace aloft::test

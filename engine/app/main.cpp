// The `aloft` executable: the command line's entry point.
#include <iostream>
#include <string>
#include <vector>

#include "engine/app/cli.hpp"
#include "engine/app/serve.hpp"

int main(int argc, char** argv) {
  std::vector<std::string> args{argv + 1, argv + argc};
  auto parsed = aloft::parse_cli(args);
  auto rc = aloft::handle_help_and_usage(parsed, std::cout, std::cerr);
  if (rc >= 0)
    return rc;
  if (parsed->name == "serve")
    return aloft::run_serve(*parsed, std::cout, std::cerr);
  return aloft::run_client(*parsed, std::cout, std::cerr);
}

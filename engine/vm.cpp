#include "engine/vm.hpp"

namespace aloft {

const char* to_string(vm_status s) {
  switch (s) {
    case vm_status::starting: return "starting";
    case vm_status::running: return "running";
    case vm_status::stopped: return "stopped";
    case vm_status::gone: return "gone";
  }
  return "gone";
}

} // namespace aloft

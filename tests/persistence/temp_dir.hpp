// A fresh temporary directory per test, removed with everything in it when
// the object goes away. Not synchronised: own one per test.
#pragma once

#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

namespace aloft::test {

class temp_dir {
public:
  temp_dir() {
    auto pattern =
        (std::filesystem::temp_directory_path() / "aloft-persistence-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      // No directory means no meaningful test; fail loudly and at once.
      std::perror("mkdtemp");
      std::abort();
    }
    path_ = pattern;
  }

  ~temp_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }

  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const std::string& path() const { return path_; }

  /// Returns the path of `name` inside the directory (not created).
  std::string sub(const std::string& name) const { return path_ + "/" + name; }

private:
  std::string path_;
};

} // namespace aloft::test

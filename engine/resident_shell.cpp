#include "engine/resident_shell.hpp"

#include <cstdlib>

#include "engine/base/error.hpp"

namespace aloft {

std::string resident_shell::loop_command() {
  // `read` consumes its line byte by byte and GNU `head -c` reads exactly
  // what it is asked for, so the stream stays in step between requests.
  // A script reads its stdin straight from the stream (a pack goes into
  // git as it arrives, never into a temporary file first). What it leaves
  // unread is drained after it exits: `read` finds the end at once when it
  // read everything (no process started), else `cat` takes the rest.
  return "T0=$(mktemp -d) || exit 1; trap 'rm -rf \"$T0\"' EXIT; "
         "while read -r s n; do "
         "head -c \"$s\" > \"$T0/script\"; "
         "if [ \"$n\" = 0 ]; then "
         "sh \"$T0/script\" < /dev/null > \"$T0/out\" 2> \"$T0/err\"; c=$?; "
         "else "
         "c=255; head -c \"$n\" | { sh \"$T0/script\" > \"$T0/out\" 2> \"$T0/err\"; "
         "echo $? > \"$T0/c\"; IFS= read -r x && cat > /dev/null; }; "
         "read -r c < \"$T0/c\"; "
         "fi; "
         "printf 'R %s %s %s\\n' \"$c\" $(wc -c < \"$T0/out\") $(wc -c < \"$T0/err\"); "
         "cat \"$T0/out\" \"$T0/err\"; "
         "done";
}

resident_shell::resident_shell(uint64_t max_output) : max_output_(max_output) {
  // nop
}

resident_shell::~resident_shell() {
  close();
}

std::shared_ptr<resident_shell> resident_shell::start(std::shared_ptr<transport> t,
                                                      uint64_t max_output) {
  std::shared_ptr<resident_shell> self{new resident_shell(max_output)};
  std::weak_ptr<resident_shell> weak = self;
  exec_callbacks cb;
  cb.on_stdout = [weak](std::string_view s) {
    if (auto p = weak.lock())
      p->on_stdout(s);
  };
  cb.on_stderr = [](std::string_view) {};
  cb.on_exit = [weak](const caf::error& err, int code) {
    if (auto p = weak.lock())
      p->on_exit(err, code);
  };
  auto ch = t->exec(loop_command(), std::move(cb));
  std::lock_guard<std::mutex> guard{self->mtx_};
  self->ch_ = std::move(ch);
  return self;
}

void resident_shell::run(std::string script, std::string input, done_fn done) {
  std::unique_lock<std::mutex> guard{mtx_};
  if (dead_ || !ch_) {
    guard.unlock();
    done(make_error(errc::unavailable, "the resident shell on the VM is gone"), -1, {}, {});
    return;
  }
  pending_.push_back(std::move(done));
  auto header = std::to_string(script.size()) + " " + std::to_string(input.size()) + "\n";
  ch_->write(header + script);
  if (!input.empty())
    ch_->write(std::move(input));
}

bool resident_shell::alive() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return !dead_ && ch_;
}

uint64_t resident_shell::bytes_out() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return ch_ ? ch_->bytes_out() : 0;
}

uint64_t resident_shell::bytes_in() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return ch_ ? ch_->bytes_in() : 0;
}

void resident_shell::close() {
  kill(make_error(errc::cancelled, "the resident shell was closed"));
}

void resident_shell::on_stdout(std::string_view bytes) {
  buf_.append(bytes);
  for (;;) {
    if (!in_body_) {
      auto nl = buf_.find('\n');
      if (nl == std::string::npos) {
        if (buf_.size() > 128)
          break; // malformed: handled below
        return;
      }
      auto line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      // "R <code> <out> <err>", decimal, strictly.
      char tag = 0;
      long long code = 0, out = 0, err = 0;
      char extra = 0;
      if (std::sscanf(line.c_str(), "%c %lld %lld %lld %c", &tag, &code, &out, &err, &extra)
            != 4
          || tag != 'R' || code < 0 || code > 255 || out < 0 || err < 0
          || static_cast<uint64_t>(out) + static_cast<uint64_t>(err) > max_output_) {
        kill(make_error(errc::data_loss,
                        "the resident shell on the VM sent a malformed or oversized answer"));
        return;
      }
      code_ = static_cast<int>(code);
      out_size_ = static_cast<uint64_t>(out);
      err_size_ = static_cast<uint64_t>(err);
      in_body_ = true;
    }
    if (buf_.size() < out_size_ + err_size_)
      return;
    auto out = buf_.substr(0, out_size_);
    auto err_text = buf_.substr(out_size_, err_size_);
    buf_.erase(0, out_size_ + err_size_);
    in_body_ = false;
    done_fn done;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      if (pending_.empty()) {
        dead_ = true;
      } else {
        done = std::move(pending_.front());
        pending_.pop_front();
      }
    }
    if (!done) {
      kill(make_error(errc::data_loss, "the resident shell answered a request never made"));
      return;
    }
    done(caf::error{}, code_, std::move(out), std::move(err_text));
  }
  kill(make_error(errc::data_loss, "the resident shell on the VM sent a malformed header"));
}

void resident_shell::kill(const caf::error& err) {
  // Dead first, so that whoever a failed callback wakes sees it dead.
  std::shared_ptr<channel> ch;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    dead_ = true;
    ch = std::move(ch_);
  }
  if (ch)
    ch->cancel();
  fail_all(err);
}

void resident_shell::on_exit(const caf::error& err, int code) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    dead_ = true;
  }
  fail_all(err ? annotate(err, "resident shell")
               : make_error(errc::unavailable, "the resident shell on the VM ended (exit "
                                                 + std::to_string(code) + ")"));
}

void resident_shell::fail_all(const caf::error& err) {
  std::deque<done_fn> failed;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    failed.swap(pending_);
  }
  for (auto& done : failed)
    done(err, -1, {}, {});
}

} // namespace aloft

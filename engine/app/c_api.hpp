// The C++ side of the C ABI (include/aloft.h).
//
// `aloft_open` opens the real engine (c_api_open.cpp); this wraps any engine,
// so tests and C++ embedders can hand a C caller an engine they built. The
// returned handle owns the engine; release it with aloft_close. Thread-safe
// as the functions of aloft.h are.
#pragma once

#include <memory>

#include "engine/app/api.hpp"
#include "aloft.h"

/// Wraps `e` as an aloft_engine; returns NULL when `e` is null.
aloft_engine* aloft_wrap_engine(std::unique_ptr<aloft::engine> e);

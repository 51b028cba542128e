#include "engine/app/api.hpp"

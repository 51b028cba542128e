#include "actors/atoms.hpp"

/// @file onednn.hpp
/// @brief Whether this build has oneDNN (`SAE_HAS_ONEDNN`, set to 1 by CMake when
/// `SAE_USE_ONEDNN` finds libdnnl-dev; 0 otherwise), and its C++ API when it has.
#pragma once

#ifndef SAE_HAS_ONEDNN
#define SAE_HAS_ONEDNN 0
#endif

#if SAE_HAS_ONEDNN
#include <dnnl.hpp>
#endif

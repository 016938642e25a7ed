/// @file config.hpp
/// @brief Build configuration: OpenMP on/off, pragma helper, thread queries.
#pragma once

#include <Eigen/Core>

#if defined(_OPENMP)
#include <omp.h>
#define SAE_HAS_OPENMP 1
#else
#define SAE_HAS_OPENMP 0
#endif

#define SAE_STRINGIFY_IMPL(x) #x
#define SAE_STRINGIFY(x) SAE_STRINGIFY_IMPL(x)

/// Expands to `#pragma omp <args>` when OpenMP is enabled, to nothing otherwise.
#if SAE_HAS_OPENMP
#define SAE_PRAGMA_OMP(args) _Pragma(SAE_STRINGIFY(omp args))
#else
#define SAE_PRAGMA_OMP(args)
#endif

namespace sae {

/// Index type of every size and offset, the same as Eigen's.
using Index = Eigen::Index;

/// @brief Number of threads a parallel region started now would use.
inline int maxThreads() {
#if SAE_HAS_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// @brief Sets the thread count of later parallel regions (ours and Eigen's GEMMs).
/// Without OpenMP this is a no-op.
inline void setThreads(int n) {
#if SAE_HAS_OPENMP
  if (n > 0) omp_set_num_threads(n);
#else
  (void)n;
#endif
  Eigen::setNbThreads(n > 0 ? n : 0);
}

/// @brief Index of the calling thread inside a parallel region (0 outside).
inline int threadIndex() {
#if SAE_HAS_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace sae

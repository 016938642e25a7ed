// A program that uses sae the way a downstream project does: through CMake's sae::sae target
// only (find_package in this folder, add_subdirectory in ../add_subdirectory). It checks at run
// time that what it got works, and exits non-zero on any failure.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include <sae/sae.hpp>

// The consumer's CMake sets SAE_EXPECT_OPENMP=1 when sae was configured with OpenMP: then
// sae::sae must have brought -fopenmp along (find_dependency(OpenMP) in saeConfig.cmake).
#if defined(SAE_EXPECT_OPENMP) && SAE_EXPECT_OPENMP && !SAE_HAS_OPENMP
#error "sae::sae should carry OpenMP::OpenMP_CXX, but _OPENMP is not defined"
#endif

namespace {

int g_failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++g_failures;
  }
}

void checkRng() {
  sae::Rng a(42), b(42), c(42, 1);
  bool same = true, other_stream_differs = false;
  for (int i = 0; i < 16; ++i) {
    const std::uint64_t x = a.nextU64();
    same = same && x == b.nextU64();
    other_stream_differs = other_stream_differs || x != c.nextU64();
  }
  check(same, "Rng(42) gives the same stream twice");
  check(other_stream_differs, "Rng(42, 1) differs from Rng(42, 0)");
  sae::Rng u(7);
  bool in_range = true;
  for (int i = 0; i < 1000; ++i) {
    const double x = u.uniform();
    in_range = in_range && x >= 0.0 && x < 1.0;
  }
  check(in_range, "Rng::uniform() stays in [0, 1)");
}

void checkParameters() {
  sae::ParameterSet<float> p;
  p.add("W_enc", {3, 2}, sae::Layout::ColMajor);
  p.add("b_dec", {3});
  check(p.size() == 9, "ParameterSet size is 3*2 + 3");
  check(p.flat().isZero(), "new tensors are zero");

  sae::RowMatrix<float> w(3, 2);
  w << 1, 2, 3, 4, 5, 6;
  p.assignRowMajor("W_enc", w);
  // Column-major storage: the first column (1, 3, 5) comes first.
  check(p.flat("W_enc")(1) == 3.0f, "W_enc is stored column-major");
  check(p.rowMajorCopy("W_enc") == w, "rowMajorCopy() round-trips assignRowMajor()");
  check(p.zerosLike().sameLayout(p), "zerosLike() keeps the layout");

  bool threw = false;
  try {
    p.info("W_dec");
  } catch (const sae::ConfigError&) {
    threw = true;
  }
  check(threw, "an unknown parameter name throws sae::ConfigError");
}

void checkModel() {
  sae::SaeConfig cfg;
  cfg.d_in = 8;
  cfg.d_sae = 32;
  cfg.k = 3;
  sae::TopKSAE<float> model(cfg, 1);
  sae::RowMatrix<float> x = sae::RowMatrix<float>::Ones(4, 8);
  const auto codes = model.encode(x);
  check(codes.indices.rows() == 4 && codes.indices.cols() == 3, "TopK codes are [4, 3]");
  const sae::RowMatrix<float> y = model.decode(codes);
  check(y.rows() == 4 && y.cols() == 8 && y.allFinite(), "decode gives a finite [4, 8] batch");
}

void checkThreads() {
#if SAE_HAS_OPENMP
  sae::setThreads(3);
  check(sae::maxThreads() == 3, "setThreads(3) reaches OpenMP");
#else
  check(sae::maxThreads() == 1, "one thread without OpenMP");
#endif
}

}  // namespace

int main() {
  try {
    checkRng();
    checkParameters();
    checkModel();
    checkThreads();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAILED: unexpected exception: %s\n", e.what());
    ++g_failures;
  }
  std::printf("sae consumer (OpenMP %s): %d failure(s)\n", SAE_HAS_OPENMP ? "on" : "off",
              g_failures);
  return g_failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

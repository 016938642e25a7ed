// Helpers shared by the test programs: the files in tests/data/io and the formula of their
// values, the SAELens fixture folder, whole-file reads and writes, temporary directories, and
// the comparison of feature activations computed in two precisions.
//
// Included as <support/test_support.hpp>; needs the compile definitions SAE_TEST_DATA_DIR and
// SAE_DEFAULT_FIXTURES_DIR (tests/data) that tests/CMakeLists.txt gives the test program.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

#include <unistd.h>

#include <catch2/catch.hpp>

#include <sae/core/config.hpp>
#include <sae/core/rng.hpp>
#include <sae/core/types.hpp>

namespace sae::test {

// ------------------------------------------------------------------------- reference data

/// Path of `name` in tests/data/io.
inline std::string dataPath(const std::string& name) {
  return std::string(SAE_TEST_DATA_DIR) + "/io/" + name;
}

/// Path of `name` in tests/data/lm (the language-model part's files).
inline std::string lmDataPath(const std::string& name) {
  return std::string(SAE_TEST_DATA_DIR) + "/lm/" + name;
}

/// The value at (r, c) of the matrices tests/data/io/generate.py writes (the formula documented
/// there): v(r, c) = (c even ? 1 : -1) * (10 r + c + 0.25).
inline double expectedValue(Index r, Index c) {
  return (c % 2 == 0 ? 1.0 : -1.0) *
         (10.0 * static_cast<double>(r) + static_cast<double>(c) + 0.25);
}

/// Rows firstRow .. firstRow + rows - 1 of the generate.py matrices, by expectedValue().
template <typename Scalar>
RowMatrix<Scalar> expectedMatrix(Index rows, Index cols, Index firstRow = 0) {
  RowMatrix<Scalar> m(rows, cols);
  for (Index r = 0; r < rows; ++r) {
    for (Index c = 0; c < cols; ++c) m(r, c) = static_cast<Scalar>(expectedValue(firstRow + r, c));
  }
  return m;
}

/// A [rows, cols] batch of independent N(0, scale^2) draws from Rng(seed), in row order.
template <typename S = double>
RowMatrix<S> randomBatch(Index rows, Index cols, std::uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  RowMatrix<S> x(rows, cols);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = S(scale * rng.normal());
  return x;
}

/// Adds N(0, scale^2) noise from Rng(seed) to every parameter of `model`, so that no gradient
/// is special (biases zero, W_enc = W_dec^T at initialisation).
template <typename Model>
void perturb(Model& model, std::uint64_t seed, double scale) {
  Rng rng(seed);
  auto flat = model.parameters().flat();
  for (Index i = 0; i < flat.size(); ++i) flat[i] += typename Model::Scalar(scale * rng.normal());
}

/// Largest relative error, max(|numeric|, |analytic|, 1e-3) in the denominator, between
/// `analytic` and the centred finite differences of `loss()` over every scalar of `value`
/// (each perturbed by +-step in turn and restored).
template <typename Value, typename Analytic, typename Loss>
double worstFiniteDifferenceError(Value&& value, const Analytic& analytic, const Loss& loss,
                                  double step = 1e-5) {
  double worst = 0;
  for (Index i = 0; i < value.size(); ++i) {
    const double saved = value[i];
    value[i] = saved + step;
    const double up = loss();
    value[i] = saved - step;
    const double down = loss();
    value[i] = saved;
    const double numeric = (up - down) / (2 * step);
    const double scale = std::max({std::abs(numeric), std::abs(double(analytic[i])), 1e-3});
    worst = std::max(worst, std::abs(numeric - double(analytic[i])) / scale);
  }
  return worst;
}

/// `got` is `want` exactly: the same sign for zeros, any NaN for a NaN.
inline bool sameValue(double got, double want) {
  if (std::isnan(want)) return std::isnan(got);
  return got == want && std::signbit(got) == std::signbit(want);
}

/// The SAELens reference fixtures: tests/data/saelens in this checkout, or
/// $SAE_FIXTURES_DIR/saelens when that variable is set and not empty (another fixture set).
inline std::string fixturesRoot() {
  const char* env = std::getenv("SAE_FIXTURES_DIR");
  return std::string(env != nullptr && *env != '\0' ? env : SAE_DEFAULT_FIXTURES_DIR) + "/saelens";
}

/// The folder of one fixture case (e.g. "train_topk", "infer_gated"). A case whose marker file
/// (x.npy for infer_*, config.json for train_*) cannot be read fails the test, naming the folder:
/// a missing fixture is a failure, never a skip.
inline std::string fixtureDir(const std::string& name) {
  const std::string dir = fixturesRoot() + "/" + name;
  const std::string marker = dir + (name.rfind("infer_", 0) == 0 ? "/x.npy" : "/config.json");
  if (!std::ifstream(marker)) {
    FAIL("fixture folder missing or unreadable: " << dir << " (no " << marker
                                                  << "; SAE_FIXTURES_DIR overrides the root)");
  }
  return dir;
}

/// xorshift64 (shifts 13, 7, 17): the deterministic bytes and positions of the fuzz tests.
class XorShift64 {
 public:
  explicit XorShift64(std::uint64_t seed) : m_state(seed) {}
  std::uint64_t operator()() {
    m_state ^= m_state << 13;
    m_state ^= m_state >> 7;
    m_state ^= m_state << 17;
    return m_state;
  }

 private:
  std::uint64_t m_state;
};

// ------------------------------------------------------------------------- whole files

/// The bytes of a file (none when it cannot be read).
inline std::vector<char> readBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// The bytes of a file as a string (empty when it cannot be read).
inline std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// Replaces the contents of `path` with `bytes`.
inline void writeBytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// Replaces the contents of `path` with `bytes`.
inline void writeBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// ------------------------------------------------------------------------- directories

/// A fresh directory under the system temp dir, sae_test_<tag>_<pid>_<n>, removed with its
/// contents at the end (after giving the owner back all permissions on it).
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    m_path =
        std::filesystem::temp_directory_path() /
        ("sae_test_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(m_path);
    std::filesystem::create_directories(m_path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(m_path, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(m_path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string file(const std::string& name) const { return (m_path / name).string(); }
  std::string path() const { return m_path.string(); }
  /// The names of the entries of the directory, in directory order.
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(m_path))
      names.push_back(e.path().filename());
    return names;
  }

 private:
  std::filesystem::path m_path;
};

/// /tmp/sae_test_<tag>_<pid>_<name>, removed first if it exists (REQUIRE'd), then created with
/// its parents unless `create` is false. Left in place at the end, for inspection.
inline std::string scratchDir(const std::string& tag, const std::string& name, bool create = true) {
  const std::string dir = "/tmp/sae_test_" + tag + "_" + std::to_string(::getpid()) + "_" + name;
  REQUIRE(std::system(("rm -rf '" + dir + "'").c_str()) == 0);
  if (create) std::filesystem::create_directories(dir);
  return dir;
}

// ------------------------------------------------------------------------- comparisons

/// Feature activations of two precisions compared: how many entries fire (are non-zero) in
/// both and in either, and the relative L2 difference over the entries firing in both.
struct FiringComparison {
  Index both = 0, either = 0;
  double relative_error = 0;
  double agreement() const { return double(both) / double(either > 0 ? either : 1); }
};

template <typename Got, typename Want>
FiringComparison compareFiring(const Got& got, const Want& want) {
  FiringComparison c;
  double diff2 = 0, want2 = 0;
  for (Index r = 0; r < got.rows(); ++r) {
    for (Index j = 0; j < got.cols(); ++j) {
      const double a = double(got(r, j)), b = double(want(r, j));
      c.either += a != 0 || b != 0;
      if (a != 0 && b != 0) {
        ++c.both;
        diff2 += (a - b) * (a - b);
        want2 += b * b;
      }
    }
  }
  c.relative_error = want2 > 0 ? std::sqrt(diff2 / want2) : 0.0;
  return c;
}

}  // namespace sae::test

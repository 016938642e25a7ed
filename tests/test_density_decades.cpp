// Tests of DensityDecades: latents counted by decade of firing frequency, the histogram of
// `sae eval` (dead, <1e-6, 1e-6..1e-5, ..., >=1e-1).
#include <string>

#include <catch2/catch.hpp>

#include <sae/eval/density_decades.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_density_decades {

using sae::eval::DensityDecades;

TEST_CASE("DensityDecades puts each density in its decade", "[DensityDecades]") {
  CHECK(DensityDecades::bucketOf(0.0) == 0);
  CHECK(DensityDecades::bucketOf(-1.0) == 0);
  CHECK(DensityDecades::bucketOf(1e-9) == 1);
  CHECK(DensityDecades::bucketOf(3e-6) == 2);
  CHECK(DensityDecades::bucketOf(3e-5) == 3);
  CHECK(DensityDecades::bucketOf(3e-4) == 4);
  CHECK(DensityDecades::bucketOf(3e-3) == 5);
  CHECK(DensityDecades::bucketOf(3e-2) == 6);
  CHECK(DensityDecades::bucketOf(0.5) == 7);
  CHECK(DensityDecades::bucketOf(1.0) == 7);

  Eigen::VectorXd density(9);
  density << 0, 0, 2e-7, 5e-6, 0.02, 0.07, 0.2, 1.0, 4e-4;
  const DensityDecades d = DensityDecades::of(density);
  CHECK(d.counts == std::array<std::int64_t, 8>{2, 1, 1, 0, 1, 0, 2, 2});
  CHECK(std::string(DensityDecades::kLabels[0]) == "dead");
  CHECK(std::string(DensityDecades::kLabels[3]) == "1e-5..1e-4");
  CHECK(std::string(DensityDecades::kLabels[7]) == ">=1e-1");
  CHECK(DensityDecades::of(Eigen::VectorXd()).counts == std::array<std::int64_t, 8>{});
}

}  // namespace sae_test_density_decades

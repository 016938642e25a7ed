// Data-parallel training over MPI (include/sae/dist/, Trainer::setCollective): a program of its
// own, run by ctest as `mpirun -np 2 test_distributed` (every rank runs every test case; each
// REQUIRE is checked on each rank). The ordered sum, the disjoint split of the activation
// stream, a 2-rank step against the 1-rank step on the same global batch, identical replicas,
// runs that repeat bitwise, bitwise resume under 2 ranks, and the errors.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <sae/dist/mpi.hpp>
#include <sae/io/activation_stream.hpp>
#include <sae/io/npy.hpp>
#include <sae/train/batch_source.hpp>
#include <sae/train/trainer.hpp>

namespace sae_test_distributed {

namespace {

using sae::Index;
using Synthetic = sae::train::SyntheticSource<float>;
using Slice = sae::train::RankSlice<Synthetic>;

sae::dist::MpiCollective& world() {
  static sae::dist::MpiCollective c;
  return c;
}

// A folder every rank names alike (from rank 0's pid), emptied by rank 0; a barrier after.
std::string sharedDir(const std::string& name) {
  const std::uint64_t pid = world().gather(std::uint64_t(::getpid())).front();
  const std::string dir = "/tmp/sae_test_distributed_" + std::to_string(pid) + "_" + name;
  if (world().rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  world().gather(std::uint64_t(0));
  return dir;
}

sae::eval::SyntheticOptions smallData() {
  sae::eval::SyntheticOptions o;
  o.d_in = 16;
  o.n_features = 48;
  o.expected_active = 3;
  return o;
}

sae::train::TrainerConfig smallConfig(const std::string& arch, const std::string& out) {
  sae::train::TrainerConfig c;
  c.architecture = arch;
  c.d_sae = 64;
  c.k = 4;
  c.batch_size = 64;
  c.total_steps = 500;
  c.lr = 2e-3;
  c.l1_coefficient = 0.5;
  c.dead_feature_window = 6;  // so AuxK works on a dead set the ranks must agree on
  c.feature_sampling_window = 7;
  c.log_every = 9;
  c.eval_every = 0;
  c.eval_rows = 0;
  c.out_dir = out;
  c.seed = 5;
  return c;
}

std::uint64_t hashParams(const sae::ParameterSet<float>& p) {
  const auto f = p.flat();
  return sae::dist::checksum(f.data(), std::size_t(f.size()) * sizeof(float));
}

// Largest |a - b| over the tensor, relative to its largest |b|.
double relativeDifference(const sae::ParameterSet<float>& a, const sae::ParameterSet<float>& b,
                          const std::string& name) {
  const Eigen::VectorXd x = a.flat(name).cast<double>(), y = b.flat(name).cast<double>();
  const double scale = std::max(y.cwiseAbs().maxCoeff(), 1e-30);
  return (x - y).cwiseAbs().maxCoeff() / scale;
}

template <typename Arch>
void checkOneStepMatches(const std::string& arch) {
  const int rank = world().rank(), ranks = world().size();
  const std::string dir = sharedDir("one_step_" + arch);
  sae::train::TrainerConfig cfg = smallConfig(arch, dir + "/parallel");
  cfg.total_steps = 1;
  cfg.dead_feature_window = 1;  // dead after one step: AuxK is not part of step 1 either way
  Synthetic global(smallData(), cfg.seed, cfg.batch_size);
  Slice mine(global, rank, ranks);
  sae::train::Trainer<float, Arch, Slice> parallel(cfg, mine);
  parallel.setCollective(&world());
  parallel.initialize();
  REQUIRE(parallel.train().completed);

  // The same global batch in one process (every rank makes it; all must agree).
  cfg.out_dir = dir + "/single_rank" + std::to_string(rank);
  Synthetic whole(smallData(), cfg.seed, cfg.batch_size);
  sae::train::Trainer<float, Arch, Synthetic> single(cfg, whole);
  single.initialize();
  REQUIRE(single.train().completed);
  const auto& a = parallel.model().parameters();
  const auto& b = single.model().parameters();
  // Adam's first step hardly depends on the gradient's scale, so the gradients (of the global
  // batch's mean loss) and the second moments are compared too.
  const auto& ga = parallel.trainStep().gradients();
  const auto& gb = single.trainStep().gradients();
  const auto& va = parallel.optimizer().secondMoment();
  const auto& vb = single.optimizer().secondMoment();
  for (const auto& e : b.entries()) {
    INFO(arch << " " << e.name);
    CHECK(relativeDifference(a, b, e.name) <= 1e-6);
    CHECK(relativeDifference(ga, gb, e.name) <= 1e-6);
    CHECK(relativeDifference(va, vb, e.name) <= 1e-6);
  }
  // The step changed the weights (the comparison is not of two initialisations).
  Synthetic fresh(smallData(), cfg.seed, cfg.batch_size);
  cfg.out_dir = dir + "/untrained_rank" + std::to_string(rank);
  sae::train::Trainer<float, Arch, Synthetic> untrained(cfg, fresh);
  untrained.initialize();
  CHECK(relativeDifference(untrained.model().parameters(), b, "W_enc") > 1e-4);
  // The firing seen by the dead-latent counters is the global batch's.
  CHECK(parallel.deadLatents().stepsSinceFired() == single.deadLatents().stepsSinceFired());
}

// `rows` x 4 rows whose first value is the row's index, as a .npy file.
void writeIndexedRows(const std::string& path, Index rows) {
  sae::RowMatrix<float> m(rows, 4);
  for (Index r = 0; r < rows; ++r) m.row(r) << float(r), 1.0f, float(r % 7), -2.0f;
  sae::io::writeNpy(path, m);
}

}  // namespace

TEST_CASE("the ordered sum gives every rank the rank-order sum, bit for bit") {
  const int rank = world().rank(), ranks = world().size();
  REQUIRE(ranks >= 2);
  // Longer than one segment, and not a multiple of the ranks.
  const std::size_t n = sae::dist::MpiCollective::kSegmentElements + 7;
  auto value = [](int r, std::size_t i) {
    return float(std::sin(0.001 * double(i) + r) * std::pow(10.0, double((i + r) % 7) - 3));
  };
  std::vector<float> data(n);
  for (std::size_t i = 0; i < n; ++i) data[i] = value(rank, i);
  world().sum(data.data(), n);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < n; ++i) {
    float want = value(0, i);
    for (int r = 1; r < ranks; ++r) want += value(r, i);
    if (std::memcmp(&want, &data[i], sizeof want) != 0) ++wrong;
  }
  CHECK(wrong == 0);
  const std::vector<std::uint64_t> hashes =
      world().gather(sae::dist::checksum(data.data(), n * sizeof(float)));
  CHECK(std::all_of(hashes.begin(), hashes.end(), [&](auto h) { return h == hashes[0]; }));

  std::vector<double> d = {double(rank), 0.5};
  world().sum(d.data(), d.size());
  CHECK(d[0] == double(ranks * (ranks - 1) / 2));
  CHECK(d[1] == 0.5 * ranks);
  CHECK(world().traffic().bytes_sent > 0);

  const std::vector<std::string> texts = world().gather(std::string(std::size_t(rank) + 1, 'x'));
  REQUIRE(int(texts.size()) == ranks);
  for (int r = 0; r < ranks; ++r)
    CHECK(texts[std::size_t(r)] == std::string(std::size_t(r) + 1, 'x'));

  std::uint64_t word = rank == 0 ? 0xabcdef : 0;
  world().broadcast(&word, sizeof word);
  CHECK(word == 0xabcdef);
}

TEST_CASE("the ranks' parts of an activation stream are disjoint and cover the data") {
  const int rank = world().rank(), ranks = world().size();
  const std::string dir = sharedDir("split");
  const Index rows = 1000;
  if (rank == 0) writeIndexedRows(dir + "/acts.npy", rows);
  world().gather(std::uint64_t(0));
  sae::io::StreamOptions so;
  so.batch_size = 1;
  so.seed = 3;
  so.shuffle_buffer_rows = 128;
  so.holdout_fraction = 0.1;
  so.part = rank;
  so.parts = ranks;
  sae::io::ActivationStream<float> stream({dir + "/acts.npy"}, so);
  const std::int64_t held = stream.holdoutRows();
  std::set<long> seen;
  sae::RowMatrix<float> batch;
  while (stream.position().epoch == 0) {
    stream.next(batch);
    CHECK(seen.insert(long(batch(0, 0))).second);  // each row once per epoch
  }
  std::ostringstream out;
  for (long id : seen) out << id << " ";
  std::set<long> all;
  std::size_t total = 0;
  for (const std::string& text : world().gather(out.str())) {
    std::istringstream in(text);
    for (long id; in >> id; ++total) all.insert(id);
  }
  CHECK(total == all.size());                      // no row in two parts
  CHECK(std::int64_t(all.size()) == rows - held);  // every training row in one part
  // The held-out rows are the same on every rank.
  const sae::RowMatrix<float> h = stream.holdout(1000);
  const std::vector<std::uint64_t> hh =
      world().gather(sae::dist::checksum(h.data(), std::size_t(h.size()) * sizeof(float)));
  CHECK(std::all_of(hh.begin(), hh.end(), [&](auto x) { return x == hh[0]; }));
  CHECK(h.rows() == held);

  so.parts = 400;  // more parts than blocks: the last ones would get none
  so.part = 399;
  so.block_rows = 64;
  CHECK_THROWS_WITH((sae::io::ActivationStream<float>({dir + "/acts.npy"}, so)),
                    Catch::Contains("fewer than the 400 parts"));
}

TEST_CASE("one step on 2 ranks equals one step on the whole batch in one process") {
  checkOneStepMatches<sae::TopKArch>("topk");
  checkOneStepMatches<sae::StandardArch>("standard");
  checkOneStepMatches<sae::GatedArch>("gated");
  checkOneStepMatches<sae::JumpReLUArch>("jumprelu");
}

TEST_CASE("replicas stay identical, runs repeat bitwise, and 500 steps track one process") {
  const int rank = world().rank(), ranks = world().size();
  std::vector<std::uint64_t> runs;
  std::unique_ptr<sae::train::Trainer<float, sae::TopKArch, Slice>> last;
  std::unique_ptr<Synthetic> last_source;
  std::unique_ptr<Slice> last_slice;
  for (int run = 0; run < 2; ++run) {
    const std::string dir = sharedDir("repeat" + std::to_string(run));
    const sae::train::TrainerConfig cfg = smallConfig("topk", dir);
    last_source = std::make_unique<Synthetic>(smallData(), cfg.seed, cfg.batch_size);
    last_slice = std::make_unique<Slice>(*last_source, rank, ranks);
    last = std::make_unique<sae::train::Trainer<float, sae::TopKArch, Slice>>(cfg, *last_slice);
    last->setCollective(&world());
    last->initialize();
    REQUIRE(last->train().completed);
    REQUIRE_NOTHROW(last->verifyReplicas("at the end"));
    runs.push_back(hashParams(last->model().parameters()));
    // Rank 0 wrote the run; the others wrote nothing.
    if (rank == 0) {
      CHECK(std::filesystem::exists(dir + "/sae_weights.safetensors"));
      CHECK(std::filesystem::exists(dir + "/metrics.jsonl"));
    }
  }
  CHECK(runs[0] == runs[1]);

  // Against one process on the same global batches: after 500 steps the held-out metrics
  // agree within 1% (selections flipped by rounding make the weights drift apart slowly).
  const std::string dir = sharedDir("single");
  sae::train::TrainerConfig cfg = smallConfig("topk", dir + "/rank" + std::to_string(rank));
  Synthetic whole(smallData(), cfg.seed, cfg.batch_size);
  sae::train::Trainer<float, sae::TopKArch, Synthetic> single(cfg, whole);
  single.initialize();
  REQUIRE(single.train().completed);
  const sae::RowMatrix<float> held = whole.holdout(2000);
  auto metricsOf = [&](const auto& model) {
    sae::eval::ReconstructionMetrics m;
    const auto codes = model.encode(held);
    m.add<float>(held, model.decode(codes));
    return m;
  };
  const auto mp = metricsOf(last->model()), ms = metricsOf(single.model());
  INFO("explained variance: 2 ranks " << mp.explainedVariance() << ", 1 process "
                                      << ms.explainedVariance());
  CHECK(ms.explainedVariance() > 0.5);  // it learnt something
  CHECK(std::abs(mp.explainedVariance() - ms.explainedVariance()) <= 0.01 * ms.explainedVariance());
  CHECK(std::abs(mp.mse() - ms.mse()) <= 0.01 * ms.mse() + 1e-9);

  // A replica changed behind the run's back is caught, on every rank, naming it.
  if (rank == 1) last->model().parameters().flat()[0] += 1.0f;
  CHECK_THROWS_WITH(last->verifyReplicas("at the test's check"),
                    Catch::Contains("rank 1's weights differ from rank 0's"));
}

TEST_CASE("a run of 2 ranks resumed from its checkpoint ends bitwise as an uninterrupted one") {
  const int rank = world().rank(), ranks = world().size();
  const std::string dir = sharedDir("resume");
  if (rank == 0) writeIndexedRows(dir + "/acts.npy", 3000);
  world().gather(std::uint64_t(0));
  using Stream = sae::train::StreamSource<sae::io::ActivationStream<float>>;
  using Trainer = sae::train::Trainer<float, sae::TopKArch, Stream>;
  auto options = [&] {
    sae::io::StreamOptions so;
    so.batch_size = 64 / ranks;
    so.seed = 5;
    so.shuffle_buffer_rows = 512;
    so.part = rank;
    so.parts = ranks;
    return so;
  };
  sae::train::TrainerConfig cfg = smallConfig("topk", dir + "/full");
  cfg.d_sae = 16;
  cfg.checkpoint_every = 10;
  std::uint64_t full = 0;
  {
    Stream src(std::vector<std::string>{dir + "/acts.npy"}, options());
    Trainer t(cfg, src);
    t.setCollective(&world());
    t.initialize();
    REQUIRE(t.train().completed);
    full = hashParams(t.model().parameters());
  }
  cfg.out_dir = dir + "/split";
  {
    Stream src(std::vector<std::string>{dir + "/acts.npy"}, options());
    Trainer t(cfg, src);
    t.setCollective(&world());
    t.initialize();
    REQUIRE(t.train(13).step == 13);
  }
  Stream src(std::vector<std::string>{dir + "/acts.npy"}, options());
  Trainer t(cfg, src);
  t.setCollective(&world());
  const auto latest = t.latestCheckpoint();
  REQUIRE(latest);
  t.resume(*latest);
  CHECK(t.step() == 13);
  REQUIRE(t.train().completed);
  CHECK(hashParams(t.model().parameters()) == full);

  // The checkpoint holds every rank's position; one process cannot resume it.
  Stream one(std::vector<std::string>{dir + "/acts.npy"}, [&] {
    auto so = options();
    so.part = 0;
    so.parts = 1;
    return so;
  }());
  Trainer alone(cfg, one);
  CHECK_THROWS_WITH(alone.resume(*t.latestCheckpoint()),
                    Catch::Contains("resumed with 1; resume it with the "
                                    "same number (mpirun -np 2)"));
}

TEST_CASE("data-parallel training refuses what it cannot do exactly") {
  const std::string dir = sharedDir("refused");
  Synthetic global(smallData(), 5, 64);
  Slice mine(global, world().rank(), world().size());
  sae::train::TrainerConfig cfg = smallConfig("batchtopk", dir);
  sae::train::Trainer<float, sae::BatchTopKArch, Slice> b(cfg, mine);
  CHECK_THROWS_WITH(b.setCollective(&world()),
                    Catch::Contains("batchtopk selects its latents across the whole batch"));
  cfg = smallConfig("topk", dir);
  cfg.batch_size = 63;
  sae::train::Trainer<float, sae::TopKArch, Slice> t(cfg, mine);
  CHECK_THROWS_WITH(t.setCollective(&world()),
                    Catch::Contains("batch of 63 tokens (the global batch, --batch) is not a "
                                    "multiple of the 2 ranks"));
}

}  // namespace sae_test_distributed

int main(int argc, char** argv) {
  sae::dist::MpiSession mpi(&argc, &argv);
  sae_test_distributed::world();
  const int failed = Catch::Session().run(argc, argv);
  // Every rank's verdict counts: fail when any rank failed.
  const std::vector<std::uint64_t> all =
      sae_test_distributed::world().gather(std::uint64_t(failed != 0));
  return std::any_of(all.begin(), all.end(), [](auto f) { return f != 0; }) ? 1 : 0;
}

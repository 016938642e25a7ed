// I/O benchmarks: reading float32 rows from a page-cached file, float16 / bfloat16 conversion,
// streaming shuffled batches through ActivationStream, and the peak memory of a stream.
//
//   bench_io [--mode all|rss|read|convert|stream] [--d-in 768] [--rows 65536] [--batch 4096]
//            [--buffer-rows 32768] [--dir /tmp] [--seconds 1]
//
// Targets (issue 3): reading float32 rows into a batch >= 2 GB/s on one core; float16 and
// bfloat16 conversion >= 1 GB/s of input per core; streaming a dataset twice the shuffle buffer
// must keep the peak RSS within the buffer budget plus a small constant. Each figure is the
// median of repeated passes over the data once it is in the page cache; the read and conversion
// figures run on one thread. The peak RSS is the process's ru_maxrss from getrusage, measured
// first (--mode all), before the other benchmarks allocate anything.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <sae/core/rng.hpp>
#include <sae/io/activation_stream.hpp>
#include <sae/io/atomic_write.hpp>
#include <sae/io/dtype.hpp>
#include <sae/io/npy.hpp>

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

struct Options {
  std::string mode = "all";
  sae::Index d_in = 768;
  sae::Index rows = 65536;  // rows of the read benchmark's file and of the RSS dataset
  sae::Index batch = 4096;
  sae::Index buffer_rows = 32768;  // shuffle buffer of the RSS test (the dataset is `rows`)
  std::string dir;
  double seconds = 1.0;
};

double seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// Median time of `pass`, repeated for at least `budget` seconds (and at least 3 times).
template <typename F>
double medianTime(double budget, F pass) {
  std::vector<double> times;
  const auto start = Clock::now();
  while (times.size() < 3 || seconds(start) < budget) {
    const auto t0 = Clock::now();
    pass();
    times.push_back(seconds(t0));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double peakRssMb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // KiB on Linux
}

/// Writes a float32 .npy of `rows` x `d` normal values, 1024 rows at a time (little memory).
void writeShard(const std::string& path, sae::Index rows, sae::Index d, std::uint64_t seed) {
  sae::io::AtomicFileWriter w(path);
  const std::string pre = sae::io::detail::npyPreamble("<f4", {rows, d});
  w.write(pre.data(), pre.size());
  sae::Rng rng(seed);
  std::vector<float> chunk;
  for (sae::Index r = 0; r < rows; r += 1024) {
    const sae::Index n = std::min<sae::Index>(1024, rows - r) * d;
    chunk.resize(static_cast<std::size_t>(n));
    for (auto& v : chunk) v = static_cast<float>(rng.normal());
    w.writeElements(chunk.data(), n, sae::io::DType::F32);
  }
  w.commit();
}

/// Reads the file once with fread (not through a mapping, which would count in the RSS).
void warmPageCache(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw sae::IoError(path + ": cannot open");
  std::vector<char> buffer(std::size_t(1) << 20);
  while (std::fread(buffer.data(), 1, buffer.size(), f) == buffer.size()) {
  }
  std::fclose(f);
}

/// CPU time of the process so far (all threads), seconds.
double cpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

struct Rate {
  double wall;  ///< rows per second of elapsed time
  double cpu;   ///< rows per second of CPU time (all threads): independent of other load
};

/// Streams `epochs` epochs (after construction).
Rate streamRate(const std::vector<std::string>& shards, sae::io::StreamOptions so, double epochs,
                const Options& o) {
  sae::io::ActivationStream<float> stream(shards, so);
  sae::RowMatrix<float> batch;
  const auto batches = static_cast<std::int64_t>(
      epochs * static_cast<double>(stream.trainingRows()) / static_cast<double>(o.batch));
  const auto t0 = Clock::now();
  const double c0 = cpuSeconds();
  for (std::int64_t i = 0; i < batches; ++i) stream.next(batch);
  const double rows = static_cast<double>(batches * o.batch);
  return {rows / seconds(t0), rows / (cpuSeconds() - c0)};
}

void benchRss(const Options& o, const std::string& dir) {
  const std::string path = dir + "/rss.npy";
  writeShard(path, o.rows, o.d_in, 11);
  warmPageCache(path);
  sae::io::StreamOptions so;
  so.batch_size = o.batch;
  so.shuffle_buffer_rows = o.buffer_rows;
  so.seed = 1;
  const double mb = 1024.0 * 1024.0;
  const double budget = static_cast<double>(o.buffer_rows * o.d_in) * sizeof(float) / mb;
  const double dataset = static_cast<double>(o.rows * o.d_in) * sizeof(float) / mb;
  const double batchMb = static_cast<double>(o.batch * o.d_in) * sizeof(float) / mb;
  const double before = peakRssMb();
  {
    sae::io::ActivationStream<float> stream({path}, so);
    sae::RowMatrix<float> batch;
    const std::int64_t batches = 2 * stream.trainingRows() / o.batch;  // two epochs
    for (std::int64_t i = 0; i < batches; ++i) stream.next(batch);
  }
  const double peak = peakRssMb();
  const double other = peak - before - budget - batchMb;
  std::printf(
      "stream memory: dataset %.1f MB (%ld rows x %ld float32), shuffle buffer budget %.1f MB "
      "(%ld rows), two epochs\n"
      "  peak RSS (getrusage) %.1f MB = %.1f MB before the stream + %.1f MB budget + %.1f MB "
      "batch + %.1f MB other  [target: other small] %s\n",
      dataset, long(o.rows), long(o.d_in), budget, long(o.buffer_rows), peak, before, budget,
      batchMb, other, other <= 16.0 ? "OK" : "OVER");
  fs::remove(path);
}

void benchRead(const Options& o, const std::string& dir) {
  sae::setThreads(1);
  const std::string path = dir + "/read.npy";
  writeShard(path, o.rows, o.d_in, 12);
  warmPageCache(path);
  const double gb = static_cast<double>(o.rows * o.d_in) * sizeof(float) / 1e9;
  sae::RowMatrix<float> batch(o.batch, o.d_in);
  const sae::Index whole = o.rows / o.batch * o.batch;
  const double wholeGb = gb * static_cast<double>(whole) / static_cast<double>(o.rows);
  {
    // Memory-mapped NpyReader: the first pass faults the pages in, later ones are copies.
    const auto t0 = Clock::now();
    const sae::io::NpyReader reader(path);
    for (sae::Index r = 0; r < whole; r += o.batch) reader.readRows<float>(r, r + o.batch, batch);
    const double first = seconds(t0);
    const double t = medianTime(o.seconds, [&] {
      for (sae::Index r = 0; r < whole; r += o.batch) reader.readRows<float>(r, r + o.batch, batch);
    });
    std::printf(
        "read float32 rows, NpyReader (mmap), batches of %ld x %ld, 1 thread: %.2f GB/s "
        "(first pass, new mapping: %.2f GB/s)  [target >= 2 GB/s]\n",
        long(o.batch), long(o.d_in), wholeGb / t, wholeGb / first);
  }
  {
    // pread into the batch, as ActivationStream reads (no mapping, nothing left resident).
    sae::io::StreamOptions so;
    const sae::io::detail::ShardInfo shard = sae::io::detail::openShard(path, so);
    sae::io::detail::ShardRowReader reader;
    const double t = medianTime(o.seconds, [&] {
      for (sae::Index r = 0; r < whole; r += o.batch) {
        reader.read<float>(shard, r, r + o.batch, batch.data());
      }
    });
    std::printf(
        "read float32 rows, pread (ActivationStream's reader), 1 thread: %.2f GB/s  "
        "[target >= 2 GB/s]\n",
        wholeGb / t);
  }
  fs::remove(path);
}

void benchConvert(const Options& o) {
  sae::setThreads(1);
  const sae::Index n = sae::Index(1) << 25;  // 64 MB of 16-bit input
  std::vector<std::uint16_t> bits(static_cast<std::size_t>(n));
  sae::Rng rng(3);
  std::vector<float> out(static_cast<std::size_t>(n));
  struct Kind {
    sae::io::DType dtype;
    sae::io::ByteOrder order;
    const char* name;
  };
  for (const Kind k : {Kind{sae::io::DType::F16, sae::io::ByteOrder::Little, "float16"},
                       Kind{sae::io::DType::F16, sae::io::ByteOrder::Big, "float16 big-endian"},
                       Kind{sae::io::DType::BF16, sae::io::ByteOrder::Little, "bfloat16"}}) {
    // Finite values of the magnitude of activations (sign, exponent near the bias, mantissa).
    for (auto& b : bits) {
      const auto r = static_cast<std::uint16_t>(rng.nextU64());
      b = k.dtype == sae::io::DType::F16 ? static_cast<std::uint16_t>((r & 0x83ff) | 0x3800)
                                         : static_cast<std::uint16_t>((r & 0x807f) | 0x3f00);
    }
    const auto* src = reinterpret_cast<const unsigned char*>(bits.data());
    // convertElements is the one conversion loop of every reader and of the stream.
    const double t = medianTime(
        o.seconds, [&] { sae::io::detail::convertElements(src, k.dtype, k.order, n, out.data()); });
    const double gb = static_cast<double>(n) * 2.0 / 1e9;
    std::printf(
        "convert %s -> float32, in memory, 1 thread: %.2f GB/s of input (convertElements)  "
        "[target >= 1 GB/s]\n",
        k.name, gb / t);
  }
}

void benchConvertFile(const Options& o, const std::string& dir) {
  // float16 rows from a page-cached .npy into a batch, one thread.
  sae::setThreads(1);
  const std::string path = dir + "/f16.npy";
  {
    sae::io::AtomicFileWriter w(path);
    const std::string pre = sae::io::detail::npyPreamble("<f2", {o.rows, o.d_in});
    w.write(pre.data(), pre.size());
    sae::Rng rng(4);
    std::vector<std::uint16_t> chunk(static_cast<std::size_t>(1024 * o.d_in));
    for (sae::Index r = 0; r < o.rows; r += 1024) {
      for (auto& b : chunk) b = static_cast<std::uint16_t>((rng.nextU64() & 0x83ff) | 0x3800);
      w.write(chunk.data(),
              static_cast<std::size_t>(std::min<sae::Index>(1024, o.rows - r) * o.d_in) * 2);
    }
    w.commit();
  }
  warmPageCache(path);
  sae::RowMatrix<float> batch(o.batch, o.d_in);
  const sae::Index whole = o.rows / o.batch * o.batch;
  const double gb = static_cast<double>(whole * o.d_in) * 2.0 / 1e9;
  const sae::io::NpyReader reader(path);
  const double t = medianTime(o.seconds, [&] {
    for (sae::Index r = 0; r < whole; r += o.batch) reader.readRows<float>(r, r + o.batch, batch);
  });
  sae::io::StreamOptions so;
  const sae::io::detail::ShardInfo shard = sae::io::detail::openShard(path, so);
  sae::io::detail::ShardRowReader pread;
  const double tp = medianTime(o.seconds, [&] {
    for (sae::Index r = 0; r < whole; r += o.batch)
      pread.read<float>(shard, r, r + o.batch, batch.data());
  });
  std::printf(
      "read float16 rows into float32 batches, 1 thread: %.2f GB/s of input with "
      "ActivationStream's reader (pread), %.2f GB/s with NpyReader (mmap)  [target >= 1 GB/s]\n",
      gb / tp, gb / t);
  fs::remove(path);
}

void benchStream(const Options& o, const std::string& dir) {
  sae::setThreads(0);
  // Four shards of rows / 2 rows: a dataset of 2 x rows, shuffled through a buffer of rows.
  std::vector<std::string> shards;
  for (int s = 0; s < 4; ++s) {
    shards.push_back(dir + "/stream_" + std::to_string(s) + ".npy");
    writeShard(shards.back(), o.rows / 2, o.d_in, 20 + static_cast<std::uint64_t>(s));
    warmPageCache(shards.back());
  }
  sae::io::StreamOptions so;
  so.batch_size = o.batch;
  so.shuffle_buffer_rows = o.rows;
  const double gbPerRow = static_cast<double>(o.d_in) * sizeof(float) / 1e9;
  for (const bool prefetch : {true, false}) {
    so.prefetch = prefetch;
    const Rate r = streamRate(shards, so, 4.0, o);
    std::printf(
        "stream d_in %ld, batch %ld, shuffle buffer %ld rows, %ld rows, prefetch %s, %d "
        "OpenMP threads: %.0f rows/s (%.2f GB/s); %.0f rows per CPU-second\n",
        long(o.d_in), long(o.batch), long(o.rows), long(2 * o.rows), prefetch ? "on " : "off",
        sae::maxThreads(), r.wall, r.wall * gbPerRow, r.cpu);
  }
  so.prefetch = true;
  so.holdout_fraction = 0.01;
  so.max_norm_ratio = 10.0;
  const Rate r = streamRate(shards, so, 4.0, o);
  std::printf(
      "stream as above, prefetch on, 1%% hold-out and the outlier filter: %.0f rows/s "
      "(%.2f GB/s); %.0f rows per CPU-second\n",
      r.wall, r.wall * gbPerRow, r.cpu);
  for (const auto& s : shards) fs::remove(s);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"I/O benchmarks: row reads, fp16/bf16 conversion, streaming, stream memory."};
  app.add_option("--mode", o.mode, "all, rss, read, convert or stream")
      ->check(CLI::IsMember({"all", "rss", "read", "convert", "stream"}))
      ->capture_default_str();
  app.add_option("--d-in", o.d_in)->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--rows", o.rows, "rows of the test files")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--batch", o.batch)->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--buffer-rows", o.buffer_rows, "shuffle buffer of the memory test")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--dir", o.dir, "folder for the test files (default: the temp folder)");
  app.add_option("--seconds", o.seconds, "minimum time per measurement")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const fs::path base = o.dir.empty() ? fs::temp_directory_path() : fs::path(o.dir);
  const std::string dir = (base / ("sae_bench_io_" + std::to_string(::getpid()))).string();
  fs::create_directories(dir);
  try {
    if (o.mode == "all" || o.mode == "rss") benchRss(o, dir);  // first: nothing allocated yet
    if (o.mode == "all" || o.mode == "read") benchRead(o, dir);
    if (o.mode == "all" || o.mode == "convert") {
      benchConvert(o);
      benchConvertFile(o, dir);
    }
    if (o.mode == "all" || o.mode == "stream") benchStream(o, dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_io: %s\n", e.what());
    fs::remove_all(dir);
    return 1;
  }
  fs::remove_all(dir);
  return 0;
}

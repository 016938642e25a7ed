/// @file activation_stream.hpp
/// @brief ActivationStream: shuffled batches of activation rows streamed from many shards
/// (.npy, .npz, .safetensors, raw), with a hold-out split, an outlier filter, a NaN policy and
/// a background prefetch thread; expandShardPaths().
///
/// ## Rows
/// The shards (files, directories or glob patterns, expanded by expandShardPaths()) are
/// concatenated in order into one global sequence of rows, numbered 0..totalRows()-1. Each shard
/// is one array seen as `[rows, d_in]` (leading dimensions flattened: `[batch, seq, d]` ->
/// `[batch*seq, d]`); every shard must have the same d_in, which is checked when the stream is
/// built. A row is *held out* for evaluation when a hash of (seed, global row index) falls below
/// holdout_fraction, so the split does not depend on anything else (not on the shuffle buffer,
/// the batch size or the epoch); holdout() returns those rows and next() never does.
///
/// ## The windowed shuffle, and positions
/// The global rows are cut into fixed blocks of block_rows consecutive rows. Each epoch `e`
/// visits the blocks in the order of a pseudo-random permutation keyed by (seed, e) (a Feistel
/// network with cycle walking: O(1) memory, any slot computed directly). Consecutive runs of
/// `shuffle_buffer_rows / 2 / block_rows` blocks of that order form the *windows* of the epoch.
/// A window is read as a whole, its held-out and filtered rows are set aside, and the remaining
/// rows are served in the order of a Fisher-Yates shuffle drawn from sae::Rng keyed by
/// (seed, e, window). Batches take rows in that order, running on into the next window and the
/// next epoch as needed, so next() always fills a whole batch.
///
/// A position is therefore (epoch, window, offset): the next row to serve is row `offset` of the
/// shuffled window `window` of epoch `epoch`. seek() reads that one window (nothing before it)
/// and the stream then continues bit-for-bit as the stream that reached the position. Nothing in
/// the sequence depends on `prefetch` or on timing.
///
/// ## Parts
/// With StreamOptions::parts = P > 1 the blocks are dealt out like cards: the stream of part p
/// owns the blocks b with b % P == p and nothing else, so P streams built from the same shard
/// list and options (one per rank of a data-parallel run) read disjoint rows that together
/// cover the dataset, each knowing its share from the list alone. Each part shuffles its own
/// blocks as above (the permutation is over its blocks, the windows are of its blocks);
/// positions are per part. The hold-out rows are the same for every part (holdout() serves the
/// whole dataset's), and a part's drop counters count its own blocks.
///
/// ## Memory
/// The stream holds at most two windows of `shuffle_buffer_rows / 2` rows each (the one being
/// served and, with prefetch, the next one being read): `shuffle_buffer_rows * d_in *
/// sizeof(Scalar)` bytes, plus 4 bytes per buffered row of index lists, a 1 MiB read buffer per
/// reading thread and one bit per block. Without prefetch only one window is allocated. Shard
/// files are read with pread(2), not memory-mapped, so the page cache does not count against the
/// process and a file truncated on disk is reported as an IoError instead of a SIGBUS.
///
/// ## Filters
/// - Non-finite values: with NanPolicy::Error (default) a NaN or infinity in a training row
///   throws NumericError naming the shard and the row when the window holding it is read; with
///   NanPolicy::Skip the row is dropped and counted in droppedNonFinite().
/// - Outliers (max_norm_ratio > 0): rows whose L2 norm exceeds max_norm_ratio times the median
///   norm are dropped and counted in droppedOutliers() (the BOS-token problem: the first token of
///   a context often has a norm many times larger than the rest). The median is taken over a
///   fixed sample of norm_sample_rows rows evenly spaced through the dataset (non-finite ones
///   left out), read once when the stream is built. Norms are accumulated in double, in a fixed
///   order.
/// The drop counters count distinct rows: a block's drops are counted the first time a batch
/// takes rows from the window holding it, so after one full epoch they are the dataset totals.
///
/// ## Threads
/// With prefetch, a background thread reads the window after the one being served. An exception
/// it raises (a NaN under NanPolicy::Error, a file deleted or truncated on disk) is re-thrown by
/// next() when the stream reaches that window, with its type and message; the batch is then not
/// produced and position() is unchanged. The destructor stops and joins the thread. The stream
/// is neither copyable nor movable (hold it in a std::unique_ptr to move it); its const methods
/// may be called while another thread is not calling next() or seek().
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/core/rng.hpp>
#include <sae/core/types.hpp>
#include <sae/io/array_view.hpp>
#include <sae/io/dtype.hpp>
#include <sae/io/mapped_file.hpp>
#include <sae/io/npy.hpp>
#include <sae/io/npz.hpp>
#include <sae/io/raw.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/kernels/reduce.hpp>

namespace sae::io {

/// @brief What to do with a row holding NaN or infinity.
enum class NanPolicy {
  Error,  ///< Throw NumericError naming the shard and the row (default).
  Skip    ///< Drop the row and count it (ActivationStream::droppedNonFinite()).
};

/// @brief Options of an ActivationStream; see the file comment for their exact meaning.
struct StreamOptions {
  Index batch_size = 4096;                  ///< Rows per batch, > 0.
  std::uint64_t seed = 0;                   ///< Seed of the shuffle and of the hold-out choice.
  Index shuffle_buffer_rows = 1 << 18;      ///< Rows held at once (both windows), >= 2.
  double holdout_fraction = 0.0;            ///< Fraction of rows reserved for evaluation, [0, 1).
  double max_norm_ratio = 0.0;              ///< > 0: drop rows with norm > ratio * median norm.
  NanPolicy nan_policy = NanPolicy::Error;  ///< NaN / Inf rows: error or skip.
  bool prefetch = true;                     ///< Read the next window on a background thread.
  std::string tensor_name;       ///< npz / safetensors: which array; empty = the only 2-D/3-D one.
  DType raw_dtype = DType::F32;  ///< Element type of raw files (.bin / .raw), little-endian.
  Index raw_cols = 0;            ///< Columns of raw files; required (> 0) when there are any.
  /// Rows per shuffled block; 0 = automatic (window rows / 64, >= 1; with parts > 1 also at
  /// most total rows / (16 * parts), so that every part gets 16 blocks).
  Index block_rows = 0;
  Index norm_sample_rows = 4096;  ///< Rows sampled to estimate the median norm, > 0.
  /// Data-parallel training: this stream serves only the blocks `b` with `b % parts == part`
  /// (see "Parts" in the file comment); parts = 1 (default) serves them all.
  int part = 0;
  int parts = 1;  ///< Number of disjoint parts the blocks are dealt into, >= 1.
};

/// @brief Where a stream is: the next row is row `offset` of the shuffled window `window` of
/// epoch `epoch`, after `batches` batches. Store it in a checkpoint, restore with seek().
struct StreamPosition {
  std::int64_t epoch = 0;    ///< Epoch of the next row.
  std::int64_t window = 0;   ///< Window of that epoch.
  std::int64_t offset = 0;   ///< Row of that window, in its shuffled order.
  std::int64_t batches = 0;  ///< Batches returned so far.

  /// @brief `{"epoch": .., "window": .., "offset": .., "batches": ..}`.
  nlohmann::json toJson() const {
    return {{"epoch", epoch}, {"window", window}, {"offset", offset}, {"batches", batches}};
  }
  /// @brief Inverse of toJson(); ConfigError naming a missing, non-integer or negative field.
  static StreamPosition fromJson(const nlohmann::json& j) {
    auto field = [&j](const char* name) {
      require(j.is_object() && j.contains(name) && j.at(name).is_number_integer() &&
                  j.at(name).get<std::int64_t>() >= 0,
              "StreamPosition: field '", name, "' must be a non-negative integer");
      return j.at(name).get<std::int64_t>();
    };
    StreamPosition p;
    p.epoch = field("epoch");
    p.window = field("window");
    p.offset = field("offset");
    p.batches = field("batches");
    return p;
  }

  bool operator==(const StreamPosition& o) const {
    return epoch == o.epoch && window == o.window && offset == o.offset && batches == o.batches;
  }
  bool operator!=(const StreamPosition& o) const { return !(*this == o); }
};

namespace detail {

/// File name extensions of shards, lower case.
inline const std::vector<std::string>& shardExtensions() {
  static const std::vector<std::string> ext = {".npy", ".npz", ".safetensors", ".bin", ".raw"};
  return ext;
}

/// "(.npy, .npz, .safetensors, .bin, .raw files)", for messages.
inline std::string shardExtensionList() {
  std::string s = "(";
  for (const auto& e : shardExtensions()) s += (s.size() > 1 ? ", " : "") + e;
  return s + " files)";
}

/// Lower-case extension of a path, "" when none.
inline std::string lowerExtension(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

inline bool isShardName(const std::string& path) {
  const std::string ext = lowerExtension(path);
  const std::string name = std::filesystem::path(path).filename().string();
  if (name.empty() || name[0] == '.') return false;  // hidden files
  const auto& all = shardExtensions();
  return std::find(all.begin(), all.end(), ext) != all.end();
}

inline bool isRegularShardFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace detail

/// @brief Expands shard specifications into the list of shard files.
///
/// Each spec is a file, a directory (its regular files ending in .npy, .npz, .safetensors, .bin
/// or .raw, not recursive, hidden files left out) or a glob pattern (`*`, `?`, `[...]`; the
/// matching regular files with those extensions). Directories and patterns expand to their
/// files in lexicographic order; the specs keep the order given.
/// @param specs Files, directories, glob patterns.
/// @return The shard paths. Throws ConfigError for an empty list, a directory or pattern with
///         no shards, a file with another extension or a shard listed twice; IoError for a
///         missing file or directory.
inline std::vector<std::string> expandShardPaths(const std::vector<std::string>& specs) {
  using sae::detail::concat;
  namespace fs = std::filesystem;
  require(!specs.empty(), "ActivationStream: no shards given (an empty list of paths)");
  std::vector<std::string> out;
  for (const std::string& spec : specs) {
    require(!spec.empty(), "ActivationStream: an empty shard path");
    std::vector<std::string> found;
    if (spec.find_first_of("*?[") != std::string::npos) {
      glob_t g{};
      const int rc = ::glob(spec.c_str(), 0, nullptr, &g);
      if (rc == 0) {
        for (std::size_t i = 0; i < g.gl_pathc; ++i) {
          const std::string p = g.gl_pathv[i];
          if (detail::isShardName(p) && detail::isRegularShardFile(p)) found.push_back(p);
        }
      }
      ::globfree(&g);
      if (rc != 0 && rc != GLOB_NOMATCH) {
        throw IoError(concat(spec, ": cannot expand the pattern (glob error ", rc, ")"));
      }
      require(!found.empty(), "ActivationStream: the pattern '", spec, "' matches no shards ",
              detail::shardExtensionList());
      std::sort(found.begin(), found.end());
    } else {
      struct stat st {};
      if (::stat(spec.c_str(), &st) != 0) {
        const int err = errno;
        throw IoError(concat(spec, ": cannot open for reading: ", detail::errnoText(err)));
      }
      if (S_ISDIR(st.st_mode)) {
        std::error_code ec;
        for (fs::directory_iterator it(spec, ec), end; !ec && it != end; it.increment(ec)) {
          const std::string p = it->path().string();
          if (detail::isShardName(p) && detail::isRegularShardFile(p)) found.push_back(p);
        }
        if (ec) throw IoError(concat(spec, ": cannot list the directory: ", ec.message()));
        require(!found.empty(), "ActivationStream: the directory '", spec, "' contains no shards ",
                detail::shardExtensionList());
        std::sort(found.begin(), found.end());
      } else {
        const std::string ext = detail::lowerExtension(spec);
        const auto& all = detail::shardExtensions();
        require(std::find(all.begin(), all.end(), ext) != all.end(), "ActivationStream: '", spec,
                "' is not a shard: the extension must be one of .npy, .npz, .safetensors, .bin, "
                ".raw");
        found.push_back(spec);
      }
    }
    out.insert(out.end(), found.begin(), found.end());
  }
  std::map<std::string, std::string> seen;  // canonical path -> as given
  for (const std::string& p : out) {
    std::error_code ec;
    fs::path canonical = fs::weakly_canonical(fs::path(p), ec);
    const std::string key = ec ? p : canonical.string();
    const auto [it, inserted] = seen.emplace(key, p);
    require(inserted, "ActivationStream: shard '", p, "' is listed twice",
            it->second == p ? std::string() : concat(" (also as '", it->second, "')"));
  }
  return out;
}

namespace detail {

/// SplitMix64's output function: a bijective 64-bit mixer.
inline std::uint64_t mix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// A key derived from two values.
inline std::uint64_t hashKey(std::uint64_t a, std::uint64_t b) { return mix64(a ^ mix64(b)); }

/// Domain tags, so that the keys of different uses of the seed never coincide.
inline constexpr std::uint64_t kTagHoldout = 0x686f6c646f7574ULL;  // "holdout"
inline constexpr std::uint64_t kTagBlocks = 0x626c6f636b73ULL;     // "blocks"
inline constexpr std::uint64_t kTagRows = 0x726f7773ULL;           // "rows"

/// @brief Hold-out membership of global row `g`: a uniform number from (seed, g) below the
/// fraction. `key` is hashKey(seed, kTagHoldout).
inline bool isHeldOut(std::uint64_t key, std::int64_t g, double fraction) {
  if (fraction <= 0.0) return false;
  const std::uint64_t h = hashKey(key, static_cast<std::uint64_t>(g));
  return static_cast<double>(h >> 11) * 0x1.0p-53 < fraction;
}

/// @brief A keyed pseudo-random permutation of [0, n): a 4-round balanced Feistel network on
/// the smallest even number of bits covering n, with cycle walking back into [0, n). O(1)
/// memory; any element is computed directly, on average in under 4 network evaluations.
class FeistelPermutation {
 public:
  FeistelPermutation(std::uint64_t n, std::uint64_t key) : m_n(n), m_key(key) {
    int bits = 2;
    while (bits < 64 && (std::uint64_t(1) << bits) < n) bits += 2;
    m_half = bits / 2;
    m_mask = (std::uint64_t(1) << m_half) - 1;
  }

  /// @brief The image of `i` (< n).
  std::uint64_t operator()(std::uint64_t i) const {
    std::uint64_t x = i;
    do {
      x = encrypt(x);
    } while (x >= m_n);
    return x;
  }

 private:
  std::uint64_t encrypt(std::uint64_t x) const {
    std::uint64_t left = x >> m_half;
    std::uint64_t right = x & m_mask;
    for (std::uint64_t round = 0; round < 4; ++round) {
      const std::uint64_t f = hashKey(m_key ^ (round << 58), right) & m_mask;
      const std::uint64_t next = left ^ f;
      left = right;
      right = next;
    }
    return (left << m_half) | right;
  }

  std::uint64_t m_n;
  std::uint64_t m_key;
  int m_half = 1;
  std::uint64_t m_mask = 1;
};

/// Kind of shard file.
enum class ShardFormat { Npy, Npz, Safetensors, Raw };

/// @brief One shard: the array's location and layout inside its file.
struct ShardInfo {
  std::string path;   ///< The file.
  std::string where;  ///< The file, plus ": array 'x'" / ": tensor 'x'".
  ShardFormat format = ShardFormat::Npy;
  std::uint64_t fileSize = 0;    ///< Size when opened.
  std::uint64_t dataOffset = 0;  ///< First data byte of the array in the file.
  DType dtype = DType::F32;
  ByteOrder order = ByteOrder::Little;
  bool fortran = false;
  std::vector<Index> shape;
  Index rows = 0;
  Index cols = 0;
};

/// "a (3, 4)" list of candidate arrays, for messages.
inline std::string describeArrays(
    const std::vector<std::pair<std::string, std::vector<Index>>>& a) {
  std::string s;
  for (std::size_t i = 0; i < a.size() && i < 20; ++i) {
    s += (i ? ", " : "") + a[i].first + " " + shapeString(a[i].second, true);
  }
  if (a.size() > 20) s += sae::detail::concat(" and ", a.size() - 20, " more");
  return a.empty() ? "none" : s;
}

/// Picks the array to stream from a multi-array file: `wanted` if given, else the only one with
/// 2 or 3 dimensions among `arrays` (name, shape; readable ones only).
inline std::string chooseArray(
    const std::string& path, const std::string& wanted,
    const std::vector<std::pair<std::string, std::vector<Index>>>& arrays, const char* kind) {
  if (!wanted.empty()) return wanted;
  std::vector<std::string> candidates;
  for (const auto& [name, shape] : arrays) {
    if (shape.size() == 2 || shape.size() == 3) candidates.push_back(name);
  }
  if (candidates.size() != 1) {
    throw ConfigError(sae::detail::concat(
        path, ": cannot choose the ", kind, " to stream: ", candidates.size(), " ", kind,
        "s have 2 or 3 dimensions (", describeArrays(arrays), "); set StreamOptions::tensor_name"));
  }
  return candidates.front();
}

/// @brief Opens and validates one shard with the library's readers and records its layout.
inline ShardInfo openShard(const std::string& path, const StreamOptions& options) {
  using sae::detail::concat;
  ShardInfo s;
  s.path = path;
  s.where = path;
  const std::string ext = lowerExtension(path);
  if (ext == ".npy") {
    const NpyReader r(path);
    s.format = ShardFormat::Npy;
    s.dataOffset = r.dataOffset();
    s.dtype = r.dtype();
    s.order = r.byteOrder();
    s.fortran = r.fortranOrder();
    s.shape = r.shape();
    s.rows = r.rows();
    s.cols = r.cols();
  } else if (ext == ".npz") {
    const NpzFile z(path);
    std::vector<std::pair<std::string, std::vector<Index>>> arrays;
    for (const auto& name : z.names()) arrays.emplace_back(name, z.info(name).shape);
    const NpzArrayInfo& a = z.info(chooseArray(path, options.tensor_name, arrays, "array"));
    s.format = ShardFormat::Npz;
    s.where = concat(path, ": array '", a.name, "'");
    s.dataOffset = a.dataOffset;
    detail::copyArrayLayout(s, a, a.rows, a.cols);
  } else if (ext == ".safetensors") {
    const SafetensorsFile f(path);
    std::vector<std::pair<std::string, std::vector<Index>>> arrays;
    for (const auto& name : f.names()) {
      if (f.info(name).readable) arrays.emplace_back(name, f.info(name).shape);
    }
    const std::string name = chooseArray(path, options.tensor_name, arrays, "tensor");
    const TensorInfo& t = f.info(name);
    if (!t.readable) {
      throw FormatError(concat(path, ": tensor '", name, "' has dtype ", t.dtype,
                               ", which cannot be read (readable dtypes: F32, F64, F16, BF16)"));
    }
    s.format = ShardFormat::Safetensors;
    s.where = concat(path, ": tensor '", name, "'");
    s.dataOffset = t.fileOffset;
    s.dtype = findSafetensorsDType(t.dtype)->dtype;
    s.order = ByteOrder::Little;
    s.shape = t.shape;
    s.rows = t.rows;
    s.cols = t.cols;
  } else if (ext == ".bin" || ext == ".raw") {
    require(options.raw_cols > 0,
            "StreamOptions::raw_cols must be positive to read the raw shard '", path, "', found ",
            options.raw_cols);
    const RawReader r(path, options.raw_dtype, options.raw_cols);
    s.format = ShardFormat::Raw;
    s.dtype = r.dtype();
    s.order = r.byteOrder();
    s.shape = {r.rows(), r.cols()};
    s.rows = r.rows();
    s.cols = r.cols();
  } else {
    throw ConfigError(concat("ActivationStream: '", path,
                             "' is not a shard: the extension must be one of .npy, .npz, "
                             ".safetensors, .bin, .raw"));
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    throw IoError(concat(path, ": cannot stat: ", errnoText(err)));
  }
  s.fileSize = static_cast<std::uint64_t>(st.st_size);
  return s;
}

/// @brief Reads rows of shards with pread(2), converting into float or double.
///
/// Holds a bounded read buffer (1 MiB) for conversions; float32 into float (and float64 into
/// double) in the machine's byte order are read straight into the output. One reader per
/// thread.
class ShardRowReader {
 public:
  static constexpr std::size_t kStagingBytes = std::size_t(1) << 20;

  /// @brief Converts rows [begin, end) of `s` into `dst` (row-major, `s.cols` per row).
  template <typename Scalar>
  void read(const ShardInfo& s, Index begin, Index end, Scalar* dst) {
    const Index n = end - begin;
    if (n <= 0 || s.cols == 0) return;
    const int fd = ::open(s.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      throw IoError(sae::detail::concat(s.path, ": cannot open for reading: ", errnoText(err)));
    }
    FdGuard guard(fd);
    if (s.fortran) {
      readFortran(fd, s, begin, n, dst);
    } else {
      readC(fd, s, begin, n, dst);
    }
  }

 private:
  template <typename Scalar>
  void readC(int fd, const ShardInfo& s, Index begin, Index n, Scalar* dst) {
    const std::size_t isz = dtypeSize(s.dtype);
    const std::uint64_t offset =
        s.dataOffset + static_cast<std::uint64_t>(begin) * static_cast<std::uint64_t>(s.cols) * isz;
    const std::uint64_t elements =
        static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(s.cols);
    const bool direct =
        s.order == kNativeByteOrder && ((std::is_same_v<Scalar, float> && s.dtype == DType::F32) ||
                                        (std::is_same_v<Scalar, double> && s.dtype == DType::F64));
    if (direct) {
      readFully(fd, s, dst, elements * isz, offset);
      return;
    }
    const std::uint64_t chunk = kStagingBytes / isz;
    m_staging.resize(kStagingBytes);
    for (std::uint64_t done = 0; done < elements;) {
      const std::uint64_t count = std::min(chunk, elements - done);
      readFully(fd, s, m_staging.data(), count * isz, offset + done * isz);
      convertElements(m_staging.data(), s.dtype, s.order, static_cast<Index>(count), dst + done);
      done += count;
    }
  }

  // Element (r, k) of the flattened view of a Fortran-order array lives at offset(r) + k * rows
  // (array_view.hpp); runs of rows with consecutive offsets are read per column in one piece.
  template <typename Scalar>
  void readFortran(int fd, const ShardInfo& s, Index begin, Index n, Scalar* dst) {
    const std::vector<Index> offset = detail::fortranRowOffsets(s.shape, begin, n);
    const std::size_t isz = dtypeSize(s.dtype);
    const Index chunk = static_cast<Index>(kStagingBytes / isz);
    m_staging.resize(kStagingBytes);
    std::vector<Scalar> values(static_cast<std::size_t>(chunk));
    for (const auto& [i, len] : detail::consecutiveRuns(offset)) {
      for (Index k = 0; k < s.cols; ++k) {
        for (Index done = 0; done < len;) {
          const Index count = std::min(chunk, len - done);
          const Index elem = offset[static_cast<std::size_t>(i)] + done + k * s.rows;
          readFully(fd, s, m_staging.data(), static_cast<std::uint64_t>(count) * isz,
                    s.dataOffset + static_cast<std::uint64_t>(elem) * isz);
          convertElements(m_staging.data(), s.dtype, s.order, count, values.data());
          for (Index j = 0; j < count; ++j) {
            dst[(i + done + j) * s.cols + k] = values[static_cast<std::size_t>(j)];
          }
          done += count;
        }
      }
    }
  }

  static void readFully(int fd, const ShardInfo& s, void* buffer, std::uint64_t bytes,
                        std::uint64_t offset) {
    auto* p = static_cast<unsigned char*>(buffer);
    std::uint64_t done = 0;
    while (done < bytes) {
      const std::size_t want =
          static_cast<std::size_t>(std::min<std::uint64_t>(bytes - done, std::uint64_t(1) << 30));
      const ssize_t got = ::pread(fd, p + done, want, static_cast<off_t>(offset + done));
      if (got < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        throw IoError(sae::detail::concat(s.path, ": cannot read ", want, " bytes at offset ",
                                          offset + done, ": ", errnoText(err)));
      }
      if (got == 0) {
        struct stat st {};
        const std::uint64_t now =
            ::fstat(fd, &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : offset + done;
        throw IoError(sae::detail::concat(s.path, ": file truncated on disk: reading ", bytes,
                                          " bytes at offset ", offset, " needs ", offset + bytes,
                                          " bytes, the file now has ", now, " (it had ", s.fileSize,
                                          " when the stream opened it)"));
      }
      done += static_cast<std::uint64_t>(got);
    }
  }

  std::vector<unsigned char> m_staging;
};

/// Name of a non-finite value for messages: "nan", "inf", "-inf".
inline const char* nonFiniteName(double v) {
  if (std::isnan(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}

}  // namespace detail

/// @brief Shuffled batches of activation rows streamed from a list of shards.
///
/// See the file comment for the shuffle, positions, memory bound, filters and threads.
///
/// @code
/// sae::io::StreamOptions opts;
/// opts.batch_size = 4096;
/// opts.shuffle_buffer_rows = 1 << 20;
/// opts.holdout_fraction = 0.01;
/// sae::io::ActivationStream<float> stream({"acts/"}, opts);
/// sae::RowMatrix<float> batch;
/// for (;;) {
///   stream.next(batch);                         // [4096, d_in]
///   ...
///   checkpoint["stream"] = stream.position().toJson();
/// }
/// // Resume: stream.seek(sae::io::StreamPosition::fromJson(checkpoint["stream"]));
/// @endcode
///
/// @tparam Scalar float or double.
template <typename Scalar_>
class ActivationStream {
 public:
  using Scalar = Scalar_;
  static_assert(kFloatOrDouble<Scalar>, "ActivationStream serves float or double rows");

  /// @brief Opens every shard, checks them and the options, and estimates the median norm.
  /// @param specs Files, directories and glob patterns (see expandShardPaths()).
  /// @param options See StreamOptions. Throws ConfigError naming the option at fault, or the
  ///        shard whose d_in differs from the others; IoError / FormatError for unreadable or
  ///        malformed shards.
  ActivationStream(const std::vector<std::string>& specs, const StreamOptions& options)
      : m_opt(options) {
    using sae::detail::concat;
    validateOptions();
    m_paths = expandShardPaths(specs);
    m_shards.reserve(m_paths.size());
    for (const std::string& p : m_paths) m_shards.push_back(detail::openShard(p, m_opt));
    checkDIn();
    m_starts.assign(1, 0);
    for (const auto& s : m_shards) {
      std::int64_t next = 0;
      require(!__builtin_add_overflow(m_starts.back(), s.rows, &next),
              "ActivationStream: the shards hold more rows than fit in 64 bits");
      m_starts.push_back(next);
    }
    m_total = m_starts.back();
    require(m_total > 0, "ActivationStream: the shards hold no rows (", m_shards.size(), " shard",
            m_shards.size() == 1 ? "" : "s", ", all empty)");

    m_holdoutKey = detail::hashKey(m_opt.seed, detail::kTagHoldout);
    std::int64_t held = 0;
    if (m_opt.holdout_fraction > 0.0) {
      const std::int64_t total = m_total;
      const std::uint64_t key = m_holdoutKey;
      const double fraction = m_opt.holdout_fraction;
      SAE_PRAGMA_OMP(parallel for schedule(static) reduction(+ : held) if (total >= (1 << 20)))
      for (std::int64_t g = 0; g < total; ++g) held += detail::isHeldOut(key, g, fraction) ? 1 : 0;
    }
    m_training = m_total - held;
    require(m_training > 0, "StreamOptions::holdout_fraction ", m_opt.holdout_fraction,
            " holds out all ", m_total, " rows: no training rows remain");

    m_windowRows = m_opt.shuffle_buffer_rows / 2;
    m_blockRows = m_opt.block_rows > 0 ? m_opt.block_rows : std::max<Index>(1, m_windowRows / 64);
    // Automatic blocks with several parts: small enough that each part gets 16 of them.
    if (m_opt.block_rows == 0 && m_opt.parts > 1)
      m_blockRows = std::max<Index>(1, std::min<Index>(m_blockRows, m_total / (16 * m_opt.parts)));
    m_blocksPerWindow = m_windowRows / m_blockRows;
    m_numBlocks = (m_total + m_blockRows - 1) / m_blockRows;
    m_partBlocks = (m_numBlocks - m_opt.part + m_opt.parts - 1) / m_opt.parts;
    require(m_partBlocks > 0, "ActivationStream: the data has ", m_numBlocks, " block",
            m_numBlocks == 1 ? "" : "s", " of ", m_blockRows, " rows, fewer than the ", m_opt.parts,
            " parts it is to be dealt into (one per rank): use more data or a "
            "smaller StreamOptions::block_rows");
    m_numWindows = (m_partBlocks + m_blocksPerWindow - 1) / m_blocksPerWindow;
    m_blockCounted.assign(static_cast<std::size_t>(m_numBlocks), false);

    if (m_opt.max_norm_ratio > 0.0) estimateMedianNorm();
    if (m_opt.prefetch) m_thread = std::thread([this] { workerLoop(); });
  }

  /// @brief Stops and joins the prefetch thread.
  ~ActivationStream() {
    if (m_thread.joinable()) {
      {
        std::lock_guard<std::mutex> lock(m_mutex);
        m_stop = true;
        m_cancel = true;
      }
      m_cv.notify_all();
      m_thread.join();
    }
  }

  ActivationStream(const ActivationStream&) = delete;
  ActivationStream& operator=(const ActivationStream&) = delete;
  ActivationStream(ActivationStream&&) = delete;
  ActivationStream& operator=(ActivationStream&&) = delete;

  /// @brief Columns of every row (the shards' common last dimension).
  Index dIn() const { return m_dIn; }
  /// @brief Rows in all shards.
  std::int64_t totalRows() const { return m_total; }
  /// @brief Rows not held out (before the NaN and outlier filters).
  std::int64_t trainingRows() const { return m_training; }
  /// @brief Rows held out for evaluation.
  std::int64_t holdoutRows() const { return m_total - m_training; }
  /// @brief The shard files, in stream order.
  const std::vector<std::string>& shardPaths() const { return m_paths; }
  /// @brief Rows per shuffled block.
  Index blockRows() const { return m_blockRows; }
  /// @brief Rows per window (shuffle_buffer_rows / 2).
  Index windowRows() const { return m_windowRows; }
  /// @brief Windows per epoch.
  std::int64_t windowsPerEpoch() const { return m_numWindows; }

  /// @brief Fills `batch` with the next batch_size rows, `[batch_size, d_in]` (resized if
  /// needed), running on into the next epoch as needed.
  ///
  /// Throws what reading the rows throws (NumericError for a NaN under NanPolicy::Error,
  /// IoError for a file gone or truncated on disk, also when raised on the prefetch thread);
  /// the position is then unchanged. ConfigError when a whole epoch yields no rows (every
  /// training row dropped by the filters).
  void next(RowMatrix<Scalar>& batch) {
    const Index b = m_opt.batch_size;
    if (batch.rows() != b || batch.cols() != m_dIn) batch.resize(b, m_dIn);
    const StreamPosition saved = m_pos;
    const std::int64_t savedEmptyRun = m_emptyRun;
    m_pendingDrops.clear();
    try {
      Index filled = 0;
      std::pair<std::int64_t, std::int64_t> merged{-1, -1};
      while (filled < b) {
        Window& w = current();
        if (merged != std::make_pair(w.epoch, w.window)) {
          merged = {w.epoch, w.window};
          m_pendingDrops.insert(m_pendingDrops.end(), w.drops.begin(), w.drops.end());
        }
        const Index avail = static_cast<Index>(w.order.size()) - m_pos.offset;
        if (avail <= 0) {
          if (++m_emptyRun >= m_numWindows) {
            throw ConfigError(sae::detail::concat(
                "ActivationStream: a whole epoch (", m_numWindows,
                " windows) yielded no rows: every training row was dropped by the NaN policy or "
                "the outlier filter"));
          }
          advanceWindow();
          continue;
        }
        m_emptyRun = 0;
        const Index take = std::min(avail, b - filled);
        const Index d = m_dIn;
        const std::uint32_t* order = w.order.data() + m_pos.offset;
        const Scalar* src = w.rows.data();
        Scalar* dst = batch.data() + filled * d;
        // One thread: a batch is a few MB of copies, and an OpenMP team here would spin on
        // the cores the prefetch thread and the caller's kernels need.
        for (Index i = 0; i < take; ++i) {
          std::memcpy(dst + i * d, src + static_cast<Index>(order[i]) * d,
                      static_cast<std::size_t>(d) * sizeof(Scalar));
        }
        filled += take;
        m_pos.offset += take;
        if (m_pos.offset == static_cast<std::int64_t>(w.order.size())) advanceWindow();
      }
    } catch (...) {
      m_pos = saved;
      m_emptyRun = savedEmptyRun;
      m_pendingDrops.clear();
      throw;
    }
    commitDrops();
    ++m_pos.batches;
  }

  /// @brief Epoch of the next row (0 for a fresh stream).
  std::int64_t epoch() const { return m_pos.epoch; }

  /// @brief The position after the last batch returned (see StreamPosition).
  StreamPosition position() const { return m_pos; }

  /// @brief Continues exactly as a stream that had reached `pos`, reading only its window.
  /// Throws ConfigError for a position outside this dataset's epochs / windows / window rows
  /// (a position from other shards or options), or what reading the window throws.
  void seek(const StreamPosition& pos) {
    require(pos.epoch >= 0 && pos.batches >= 0 && pos.offset >= 0,
            "ActivationStream::seek: epoch, offset and batches must be non-negative, found epoch ",
            pos.epoch, ", offset ", pos.offset, ", batches ", pos.batches);
    require(pos.window >= 0 && pos.window < m_numWindows, "ActivationStream::seek: window ",
            pos.window, " is out of range: an epoch has ", m_numWindows, " windows");
    cancelPrefetch();
    if (m_cur < 0) m_cur = 0;
    Window& w = m_windows[static_cast<std::size_t>(m_cur)];
    w.valid = false;
    loadWindow(pos.epoch, pos.window, w, nullptr);
    require(pos.offset <= static_cast<std::int64_t>(w.order.size()),
            "ActivationStream::seek: offset ", pos.offset, " is past the ", w.order.size(),
            " rows of window ", pos.window, " of epoch ", pos.epoch,
            " (a position of another dataset or other options?)");
    m_pos = pos;
    m_emptyRun = 0;
    if (m_pos.offset == static_cast<std::int64_t>(w.order.size())) advanceWindow();
    schedulePrefetch();
  }

  /// @brief The first `max_rows` hold-out rows in global row order, after the NaN policy and
  /// the outlier filter (fewer when there are fewer). Deterministic for a seed.
  RowMatrix<Scalar> holdout(Index max_rows) const {
    require(max_rows >= 0, "ActivationStream::holdout: max_rows must be non-negative, found ",
            max_rows);
    std::vector<Scalar> out;
    if (m_opt.holdout_fraction <= 0.0 || max_rows == 0) return RowMatrix<Scalar>(0, m_dIn);
    detail::ShardRowReader reader;
    std::vector<Scalar> row(static_cast<std::size_t>(m_dIn));
    Index count = 0;
    for (std::int64_t g = 0; g < m_total && count < max_rows; ++g) {
      if (!detail::isHeldOut(m_holdoutKey, g, m_opt.holdout_fraction)) continue;
      readGlobal(reader, g, g + 1, row.data());
      if (rejectRow(g, row.data()) != Verdict::Keep) continue;
      out.insert(out.end(), row.begin(), row.end());
      ++count;
    }
    RowMatrix<Scalar> m(count, m_dIn);
    if (count > 0) std::memcpy(m.data(), out.data(), out.size() * sizeof(Scalar));
    return m;
  }

  /// @brief Distinct training rows dropped for NaN / infinity (NanPolicy::Skip) so far.
  std::int64_t droppedNonFinite() const { return m_droppedNonFinite; }
  /// @brief Distinct training rows dropped by the outlier filter so far.
  std::int64_t droppedOutliers() const { return m_droppedOutliers; }
  /// @brief The median row norm the outlier filter compares with (0 when the filter is off).
  double medianNorm() const { return m_median; }

 private:
  /// Drops of one block: (block, non-finite rows, outlier rows).
  struct BlockDrops {
    std::int64_t block;
    std::int64_t nonFinite;
    std::int64_t outliers;
  };

  /// One loaded window: its rows as read (held-out and dropped ones included) and the shuffled
  /// indices of the rows to serve.
  struct Window {
    std::int64_t epoch = -1;
    std::int64_t window = -1;
    bool valid = false;
    RowMatrix<Scalar> rows;
    std::vector<std::uint32_t> order;
    std::vector<BlockDrops> drops;
    detail::ShardRowReader reader;
  };

  enum class Verdict { Keep, NonFinite, Outlier };
  enum class JobState { Idle, Queued, Running, Done };

  void validateOptions() const {
    const StreamOptions& o = m_opt;
    require(o.batch_size > 0, "StreamOptions::batch_size must be positive, found ", o.batch_size);
    require(o.shuffle_buffer_rows >= 2,
            "StreamOptions::shuffle_buffer_rows must be at least 2 (two windows of at least one "
            "row), found ",
            o.shuffle_buffer_rows);
    require(o.shuffle_buffer_rows / 2 <= std::numeric_limits<std::uint32_t>::max(),
            "StreamOptions::shuffle_buffer_rows must be at most 2 * (2^32 - 1), found ",
            o.shuffle_buffer_rows);
    require(
        std::isfinite(o.holdout_fraction) && o.holdout_fraction >= 0.0 && o.holdout_fraction < 1.0,
        "StreamOptions::holdout_fraction must be in [0, 1), found ", o.holdout_fraction);
    require(std::isfinite(o.max_norm_ratio) && o.max_norm_ratio >= 0.0,
            "StreamOptions::max_norm_ratio must be finite and non-negative (0 = off), found ",
            o.max_norm_ratio);
    require(o.nan_policy == NanPolicy::Error || o.nan_policy == NanPolicy::Skip,
            "StreamOptions::nan_policy must be NanPolicy::Error or NanPolicy::Skip");
    require(o.raw_cols >= 0, "StreamOptions::raw_cols must be non-negative, found ", o.raw_cols);
    require(dtypeSize(o.raw_dtype) > 0, "StreamOptions::raw_dtype is not a known DType");
    require(o.block_rows >= 0 && o.block_rows <= o.shuffle_buffer_rows / 2,
            "StreamOptions::block_rows must be in [0, shuffle_buffer_rows / 2 = ",
            o.shuffle_buffer_rows / 2, "] (0 = automatic), found ", o.block_rows);
    require(o.norm_sample_rows > 0, "StreamOptions::norm_sample_rows must be positive, found ",
            o.norm_sample_rows);
    require(o.parts >= 1 && o.part >= 0 && o.part < o.parts,
            "StreamOptions::part must be in [0, parts) with parts >= 1, found part ", o.part,
            " of ", o.parts);
  }

  // The d_in most shards have; the first shard that differs is named.
  void checkDIn() {
    std::map<Index, std::size_t> counts;
    for (const auto& s : m_shards) ++counts[s.cols];
    std::size_t best = 0;
    Index expected = m_shards.front().cols;
    for (const auto& s : m_shards) {  // most common value, ties to the earliest shard
      if (counts[s.cols] > best) {
        best = counts[s.cols];
        expected = s.cols;
      }
    }
    m_dIn = expected;
    const detail::ShardInfo* reference = nullptr;
    for (const auto& s : m_shards) {
      if (s.cols == expected && reference == nullptr) reference = &s;
    }
    for (const auto& s : m_shards) {
      if (s.cols != expected) {
        throw ConfigError(sae::detail::concat(
            "ActivationStream: shard '", s.where, "' has d_in ", s.cols, " (shape ",
            detail::shapeString(s.shape, true), "), but ", best, " of the ", m_shards.size(),
            " shards have d_in ", expected, ", e.g. '", reference->where, "'"));
      }
    }
  }

  // Converts global rows [g0, g1) into dst (row-major, d_in per row).
  void readGlobal(detail::ShardRowReader& reader, std::int64_t g0, std::int64_t g1,
                  Scalar* dst) const {
    while (g0 < g1) {
      const std::size_t s = static_cast<std::size_t>(
          std::upper_bound(m_starts.begin(), m_starts.end(), g0) - m_starts.begin() - 1);
      const std::int64_t end = std::min(g1, m_starts[s + 1]);
      reader.read(m_shards[s], g0 - m_starts[s], end - m_starts[s], dst);
      dst += (end - g0) * m_dIn;
      g0 = end;
    }
  }

  // The NaN policy and outlier filter for global row g (a training or hold-out row).
  Verdict rejectRow(std::int64_t g, const Scalar* row) const {
    const double sumsq = squaredNorm(row);
    if (!std::isfinite(sumsq)) {
      for (Index c = 0; c < m_dIn; ++c) {
        const double v = static_cast<double>(row[c]);
        if (std::isfinite(v)) continue;
        if (m_opt.nan_policy == NanPolicy::Skip) return Verdict::NonFinite;
        const std::size_t s = static_cast<std::size_t>(
            std::upper_bound(m_starts.begin(), m_starts.end(), g) - m_starts.begin() - 1);
        throw NumericError(sae::detail::concat(
            m_shards[s].where, ": row ", g - m_starts[s], " has a non-finite value (",
            detail::nonFiniteName(v), ") in column ", c,
            "; set StreamOptions::nan_policy = NanPolicy::Skip to drop such rows"));
      }
      // All finite, the sum of squares overflowed: a huge row, an outlier if the filter is on.
    }
    if (m_opt.max_norm_ratio > 0.0 && !(std::sqrt(sumsq) <= m_normLimit)) return Verdict::Outlier;
    return Verdict::Keep;
  }

  double squaredNorm(const Scalar* row) const { return kernels::sumOfSquares(row, m_dIn); }

  void estimateMedianNorm() {
    const std::int64_t n = std::min<std::int64_t>(m_opt.norm_sample_rows, m_total);
    detail::ShardRowReader reader;
    std::vector<Scalar> row(static_cast<std::size_t>(m_dIn));
    std::vector<double> norms;
    norms.reserve(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) {
      const auto g = static_cast<std::int64_t>(
          (static_cast<double>(i) + 0.5) * static_cast<double>(m_total) / static_cast<double>(n));
      readGlobal(reader, g, g + 1, row.data());
      bool finite = true;
      for (const Scalar v : row) finite = finite && std::isfinite(v);
      if (finite) norms.push_back(std::sqrt(squaredNorm(row.data())));
    }
    if (norms.empty()) {
      throw NumericError(
          sae::detail::concat("StreamOptions::max_norm_ratio: none of the ", n,
                              " rows sampled to estimate the median norm is finite"));
    }
    std::sort(norms.begin(), norms.end());
    const std::size_t k = norms.size();
    m_median = k % 2 == 1 ? norms[k / 2] : 0.5 * (norms[k / 2 - 1] + norms[k / 2]);
    m_normLimit = m_opt.max_norm_ratio * m_median;
  }

  // Reads window `window` of epoch `epoch` into `out`; stops early (out.valid false) when
  // `cancel` becomes true. Touches nothing of the stream but `out`.
  void loadWindow(std::int64_t epoch, std::int64_t window, Window& out,
                  const std::atomic<bool>* cancel) const {
    out.valid = false;
    out.epoch = epoch;
    out.window = window;
    out.order.clear();
    out.drops.clear();
    if (out.rows.rows() != m_windowRows || out.rows.cols() != m_dIn) {
      out.rows.resize(m_windowRows, m_dIn);
    }
    out.order.reserve(static_cast<std::size_t>(m_windowRows));
    const detail::FeistelPermutation perm(
        static_cast<std::uint64_t>(m_partBlocks),
        detail::hashKey(detail::hashKey(m_opt.seed, detail::kTagBlocks),
                        static_cast<std::uint64_t>(epoch)));
    const std::int64_t first = window * m_blocksPerWindow;
    const std::int64_t last = std::min(first + m_blocksPerWindow, m_partBlocks);
    Index fill = 0;
    for (std::int64_t slot = first; slot < last; ++slot) {
      if (cancel != nullptr && cancel->load(std::memory_order_relaxed)) return;
      const auto block =
          static_cast<std::int64_t>(perm(static_cast<std::uint64_t>(slot))) * m_opt.parts +
          m_opt.part;
      const std::int64_t g0 = block * m_blockRows;
      const std::int64_t g1 = std::min(g0 + m_blockRows, m_total);
      Scalar* base = out.rows.data() + fill * m_dIn;
      readGlobal(out.reader, g0, g1, base);
      BlockDrops drops{block, 0, 0};
      for (std::int64_t g = g0; g < g1; ++g) {
        if (detail::isHeldOut(m_holdoutKey, g, m_opt.holdout_fraction)) continue;
        const Index local = fill + (g - g0);
        const Verdict v = rejectRow(g, out.rows.data() + local * m_dIn);
        if (v == Verdict::Keep) {
          out.order.push_back(static_cast<std::uint32_t>(local));
        } else if (v == Verdict::NonFinite) {
          ++drops.nonFinite;
        } else {
          ++drops.outliers;
        }
      }
      if (drops.nonFinite + drops.outliers > 0) out.drops.push_back(drops);
      fill += g1 - g0;
    }
    Rng rng(detail::hashKey(m_opt.seed, detail::kTagRows),
            detail::hashKey(static_cast<std::uint64_t>(epoch), static_cast<std::uint64_t>(window)));
    for (std::size_t i = out.order.size(); i > 1; --i) {
      const std::size_t j = static_cast<std::size_t>(rng.below(i));
      std::swap(out.order[i - 1], out.order[j]);
    }
    out.valid = true;
  }

  // The window of the current position, loaded (from the prefetch thread or here).
  Window& current() {
    if (m_cur >= 0) {
      Window& w = m_windows[static_cast<std::size_t>(m_cur)];
      if (w.valid && w.epoch == m_pos.epoch && w.window == m_pos.window) return w;
    }
    const int prefetched = takePrefetched(m_pos.epoch, m_pos.window);
    if (prefetched >= 0) {
      m_cur = prefetched;
    } else {
      cancelPrefetch();
      if (m_cur < 0) m_cur = 0;
      loadWindow(m_pos.epoch, m_pos.window, m_windows[static_cast<std::size_t>(m_cur)], nullptr);
    }
    schedulePrefetch();
    return m_windows[static_cast<std::size_t>(m_cur)];
  }

  void advanceWindow() {
    m_pos.offset = 0;
    if (++m_pos.window == m_numWindows) {
      m_pos.window = 0;
      ++m_pos.epoch;
    }
  }

  // Counts the drops of the windows the returned batch took rows from (each block once).
  void commitDrops() {
    for (const auto& d : m_pendingDrops) {
      const auto b = static_cast<std::size_t>(d.block);
      if (m_blockCounted[b]) continue;
      m_blockCounted[b] = true;
      m_droppedNonFinite += d.nonFinite;
      m_droppedOutliers += d.outliers;
    }
    m_pendingDrops.clear();
  }

  // ---------------------------------------------------------------- prefetch thread

  void workerLoop() {
    std::unique_lock<std::mutex> lock(m_mutex);
    for (;;) {
      m_cv.wait(lock, [this] { return m_stop || m_job == JobState::Queued; });
      if (m_stop) return;
      m_job = JobState::Running;
      const std::int64_t epoch = m_jobEpoch;
      const std::int64_t window = m_jobWindow;
      Window& target = m_windows[static_cast<std::size_t>(m_jobBuffer)];
      lock.unlock();
      std::exception_ptr error;
      try {
        loadWindow(epoch, window, target, &m_cancel);
      } catch (...) {
        error = std::current_exception();
        target.valid = false;
      }
      lock.lock();
      m_jobError = error;
      m_job = JobState::Done;
      m_cv.notify_all();
    }
  }

  // Queues the window after the current one into the other buffer.
  void schedulePrefetch() {
    if (!m_thread.joinable() || m_cur < 0) return;
    std::int64_t epoch = m_windows[static_cast<std::size_t>(m_cur)].epoch;
    std::int64_t window = m_windows[static_cast<std::size_t>(m_cur)].window + 1;
    if (window == m_numWindows) {
      window = 0;
      ++epoch;
    }
    {
      std::lock_guard<std::mutex> lock(m_mutex);
      m_jobEpoch = epoch;
      m_jobWindow = window;
      m_jobBuffer = 1 - m_cur;
      m_jobError = nullptr;
      m_job = JobState::Queued;
    }
    m_cv.notify_all();
  }

  // When the queued job is (epoch, window): waits for it, re-throws its exception, and returns
  // the buffer it filled; otherwise -1.
  int takePrefetched(std::int64_t epoch, std::int64_t window) {
    if (!m_thread.joinable()) return -1;
    std::unique_lock<std::mutex> lock(m_mutex);
    if (m_job == JobState::Idle || m_jobEpoch != epoch || m_jobWindow != window) return -1;
    m_cv.wait(lock, [this] { return m_job == JobState::Done; });
    m_job = JobState::Idle;
    if (m_jobError) {
      std::exception_ptr error = m_jobError;
      m_jobError = nullptr;
      std::rethrow_exception(error);
    }
    return m_windows[static_cast<std::size_t>(m_jobBuffer)].valid ? m_jobBuffer : -1;
  }

  // Abandons the queued or running job (waiting for a running one to stop).
  void cancelPrefetch() {
    if (!m_thread.joinable()) return;
    std::unique_lock<std::mutex> lock(m_mutex);
    if (m_job == JobState::Queued) m_job = JobState::Idle;
    if (m_job == JobState::Running) {
      m_cancel = true;
      m_cv.wait(lock, [this] { return m_job == JobState::Done; });
      m_cancel = false;
    }
    if (m_job == JobState::Done) m_windows[static_cast<std::size_t>(m_jobBuffer)].valid = false;
    m_job = JobState::Idle;
    m_jobError = nullptr;
  }

  StreamOptions m_opt;
  std::vector<std::string> m_paths;
  std::vector<detail::ShardInfo> m_shards;
  std::vector<std::int64_t> m_starts;  // first global row of each shard, then the total
  Index m_dIn = 0;
  std::int64_t m_total = 0;
  std::int64_t m_training = 0;
  std::uint64_t m_holdoutKey = 0;
  Index m_windowRows = 0;
  Index m_blockRows = 0;
  std::int64_t m_blocksPerWindow = 0;
  std::int64_t m_numBlocks = 0;
  std::int64_t m_partBlocks = 0;  // blocks of this part (all of them with parts = 1)
  std::int64_t m_numWindows = 0;
  double m_median = 0.0;
  double m_normLimit = std::numeric_limits<double>::infinity();

  StreamPosition m_pos;
  std::array<Window, 2> m_windows;
  int m_cur = -1;  // index of the window being served, -1 before the first
  std::int64_t m_emptyRun = 0;
  std::vector<bool> m_blockCounted;
  std::int64_t m_droppedNonFinite = 0;
  std::int64_t m_droppedOutliers = 0;
  std::vector<BlockDrops> m_pendingDrops;  // drops of the batch being built

  std::thread m_thread;
  std::mutex m_mutex;
  std::condition_variable m_cv;
  bool m_stop = false;
  std::atomic<bool> m_cancel{false};
  JobState m_job = JobState::Idle;
  std::int64_t m_jobEpoch = -1;
  std::int64_t m_jobWindow = -1;
  int m_jobBuffer = 1;
  std::exception_ptr m_jobError;
};

}  // namespace sae::io

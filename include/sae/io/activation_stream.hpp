/// @file activation_stream.hpp
/// @brief ActivationStream: shuffled batches of activation rows streamed from many shards
/// (.npy, .npz, .safetensors, raw), with hold-out split, outlier filter and prefetch.
///
/// (Interface first; the implementation follows.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/dtype.hpp>

namespace sae::io {

/// @brief What to do with a row holding NaN or infinity.
enum class NanPolicy {
  Error,  ///< Throw NumericError naming the file and row (default).
  Skip    ///< Drop the row and count it (droppedNonFinite()).
};

/// @brief Options of an ActivationStream.
struct StreamOptions {
  Index batch_size = 4096;                  ///< Rows per batch, > 0.
  std::uint64_t seed = 0;                   ///< Seed of the shuffle and the hold-out choice.
  Index shuffle_buffer_rows = 1 << 18;      ///< Rows held at once for shuffling (memory bound).
  double holdout_fraction = 0.0;            ///< Fraction of rows reserved for evaluation, [0, 1).
  double max_norm_ratio = 0.0;              ///< > 0: drop rows with norm > ratio * median norm.
  NanPolicy nan_policy = NanPolicy::Error;  ///< NaN / Inf rows: error or skip.
  bool prefetch = true;                     ///< Read the next window on a background thread.
  std::string tensor_name;       ///< npz / safetensors: which array; empty = the only 2-D/3-D one.
  DType raw_dtype = DType::F32;  ///< Element type of raw files (.bin / .raw).
  Index raw_cols = 0;            ///< Columns of raw files; required when there are any.
};

/// @brief Where a stream is: the batch after `batches` batches, at row `offset` of window
/// `window` of epoch `epoch`.
struct StreamPosition {
  std::int64_t epoch = 0;
  std::int64_t window = 0;
  std::int64_t offset = 0;
  std::int64_t batches = 0;

  /// @brief `{"epoch":..,"window":..,"offset":..,"batches":..}`.
  nlohmann::json toJson() const {
    return {{"epoch", epoch}, {"window", window}, {"offset", offset}, {"batches", batches}};
  }
  /// @brief Inverse of toJson(); ConfigError for a missing or non-integer field.
  static StreamPosition fromJson(const nlohmann::json& j) {
    StreamPosition p;
    auto field = [&j](const char* name) {
      require(j.is_object() && j.contains(name) && j.at(name).is_number_integer(),
              "StreamPosition: field '", name, "' must be an integer");
      return j.at(name).get<std::int64_t>();
    };
    p.epoch = field("epoch");
    p.window = field("window");
    p.offset = field("offset");
    p.batches = field("batches");
    return p;
  }
};

/// @brief Expands files, directories and glob patterns into a sorted list of shard files.
inline std::vector<std::string> expandShardPaths(const std::vector<std::string>& specs) {
  (void)specs;
  throw ConfigError("expandShardPaths: not implemented yet");
}

/// @brief Shuffled batches of rows streamed from a list of shards.
template <typename Scalar>
class ActivationStream {
 public:
  ActivationStream(const std::vector<std::string>& specs, const StreamOptions& options) {
    (void)specs;
    (void)options;
    throw ConfigError("ActivationStream: not implemented yet");
  }
  Index dIn() const { return 0; }
  std::int64_t totalRows() const { return 0; }
  std::int64_t trainingRows() const { return 0; }
  void next(RowMatrix<Scalar>& batch) { (void)batch; }
  std::int64_t epoch() const { return 0; }
  StreamPosition position() const { return {}; }
  void seek(const StreamPosition& pos) { (void)pos; }
  RowMatrix<Scalar> holdout(Index max_rows) const {
    (void)max_rows;
    return {};
  }
  std::int64_t droppedNonFinite() const { return 0; }
  std::int64_t droppedOutliers() const { return 0; }
  double medianNorm() const { return 0.0; }
};

}  // namespace sae::io

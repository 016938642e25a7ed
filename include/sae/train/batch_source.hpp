/// @file batch_source.hpp
/// @brief Sources of training batches for the Trainer: the BatchSource concept, synthetic data,
/// activation files read in order, and an adapter over io::ActivationStream.
///
/// A batch source `Src` over scalar type `S` provides:
///   - `Index dIn() const`: width of the rows;
///   - `void next(RowMatrix<S>& batch)`: fills the next `[batch_size, d_in]` batch (resizing);
///   - `nlohmann::json position() const` and `void seek(const nlohmann::json&)`: where the
///     source is, as JSON, so that a checkpoint can restore it exactly (after seek(position())
///     the source yields the same batches it would have);
///   - `RowMatrix<S> holdout(Index max_rows) const`: rows kept out of training, for evaluation
///     (may be empty);
///   - `std::string describe() const`: one line for logs and the run config.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/error.hpp>
#include <sae/core/rng.hpp>
#include <sae/core/types.hpp>
#include <sae/eval/synthetic.hpp>
#include <sae/io/activation_files.hpp>

namespace sae::train {

/// @brief Synthetic superposition data (see eval::SyntheticFeatures) whose batch `i` is drawn
/// from its own random stream, so the position is just the number of batches drawn.
///
/// The ground-truth directions are those of `eval::SyntheticFeatures(options, seed)`.
template <typename Scalar>
class SyntheticSource {
 public:
  /// @param options    data settings (d_in, features, sparsity, noise).
  /// @param seed       seed of the directions and of every batch.
  /// @param batch_size rows per batch, > 0.
  SyntheticSource(const eval::SyntheticOptions& options, std::uint64_t seed, Index batch_size)
      : m_features(options, seed), m_seed(seed), m_batch_size(batch_size) {
    require(batch_size > 0, "synthetic data: batch_size must be positive, found ", batch_size);
  }

  Index dIn() const { return options().d_in; }
  Index batchSize() const { return m_batch_size; }
  /// @brief Ground-truth feature directions `[n_features, d_in]`, unit rows.
  const RowMatrix<Scalar>& directions() const { return m_features.directions(); }
  const eval::SyntheticOptions& options() const { return m_features.options(); }

  void next(RowMatrix<Scalar>& batch) {
    Rng rng(m_seed ^ 0x5DEECE66DULL, std::uint64_t(m_batches) + 1);
    m_features.sample(rng, m_batch_size, batch);
    ++m_batches;
  }

  nlohmann::json position() const { return {{"batches", m_batches}}; }
  void seek(const nlohmann::json& pos) {
    require(pos.is_object() && pos.contains("batches") && pos.at("batches").is_number_integer() &&
                pos.at("batches").get<std::int64_t>() >= 0,
            "synthetic data: position must be {\"batches\": n >= 0}, found ", pos.dump());
    m_batches = pos.at("batches").get<std::int64_t>();
  }

  /// @brief `max_rows` rows from a stream no training batch uses.
  RowMatrix<Scalar> holdout(Index max_rows) const {
    RowMatrix<Scalar> out;
    if (max_rows <= 0) return out;
    Rng rng(m_seed ^ 0x48F1D0C7ULL, 0);
    m_features.sample(rng, max_rows, out);
    return out;
  }

  std::string describe() const {
    return sae::detail::concat("synthetic (d_in ", options().d_in, ", ", options().n_features,
                               " features, ", options().expected_active, " active, noise ",
                               options().noise, ", seed ", m_seed, ")");
  }

 private:
  eval::SyntheticFeatures<Scalar> m_features;  // the directions; batches draw from their own Rng
  std::uint64_t m_seed;
  Index m_batch_size;
  std::int64_t m_batches = 0;
};

/// @brief Batches of activation files read in order, wrapping around at the end; the last
/// `holdout_fraction` of the rows is kept out of training for evaluation.
template <typename Scalar>
class FileSource {
 public:
  FileSource(const std::vector<std::string>& paths, Index batch_size, double holdout_fraction = 0.0,
             std::string tensor_name = {})
      : m_files(paths, std::move(tensor_name)), m_batch_size(batch_size) {
    require(batch_size > 0, "batch size must be positive, found ", batch_size);
    require(holdout_fraction >= 0 && holdout_fraction < 1,
            "holdout fraction must be in [0, 1), found ", holdout_fraction);
    m_holdout = Index(double(m_files.rows()) * holdout_fraction);
    m_train_rows = m_files.rows() - m_holdout;
    require(m_train_rows > 0, "no training rows left after the hold-out split");
  }

  Index dIn() const { return m_files.cols(); }
  Index trainingRows() const { return m_train_rows; }

  void next(RowMatrix<Scalar>& batch) {
    batch.resize(m_batch_size, dIn());
    Index filled = 0;
    while (filled < m_batch_size) {
      const Index n = std::min(m_batch_size - filled, m_train_rows - m_row);
      m_files.readRows<Scalar>(m_row, m_row + n, batch.middleRows(filled, n));
      filled += n;
      m_row += n;
      if (m_row == m_train_rows) {
        m_row = 0;
        ++m_epoch;
      }
    }
  }

  nlohmann::json position() const { return {{"epoch", m_epoch}, {"row", m_row}}; }
  void seek(const nlohmann::json& pos) {
    const bool ok = pos.is_object() && pos.contains("epoch") && pos.contains("row") &&
                    pos.at("epoch").is_number_integer() && pos.at("row").is_number_integer();
    require(ok, "file source: position must be {\"epoch\": e, \"row\": r}, found ", pos.dump());
    const auto row = pos.at("row").get<std::int64_t>();
    require(row >= 0 && row < m_train_rows, "file source: row ", row, " out of range [0, ",
            m_train_rows, ")");
    m_epoch = pos.at("epoch").get<std::int64_t>();
    m_row = row;
  }

  RowMatrix<Scalar> holdout(Index max_rows) const {
    const Index n = std::min(max_rows, m_holdout);
    RowMatrix<Scalar> out(n, dIn());
    if (n > 0) m_files.readRows<Scalar>(m_train_rows, m_train_rows + n, out);
    return out;
  }

  std::string describe() const {
    return sae::detail::concat("files in order (", m_files.rows(), " rows x ", dIn(), ", ",
                               m_holdout, " held out)");
  }

 private:
  io::ActivationFiles m_files;
  Index m_batch_size;
  Index m_holdout = 0, m_train_rows = 0;
  Index m_row = 0;
  std::int64_t m_epoch = 0;
};

/// @brief One rank's share of a source of global batches: rows `[r n / N, (r + 1) n / N)` of
/// each batch of `Source` (n rows), for data-parallel runs whose data is cheap to make on every
/// rank (SyntheticSource): the ranks together see exactly the batches of one process, so an
/// N-rank run matches a 1-rank run to rounding. Position, seek and holdout are the source's.
template <typename Source>
class RankSlice {
 public:
  using Scalar = typename std::decay_t<decltype(std::declval<const Source&>().holdout(0))>::Scalar;

  /// @param source the global batches (kept by reference).
  /// @param rank   this rank, in [0, ranks).
  /// @param ranks  number of ranks, >= 1.
  RankSlice(Source& source, int rank, int ranks) : m_source(source), m_rank(rank), m_ranks(ranks) {
    require(ranks >= 1 && rank >= 0 && rank < ranks, "RankSlice: rank ", rank, " of ", ranks);
  }

  Index dIn() const { return m_source.dIn(); }
  void next(RowMatrix<Scalar>& batch) {
    m_source.next(m_global);
    const Index n = m_global.rows();
    const Index lo = Index(m_rank) * n / m_ranks, hi = Index(m_rank + 1) * n / m_ranks;
    batch = m_global.middleRows(lo, hi - lo);
  }
  nlohmann::json position() const { return m_source.position(); }
  void seek(const nlohmann::json& pos) { m_source.seek(pos); }
  RowMatrix<Scalar> holdout(Index max_rows) const { return m_source.holdout(max_rows); }
  std::string describe() const {
    return sae::detail::concat(m_source.describe(), ", rank ", m_rank, " of ", m_ranks, "'s rows");
  }

 private:
  Source& m_source;
  int m_rank, m_ranks;
  RowMatrix<Scalar> m_global;
};

/// @brief Adapts a stream with `position()` returning a type `P` with `toJson()` and
/// `P::fromJson`, and `seek(const P&)` (io::ActivationStream) to the BatchSource concept.
template <typename Stream>
class StreamSource {
 public:
  using Scalar = typename std::decay_t<decltype(std::declval<Stream&>().holdout(0))>::Scalar;

  template <typename... Args>
  explicit StreamSource(Args&&... args) : m_stream(std::forward<Args>(args)...) {}

  Index dIn() const { return m_stream.dIn(); }
  void next(RowMatrix<Scalar>& batch) { m_stream.next(batch); }
  nlohmann::json position() const { return m_stream.position().toJson(); }
  void seek(const nlohmann::json& pos) {
    using Position = std::decay_t<decltype(m_stream.position())>;
    m_stream.seek(Position::fromJson(pos));
  }
  RowMatrix<Scalar> holdout(Index max_rows) const { return m_stream.holdout(max_rows); }
  std::string describe() const {
    return sae::detail::concat("activation stream (", m_stream.totalRows(), " rows x ", dIn(), ")");
  }
  Stream& stream() { return m_stream; }

 private:
  Stream m_stream;
};

}  // namespace sae::train

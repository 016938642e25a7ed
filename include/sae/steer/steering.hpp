/// @file steering.hpp
/// @brief Feature steering and ablation: edit chosen SAE features of activations in place,
/// keeping the SAE's reconstruction error, and decoder directions for additive steering.
///
/// For a token x with codes f = encode(x), an edit list turns f into f' on the chosen latents
/// only, and the edited activation keeps everything the SAE does not explain:
/// ```
/// x' = x + decode(f') - decode(f) = x + sum_{i edited} (f'_i - f_i) s_i W_dec[i, :]
/// ```
/// b_dec cancels and the error term x - decode(f) is kept, so only the chosen features change.
/// s_i is the factor decode() applies to code i: 1, or 1 / ||W_dec[i, :]|| for the TopK family
/// with rescale_acts_by_decoder_norm (whose codes are in decoder-norm-scaled units). The editor
/// finds s once, when it is built, by decoding a one-hot code through the model's own decode(),
/// so any architecture whose codes are DenseCodes, SparseCodes or CsrCodes works unchanged. The
/// cost per call is one encode() plus O(rows * edits * d_in): only the edited latents' rows of
/// W_dec are read.
///
/// An SAE trained on normalised inputs (SAELens `normalize_activations: layer_norm` encodes
/// (x - mean) / (std + 1e-5) and decodes y * std + mean) is steered with applyScaled(): the
/// caller passes the normalised rows to encode and the per-row output scale (std), and
/// x' = x + std_b (decode(f') - decode(f)). sae::Sae (runtime/sae.hpp) does that normalisation
/// itself, with the same edit kernel (detail::EditKernel): it is what an inference engine's
/// hook calls.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include <sae/core/config.hpp>
#include <sae/core/enum_names.hpp>
#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/models/sae_config.hpp>
#include <sae/models/sparse_autoencoder.hpp>

namespace sae {
namespace steer {

/// A writable view of a row-major batch `[tokens, d_in]` in the caller's memory (a matrix, an
/// Eigen::Map of a raw buffer, a block of rows; rows may be padded: any outer stride).
template <typename Scalar>
using BatchRef = Eigen::Ref<RowMatrix<Scalar>>;

/// @brief What an edit does to a latent's code f.
enum class EditOp {
  Set,       ///< f' = value (clamp).
  Add,       ///< f' = f + value.
  Multiply,  ///< f' = f * value.
  Zero       ///< f' = 0 (ablate); the value is ignored.
};

}  // namespace steer

/// The names of the edit operations.
template <>
struct EnumNames<steer::EditOp> {
  static constexpr std::pair<steer::EditOp, const char*> table[] = {
      {steer::EditOp::Set, "Set"},
      {steer::EditOp::Add, "Add"},
      {steer::EditOp::Multiply, "Multiply"},
      {steer::EditOp::Zero, "Zero"}};
};

namespace steer {

/// @brief Name of an operation ("Set", "Add", "Multiply", "Zero").
inline const char* editOpName(EditOp op) { return enumName(op); }

/// @brief One edit of one latent's code. Values are in the units of the model's codes (what
/// encode() returns; for TopK with rescale_acts_by_decoder_norm, decoder-norm-scaled units).
struct FeatureEdit {
  Index feature = 0;         ///< Latent id in [0, d_sae).
  EditOp op = EditOp::Zero;  ///< What to do to its code.
  double value = 0;          ///< Operand of Set / Add / Multiply.

  static FeatureEdit set(Index feature, double value) { return {feature, EditOp::Set, value}; }
  static FeatureEdit add(Index feature, double value) { return {feature, EditOp::Add, value}; }
  static FeatureEdit multiply(Index feature, double factor) {
    return {feature, EditOp::Multiply, factor};
  }
  static FeatureEdit zero(Index feature) { return {feature, EditOp::Zero, 0.0}; }

  /// @brief The edited code f' of a code f (value already converted to the scalar type).
  template <typename Scalar>
  static Scalar apply(EditOp op, Scalar value, Scalar f) {
    switch (op) {
      case EditOp::Set:
        return value;
      case EditOp::Add:
        return f + value;
      case EditOp::Multiply:
        return f * value;
      case EditOp::Zero:
        return Scalar(0);
    }
    return f;
  }
};

/// @brief Edits applied together; each latent appears at most once.
using EditList = std::vector<FeatureEdit>;

namespace detail {

inline std::string describeEdit(const EditList& edits, std::size_t e) {
  const FeatureEdit& ed = edits[e];
  switch (ed.op) {
    case EditOp::Set:
      return sae::detail::concat("edit ", e, " (Set feature ", ed.feature, " to ", ed.value, ")");
    case EditOp::Add:
      return sae::detail::concat("edit ", e, " (Add ", ed.value, " to feature ", ed.feature, ")");
    case EditOp::Multiply:
      return sae::detail::concat("edit ", e, " (Multiply feature ", ed.feature, " by ", ed.value,
                                 ")");
    case EditOp::Zero:
      break;
  }
  return sae::detail::concat("edit ", e, " (Zero feature ", ed.feature, ")");
}

}  // namespace detail

namespace detail {

/// validateEdits() with the scratch of its duplicate check passed in (kept by the caller, so
/// that a warm call allocates nothing).
template <typename Scalar>
void validateEdits(const EditList& edits, Index d_sae,
                   std::vector<std::pair<Index, std::size_t>>& order) {
  // The messages are made only on failure (describeEdit builds a string).
  using sae::detail::concat;
  for (std::size_t e = 0; e < edits.size(); ++e) {
    const FeatureEdit& ed = edits[e];
    const auto op = static_cast<int>(ed.op);
    require(op >= static_cast<int>(EditOp::Set) && op <= static_cast<int>(EditOp::Zero),
            "steering edit ", e, " (feature ", ed.feature, "): unknown operation ", op);
    if (!(ed.feature >= 0 && ed.feature < d_sae))
      throw ConfigError(concat("steering ", describeEdit(edits, e),
                               ": feature id out of range [0, ", d_sae, ")"));
    if (!(std::isfinite(ed.value) && std::isfinite(static_cast<Scalar>(ed.value))))
      throw ConfigError(concat("steering ", describeEdit(edits, e), ": value is not finite",
                               std::isfinite(ed.value) ? " in the model's scalar type" : ""));
  }
  order.resize(edits.size());
  for (std::size_t e = 0; e < edits.size(); ++e) order[e] = {edits[e].feature, e};
  std::sort(order.begin(), order.end());
  for (std::size_t j = 1; j < order.size(); ++j)
    require(order[j].first != order[j - 1].first, "steering edits ", order[j - 1].second, " and ",
            order[j].second, " both change feature ", order[j].first,
            "; give each latent one edit");
}

}  // namespace detail

/// @brief Checks an edit list for a model with `d_sae` latents and scalar type `Scalar`; throws
/// ConfigError naming the first bad entry (feature id out of range, a value that is not finite
/// in `Scalar`, a latent edited twice, an unknown operation).
template <typename Scalar>
void validateEdits(const EditList& edits, Index d_sae) {
  std::vector<std::pair<Index, std::size_t>> order;
  detail::validateEdits<Scalar>(edits, d_sae, order);
}

/// @brief Which rows (token positions) of a batch an operation applies to.
///
/// A non-owning view: the index list or mask must outlive the call it is passed to. Indices
/// must be strictly increasing.
class RowSelection {
 public:
  /// @brief Every row.
  static RowSelection all() { return RowSelection(); }
  /// @brief Rows first .. first + count - 1.
  static RowSelection range(Index first, Index count) {
    RowSelection s;
    s.m_kind = Kind::Range;
    s.m_first = first;
    s.m_count = count;
    return s;
  }
  /// @brief The rows listed (strictly increasing).
  static RowSelection indices(const Index* ids, Index count) {
    RowSelection s;
    s.m_kind = Kind::Indices;
    s.m_ids = ids;
    s.m_count = count;
    return s;
  }
  static RowSelection indices(const std::vector<Index>& ids) {
    return indices(ids.data(), static_cast<Index>(ids.size()));
  }
  /// @brief Rows whose mask entry is non-zero; the mask has one entry per row.
  static RowSelection mask(const std::uint8_t* mask, Index count) {
    RowSelection s;
    s.m_kind = Kind::Mask;
    s.m_mask = mask;
    s.m_count = count;
    return s;
  }
  static RowSelection mask(const std::vector<std::uint8_t>& m) {
    return mask(m.data(), static_cast<Index>(m.size()));
  }

  bool isAll() const { return m_kind == Kind::All; }

  /// @brief Checks the selection against a batch of `rows` rows; throws ConfigError.
  void validate(Index rows) const {
    switch (m_kind) {
      case Kind::All:
        return;
      case Kind::Range:
        require(m_first >= 0 && m_count >= 0 && m_first <= rows - m_count, "row selection: range [",
                m_first, ", ", m_first + m_count, ") is outside the batch's ", rows, " rows");
        return;
      case Kind::Indices:
        require(m_count >= 0 && (m_count == 0 || m_ids != nullptr),
                "row selection: null index list of ", m_count, " entries");
        for (Index j = 0; j < m_count; ++j) {
          require(m_ids[j] >= 0 && m_ids[j] < rows, "row selection: entry ", j, " is row ",
                  m_ids[j], ", outside the batch's ", rows, " rows");
          require(j == 0 || m_ids[j] > m_ids[j - 1], "row selection: entry ", j, " (row ", m_ids[j],
                  ") does not follow entry ", j - 1, " (row ", m_ids[j - 1],
                  "); indices must be strictly increasing");
        }
        return;
      case Kind::Mask:
        require(m_count == rows, "row selection: the mask has ", m_count,
                " entries, the batch has ", rows, " rows");
        require(m_count == 0 || m_mask != nullptr, "row selection: null mask");
        return;
    }
  }

  /// @brief Calls fn(row) for every selected row of a batch of `rows` rows, in increasing
  /// order (after validate()).
  template <typename Fn>
  void forEach(Index rows, Fn&& fn) const {
    switch (m_kind) {
      case Kind::All:
        for (Index r = 0; r < rows; ++r) fn(r);
        return;
      case Kind::Range:
        for (Index r = m_first; r < m_first + m_count; ++r) fn(r);
        return;
      case Kind::Indices:
        for (Index j = 0; j < m_count; ++j) fn(m_ids[j]);
        return;
      case Kind::Mask:
        for (Index r = 0; r < m_count; ++r)
          if (m_mask[r] != 0) fn(r);
        return;
    }
  }

 private:
  enum class Kind { All, Range, Indices, Mask };
  Kind m_kind = Kind::All;
  Index m_first = 0;
  Index m_count = 0;
  const Index* m_ids = nullptr;
  const std::uint8_t* m_mask = nullptr;
};

/// @brief The factor decode() applies to a latent's code before multiplying its W_dec row.
enum class DecoderUnits {
  Plain,         ///< decode = f W_dec + b_dec (standard, gated, jumprelu, TopK without rescale).
  DividedByNorm  ///< decode = (f / n) W_dec + b_dec, n_i = ||W_dec[i, :]|| (TopK rescale).
};

namespace detail {

template <typename T>
struct IsSparseAutoencoder : std::false_type {};
template <typename S, typename A>
struct IsSparseAutoencoder<SparseAutoencoder<S, A>> : std::true_type {};

/// Code of latent i in row t (a sparse code lists a latent at most once; repeats would add up,
/// as they do in decode()).
template <typename Scalar>
Scalar codeValue(const DenseCodes<Scalar>& codes, Index t, Index i) {
  return codes.values(t, i);
}
template <typename Scalar>
Scalar codeValue(const SparseCodes<Scalar>& codes, Index t, Index i) {
  Scalar f = 0;
  const auto idx = codes.indices.row(t);
  for (Index j = 0; j < idx.size(); ++j)
    if (idx[j] == i) f += codes.values(t, j);
  return f;
}

template <typename Scalar>
Scalar codeValue(const CsrCodes<Scalar>& codes, Index t, Index i) {
  const auto& latent = codes.pattern.latent;
  const auto begin = latent.begin() + codes.pattern.row_start[static_cast<std::size_t>(t)];
  const auto end = latent.begin() + codes.pattern.row_start[static_cast<std::size_t>(t) + 1];
  const auto it = std::lower_bound(begin, end, static_cast<std::int32_t>(i));  // by latent
  return it != end && *it == i ? codes.values[static_cast<std::size_t>(it - latent.begin())]
                               : Scalar(0);
}

/// Two rows of codes: all zero, and 1 at latent `feature`.
template <typename Scalar>
void unitProbe(DenseCodes<Scalar>& codes, Index d_sae, Index feature) {
  codes.values = RowMatrix<Scalar>::Zero(2, d_sae);
  codes.values(1, feature) = Scalar(1);
}
template <typename Scalar>
void unitProbe(SparseCodes<Scalar>& codes, Index d_sae, Index feature) {
  codes.d_sae = d_sae;
  codes.indices.resize(2, 1);
  codes.indices.setConstant(static_cast<std::int32_t>(feature));
  codes.values.resize(2, 1);
  codes.values << Scalar(0), Scalar(1);
}
template <typename Scalar>
void unitProbe(CsrCodes<Scalar>& codes, Index d_sae, Index feature) {
  codes.d_sae = d_sae;
  codes.pattern.row_start = {0, 0, 1};
  codes.pattern.latent = {static_cast<std::int32_t>(feature)};
  codes.pattern.row = {1};
  codes.values = {Scalar(1)};
}

/// Finds how `model` decodes codes: decodes a one-hot code at the latent whose two candidate
/// directions (W_dec row, W_dec row / its norm) differ most and keeps the candidate the result
/// matches to rounding. When both match (unit-norm rows, an all-zero model), the config's
/// rescale_acts_by_decoder_norm decides. Throws ConfigError when neither matches.
template <typename Model>
DecoderUnits probeDecoderUnits(const Model& model) {
  using S = typename Model::Scalar;
  const DecoderUnits by_config = model.config().rescale_acts_by_decoder_norm
                                     ? DecoderUnits::DividedByNorm
                                     : DecoderUnits::Plain;
  const auto W_dec = model.parameters().rowMajor("W_dec");
  Index p = -1;
  S gap = -1;
  for (Index i = 0; i < W_dec.rows(); ++i) {
    const S n = W_dec.row(i).norm();
    if (n > S(0) && std::isfinite(n) && std::abs(n - S(1)) > gap) {
      gap = std::abs(n - S(1));
      p = i;
    }
  }
  if (p < 0) return by_config;  // every decoder row is zero: nothing to tell them apart
  typename Model::Codes probe;
  unitProbe(probe, model.dSae(), p);
  const RowMatrix<S> y = model.decode(probe);
  const S n = W_dec.row(p).norm();
  const auto w = W_dec.row(p);
  const S plain = (y.row(1) - y.row(0) - w).cwiseAbs().maxCoeff();
  const S scaled = (y.row(1) - y.row(0) - (S(1) / n) * w).cwiseAbs().maxCoeff();
  const S eps = std::numeric_limits<S>::epsilon();
  const S tol =
      S(16) * eps *
          (y.row(0).cwiseAbs().maxCoeff() + std::max(S(1), S(1) / n) * w.cwiseAbs().maxCoeff()) +
      std::numeric_limits<S>::min();
  const bool plain_ok = std::isfinite(plain) && plain <= tol;
  const bool scaled_ok = std::isfinite(scaled) && scaled <= tol;
  if (plain_ok && scaled_ok) return by_config;
  if (plain_ok) return DecoderUnits::Plain;
  if (scaled_ok) return DecoderUnits::DividedByNorm;
  throw ConfigError(
      sae::detail::concat("steering: the ", Model::architecture(), " SAE decodes latent ", p,
                          " neither as f W_dec nor as (f / ||W_dec row||) W_dec (differences ",
                          plain, " and ", scaled, "); cannot compute feature edits for it"));
}

inline void checkWidth(Index cols, Index d_in, const char* what) {
  require(cols == d_in, "steering: ", what, " has ", cols, " columns, expected d_in = ", d_in);
}

/// @brief The edit kernel of FeatureEditor and sae::Sae: the rows a selection picks, and the
/// change x' - x = sum_e (f'_e / s_e - f_e / s_e) * scale * W_dec[feature_e, :] of each of them
/// from codes the caller encoded. Keeps its scratch across calls: once it has grown to the
/// batch and edit list sizes, nothing is allocated. One kernel serves one thread at a time.
template <typename Scalar>
class EditKernel {
 public:
  /// @brief validateEdits() without allocating once warm.
  void validate(const EditList& edits, Index d_sae) {
    detail::validateEdits<Scalar>(edits, d_sae, m_order);
  }

  /// @brief Records the rows `selection` (validated) picks from a batch of `batch_rows` rows;
  /// returns their number. Encoded row t is then batch row row(t).
  Index selectRows(const RowSelection& selection, Index batch_rows) {
    m_all = selection.isAll();
    if (m_all) return batch_rows;
    m_rows.clear();
    selection.forEach(batch_rows, [&](Index r) { m_rows.push_back(r); });
    return static_cast<Index>(m_rows.size());
  }

  /// @brief True when every row is selected (encoded row t is batch row t).
  bool allRows() const { return m_all; }
  /// @brief The batch row of encoded row t.
  Index row(Index t) const { return m_all ? t : m_rows[static_cast<std::size_t>(t)]; }

  /// @brief The selected rows of `source` (all of them after selecting every row), copied
  /// into the kernel's scratch, which the caller may change (normalise) before encoding.
  RowMatrix<Scalar>& gather(const ConstBatchRef<Scalar>& source, Index selected) {
    m_input.resize(selected, source.cols());
    for (Index t = 0; t < selected; ++t) m_input.row(t) = source.row(row(t));
    return m_input;
  }

  /// @brief Adds the edits' change to the selected rows of `hidden`.
  ///
  /// @param W_dec  the model's decoder `[d_sae, d_in]`.
  /// @param units  how its decode scales codes (DecoderUnits).
  /// @param edits  validated edits.
  /// @param codes  codes of the selected rows, encoded row t for batch row row(t)
  ///               (DenseCodes, SparseCodes or CsrCodes).
  /// @param scale  null, or one factor per encoded row applied to its change (the output
  ///               scale of a normalised SAE).
  /// @param hidden the batch, edited in place; rows whose codes the edits leave unchanged are
  ///               not written, and nothing is written unless every change is finite.
  /// @throws NumericError naming the edit and the row of a non-finite change.
  template <typename WDec, typename Codes>
  void apply(const WDec& W_dec, DecoderUnits units, const EditList& edits, const Codes& codes,
             const Scalar* scale, BatchRef<Scalar> hidden) {
    const Index n_sel = codes.rows();
    const Index E = static_cast<Index>(edits.size());
    const Index d_in = hidden.cols();
    m_value.resize(E);
    m_divisor.resize(E);
    for (Index e = 0; e < E; ++e) {
      const FeatureEdit& ed = edits[static_cast<std::size_t>(e)];
      m_value[e] = static_cast<Scalar>(ed.value);
      m_divisor[e] =
          units == DecoderUnits::DividedByNorm ? W_dec.row(ed.feature).norm() : Scalar(1);
    }

    // Coefficients of the decoder rows: (f'/s - f/s) * scale, 0 where the code is unchanged.
    m_coef.resize(n_sel, E);
    const bool big = n_sel * E * d_in >= (Index(1) << 16);
    SAE_PRAGMA_OMP(parallel for schedule(static) if (big))
    for (Index t = 0; t < n_sel; ++t) {
      for (Index e = 0; e < E; ++e) {
        const FeatureEdit& ed = edits[static_cast<std::size_t>(e)];
        const Scalar f = codeValue(codes, t, ed.feature);
        const Scalar f_new = FeatureEdit::apply(ed.op, m_value[e], f);
        Scalar c = 0;
        if (!(f_new == f)) {
          const Scalar div = m_divisor[e];
          c = units == DecoderUnits::DividedByNorm ? f_new / div - f / div : f_new - f;
          if (scale) c *= scale[t];
        }
        m_coef(t, e) = c;
      }
    }
    // Nothing is written unless every coefficient is finite.
    if (!m_coef.allFinite()) {
      for (Index t = 0; t < n_sel; ++t)
        for (Index e = 0; e < E; ++e)
          if (!std::isfinite(m_coef(t, e))) {
            const FeatureEdit& ed = edits[static_cast<std::size_t>(e)];
            const Scalar f = codeValue(codes, t, ed.feature);
            throw NumericError(sae::detail::concat(
                "steering ", describeEdit(edits, static_cast<std::size_t>(e)),
                " gives a non-finite change at row ", row(t), " (code ", f, " -> ",
                FeatureEdit::apply(ed.op, m_value[e], f), ", divisor ", m_divisor[e], ")"));
          }
    }
    SAE_PRAGMA_OMP(parallel for schedule(static) if (big))
    for (Index t = 0; t < n_sel; ++t) {
      auto out = hidden.row(row(t));
      for (Index e = 0; e < E; ++e) {
        const Scalar c = m_coef(t, e);
        if (c != Scalar(0)) out += c * W_dec.row(edits[static_cast<std::size_t>(e)].feature);
      }
    }
  }

 private:
  bool m_all = true;
  std::vector<Index> m_rows;                           // selected rows
  RowMatrix<Scalar> m_input;                           // selected rows of the SAE input
  Vector<Scalar> m_value;                              // edit values in Scalar
  Vector<Scalar> m_divisor;                            // per edit: 1 or the latent's decoder norm
  RowMatrix<Scalar> m_coef;                            // [rows, edits]
  std::vector<std::pair<Index, std::size_t>> m_order;  // validate()'s duplicate check
};

}  // namespace detail

/// @brief The decoder direction of latent `feature`: row `feature` of W_dec, `[d_in]`.
template <typename Model, typename = std::enable_if_t<detail::IsSparseAutoencoder<Model>::value>>
Vector<typename Model::Scalar> decoderDirection(const Model& model, Index feature) {
  require(feature >= 0 && feature < model.dSae(), "steering: feature ", feature,
          " out of range [0, ", model.dSae(), ")");
  return model.parameters().rowMajor("W_dec").row(feature).transpose();
}

/// @brief decoderDirection() scaled to unit Euclidean norm; ConfigError for a zero row.
template <typename Model, typename = std::enable_if_t<detail::IsSparseAutoencoder<Model>::value>>
Vector<typename Model::Scalar> unitDecoderDirection(const Model& model, Index feature) {
  Vector<typename Model::Scalar> d = decoderDirection(model, feature);
  const auto n = d.norm();
  require(n > 0 && std::isfinite(n), "steering: feature ", feature, " has decoder norm ", n,
          "; it has no direction");
  d /= n;
  return d;
}

/// @brief Adds alpha * direction to every selected row of `hidden`, in place.
///
/// @param hidden     batch `[tokens, d_in]` in the caller's memory.
/// @param direction  vector of d_in entries (for example decoderDirection()).
/// @param alpha      steering coefficient.
/// @param rows       token positions to steer (default: all).
template <typename Derived>
void addDirection(BatchRef<typename Derived::Scalar> hidden,
                  const Eigen::MatrixBase<Derived>& direction, typename Derived::Scalar alpha,
                  const RowSelection& rows = RowSelection::all()) {
  using S = typename Derived::Scalar;
  require(direction.rows() == 1 || direction.cols() == 1, "steering: direction has shape [",
          direction.rows(), ", ", direction.cols(), "], expected a vector");
  detail::checkWidth(direction.size(), hidden.cols(), "the direction");
  require(std::isfinite(alpha), "steering: alpha must be finite, found ", alpha);
  // Binds a row or column vector with unit inner stride without a copy.
  const Eigen::Ref<const Vector<S>> d(direction.derived());
  require(d.allFinite(), "steering: the direction has a non-finite entry");
  rows.validate(hidden.rows());
  rows.forEach(hidden.rows(), [&](Index r) { hidden.row(r) += alpha * d.transpose(); });
}

/// @brief Adds alpha * W_dec[feature, :] to every selected row of `hidden`, in place (the
/// additive steering of SAELens and Neuronpedia); for a unit-norm step, pass
/// unitDecoderDirection() to the other overload.
template <typename Model, typename = std::enable_if_t<detail::IsSparseAutoencoder<Model>::value>>
void addDirection(BatchRef<typename Model::Scalar> hidden, const Model& model, Index feature,
                  typename Model::Scalar alpha, const RowSelection& rows = RowSelection::all()) {
  require(feature >= 0 && feature < model.dSae(), "steering: feature ", feature,
          " out of range [0, ", model.dSae(), ")");
  detail::checkWidth(hidden.cols(), model.dIn(), "the hidden state");
  addDirection(hidden, model.parameters().rowMajor("W_dec").row(feature), alpha, rows);
}

/// @brief Applies an edit list to activations in place: encode, change the chosen latents'
/// codes, add the change of their decoder terms; everything else (other latents, the SAE's
/// reconstruction error) stays as it was.
///
/// Holds a reference to the model (which must outlive it), the model's Workspace and scratch
/// reused across calls; rows whose codes an edit leaves unchanged are not written at all, so
/// with no edits, or with edits that change nothing (Multiply by 1, Zero of an inactive
/// latent), the buffer is bitwise unchanged. Once the scratch has grown to the batch size a
/// call allocates nothing (the encode runs in the editor's own workspace, whose
/// `bf16_encoder` workspace() sets). The parameters may change between calls (decoder norms
/// are read at each call). One editor serves one thread at a time. sae::Sae runs the same
/// kernel (detail::EditKernel) with the SAE's input normalisation applied inside.
///
/// @tparam Model a SparseAutoencoder<Scalar, Arch> whose codes are DenseCodes, SparseCodes or
/// CsrCodes (every architecture of the library).
template <typename Model>
class FeatureEditor {
  static_assert(detail::IsSparseAutoencoder<Model>::value,
                "FeatureEditor: Model must be a sae::SparseAutoencoder<Scalar, Arch>");
  static_assert(
      std::is_same<typename Model::Codes, DenseCodes<typename Model::Scalar>>::value ||
          std::is_same<typename Model::Codes, SparseCodes<typename Model::Scalar>>::value ||
          std::is_same<typename Model::Codes, CsrCodes<typename Model::Scalar>>::value,
      "FeatureEditor: the architecture's Codes must be DenseCodes, SparseCodes or "
      "CsrCodes");

 public:
  using Scalar = typename Model::Scalar;
  using Codes = typename Model::Codes;
  using Workspace = typename Model::Workspace;

  /// @brief An editor of `model`'s features (probes how its decode scales codes, see
  /// DecoderUnits) with `edits` (validated; ConfigError naming a bad entry).
  explicit FeatureEditor(const Model& model, EditList edits = {})
      : m_model(model), m_units(detail::probeDecoderUnits(model)) {
    setEdits(std::move(edits));
  }

  /// @brief Replaces the edit list (validated first; on error the old list stays).
  void setEdits(EditList edits) {
    m_kernel.validate(edits, m_model.dSae());
    m_edits = std::move(edits);
  }

  const EditList& edits() const { return m_edits; }
  const Model& model() const { return m_model; }
  /// @brief How the model's decode scales codes (found when the editor was built).
  DecoderUnits units() const { return m_units; }
  /// @brief The workspace the editor encodes with (set `bf16_encoder` on it for a bf16
  /// encoder product; ConfigError at the next call where bf16 is unavailable).
  Workspace& workspace() { return m_ws; }

  /// @brief Edits the selected rows of `hidden` `[tokens, d_in]` in place.
  void apply(BatchRef<Scalar> hidden, const RowSelection& rows = RowSelection::all()) {
    run(nullptr, hidden, nullptr, rows);
  }

  /// @brief Edits a row-major buffer of `rows` x `d_in` values in place (no copy).
  void apply(Scalar* data, Index rows, Index d_in,
             const RowSelection& selection = RowSelection::all()) {
    require(rows >= 0 && d_in >= 0, "steering: buffer shape [", rows, ", ", d_in, "] is negative");
    require(data != nullptr || rows == 0, "steering: null buffer of ", rows, " rows");
    if (rows == 0) {
      selection.validate(0);
      return;
    }
    Eigen::Map<RowMatrix<Scalar>> map(data, rows, d_in);
    run(nullptr, map, nullptr, selection);
  }

  /// @brief For an SAE on normalised activations: encodes `sae_input` (the rows the SAE sees,
  /// e.g. layer-normed `hidden`) and adds output_scale[b] * (decode(f') - decode(f)) to row b of
  /// `hidden` in place. (sae::Sae does the normalisation itself.)
  ///
  /// @param sae_input     `[tokens, d_in]`, the SAE's input for each row of `hidden`.
  /// @param hidden        `[tokens, d_in]` in the caller's memory; edited.
  /// @param output_scale  `[tokens]`, the factor the SAE's output is multiplied by on the way
  ///                      out (SAELens layer_norm: the row's standard deviation).
  /// @param rows          token positions to edit (default: all).
  void applyScaled(const ConstBatchRef<Scalar>& sae_input, BatchRef<Scalar> hidden,
                   const Eigen::Ref<const Vector<Scalar>>& output_scale,
                   const RowSelection& rows = RowSelection::all()) {
    require(sae_input.rows() == hidden.rows(), "steering: the SAE input has ", sae_input.rows(),
            " rows, the hidden state ", hidden.rows());
    detail::checkWidth(sae_input.cols(), m_model.dIn(), "the SAE input");
    require(output_scale.size() == hidden.rows(), "steering: output_scale has ",
            output_scale.size(), " entries, the hidden state ", hidden.rows(), " rows");
    for (Index r = 0; r < output_scale.size(); ++r)
      require(std::isfinite(output_scale[r]), "steering: output_scale[", r, "] is not finite (",
              output_scale[r], ")");
    run(&sae_input, hidden, output_scale.data(), rows);
  }

  /// @brief A copy of `x` with the edits applied to the selected rows.
  RowMatrix<Scalar> edited(const ConstBatchRef<Scalar>& x,
                           const RowSelection& rows = RowSelection::all()) {
    RowMatrix<Scalar> out = x;
    apply(out, rows);
    return out;
  }

  /// @brief Adds alpha * W_dec[feature, :] to the selected rows of `hidden` in place.
  void addDirection(BatchRef<Scalar> hidden, Index feature, Scalar alpha,
                    const RowSelection& rows = RowSelection::all()) const {
    steer::addDirection(hidden, m_model, feature, alpha, rows);
  }

  /// @brief Codes of the rows encoded by the last apply call that had edits, before editing:
  /// one row per selected row, in increasing row order.
  const Codes& codes() const { return m_codes; }

 private:
  // `scale`: null, or one factor per row of `hidden`.
  void run(const ConstBatchRef<Scalar>* input, BatchRef<Scalar> hidden, const Scalar* scale,
           const RowSelection& selection) {
    detail::checkWidth(hidden.cols(), m_model.dIn(), "the hidden state");
    const Index B = hidden.rows();
    selection.validate(B);
    if (m_edits.empty() || B == 0) return;
    const Index n_sel = m_kernel.selectRows(selection, B);
    if (n_sel == 0) return;
    if (!m_kernel.allRows()) {
      if (input)
        m_model.encode(m_kernel.gather(*input, n_sel), m_codes, m_ws);
      else
        m_model.encode(m_kernel.gather(hidden, n_sel), m_codes, m_ws);
      if (scale) {
        m_scale.resize(n_sel);
        for (Index t = 0; t < n_sel; ++t) m_scale[t] = scale[m_kernel.row(t)];
        scale = m_scale.data();
      }
    } else if (input) {
      m_model.encode(*input, m_codes, m_ws);
    } else {
      m_model.encode(hidden, m_codes, m_ws);
    }
    require(m_codes.rows() == n_sel, "steering: encode returned ", m_codes.rows(), " rows for ",
            n_sel);
    m_kernel.apply(m_model.parameters().rowMajor("W_dec"), m_units, m_edits, m_codes, scale,
                   hidden);
  }

  const Model& m_model;
  DecoderUnits m_units;
  EditList m_edits;
  Codes m_codes;
  Workspace m_ws;
  detail::EditKernel<Scalar> m_kernel;
  Vector<Scalar> m_scale;  // output scale of the selected rows
};

}  // namespace steer
}  // namespace sae

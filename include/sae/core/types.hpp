/// @file types.hpp
/// @brief Matrix and vector aliases used throughout the library.
#pragma once

#include <cstdint>

#include <Eigen/Core>

#include <sae/core/config.hpp>

namespace sae {

/// Row-major dynamic matrix: activations `[tokens, d_in]`, `W_dec [d_sae, d_in]`.
template <typename Scalar>
using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Column-major dynamic matrix: `W_enc [d_in, d_sae]` is stored this way so that the weights
/// of one latent (a column) are contiguous.
template <typename Scalar>
using ColMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

/// Dynamic column vector (biases, decoder norms).
template <typename Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// Row-major matrix of latent indices (TopK codes).
using IndexMatrix = Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Mask of latents, 1 = set (for example dead latents).
using LatentMask = Eigen::Matrix<std::uint8_t, Eigen::Dynamic, 1>;

/// Read-only view of a row-major batch of activations `[tokens, d_in]` in the caller's memory.
template <typename Scalar>
using ConstBatchRef = Eigen::Ref<const RowMatrix<Scalar>>;

}  // namespace sae

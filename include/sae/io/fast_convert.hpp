/// @file fast_convert.hpp
/// @brief Element conversion for the streaming reader: the conversions of dtype.hpp, with a
/// float16 decoder that compilers vectorise.
///
/// halfToFloat() in dtype.hpp selects between its three cases with conditional expressions,
/// which GCC 12 does not if-convert ("control flow in loop"), so its float16 loop runs one
/// element at a time (about 1 GB/s of input). halfToFloatBranchless() computes the same bits
/// with mask arithmetic instead and vectorises (several GB/s); the tests check that the two
/// agree on all 65536 inputs. Everything else is delegated to detail::convertElements().
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <sae/core/config.hpp>
#include <sae/io/dtype.hpp>

namespace sae::io::detail {

/// @brief IEEE binary16 bits to float, exactly as halfToFloat() (subnormals computed as
/// `mantissa * 2^-24`, a normal float, so flush-to-zero modes do not matter), without branches.
inline float halfToFloatBranchless(std::uint16_t h) {
  const std::uint32_t x = h;
  const std::uint32_t sign = (x & 0x8000u) << 16;
  const std::uint32_t magnitude = x & 0x7fffu;
  const float subnormal = static_cast<float>(static_cast<std::int32_t>(magnitude & 0x3ffu)) *
                          0x1p-24f;  // exact: at most 10 significant bits
  const std::uint32_t isSubnormal = 0u - static_cast<std::uint32_t>(magnitude < 0x0400u);
  const std::uint32_t isSpecial = 0u - static_cast<std::uint32_t>(magnitude >= 0x7c00u);
  // Rebias the exponent from 15 to 127; for infinity / NaN, OR-ing in 0x7f800000 sets the
  // exponent to 255 and keeps the mantissa (NaN payload).
  const std::uint32_t normal = (magnitude << 13) + 0x38000000u;
  std::uint32_t bits = (bitCast<std::uint32_t>(subnormal) & isSubnormal) | (normal & ~isSubnormal);
  bits |= isSpecial & 0x7f800000u;
  return bitCast<float>(bits | sign);
}

/// @brief As convertElements(): `n` contiguous file elements at `src` (any alignment) into
/// `dst`, with the vectorisable float16 decoder.
template <typename Scalar>
inline void convertElementsFast(const unsigned char* src, DType dtype, ByteOrder order, Index n,
                                Scalar* dst) {
  if (dtype != DType::F16) {
    convertElements(src, dtype, order, n, dst);
    return;
  }
  auto decode = [](std::uint16_t b) { return halfToFloatBranchless(b); };
  if (order == kNativeByteOrder) {
    convertLoop<std::uint16_t, false>(src, n, dst, decode);
  } else {
    convertLoop<std::uint16_t, true>(src, n, dst, decode);
  }
}

}  // namespace sae::io::detail

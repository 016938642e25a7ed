/// @file dtype.hpp
/// @brief Element types of array files (npy, safetensors, raw) and their exact conversion to
/// float / double.
///
/// Conversions are exact wherever the target can hold the value: float16 and bfloat16 widen to
/// float without rounding (subnormals, infinities and NaN included), float32 widens to double.
/// Narrowing (float64 -> float) rounds to nearest even, as a C++ cast does; integers convert to
/// the nearest float / double the same way (exact up to 2^24 / 2^53). convertIntegers() reads
/// integer elements exactly, as int64.
/// The element loops load through memcpy, so they work on unaligned mapped data, and are
/// branch-free so that the compiler can vectorise them.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include <sae/core/config.hpp>
#include <sae/core/enum_names.hpp>

namespace sae::io {

/// @brief Element type of an array stored in a file.
enum class DType : std::uint8_t {
  F32,   ///< IEEE-754 binary32.
  F64,   ///< IEEE-754 binary64.
  F16,   ///< IEEE-754 binary16 (half).
  BF16,  ///< bfloat16: the upper 16 bits of a binary32.
  U8,    ///< unsigned 8-bit integer (masks).
  Bool,  ///< one byte, 0 = false, anything else = true (numpy `|b1`).
  I8,    ///< signed 8-bit integer.
  I16,   ///< signed 16-bit integer.
  I32,   ///< signed 32-bit integer.
  I64,   ///< signed 64-bit integer.
  U16,   ///< unsigned 16-bit integer.
  U32,   ///< unsigned 32-bit integer.
  U64    ///< unsigned 64-bit integer.
};

}  // namespace sae::io

/// The readable names of the element types, used in messages.
template <>
struct sae::EnumNames<sae::io::DType> {
  static constexpr std::pair<io::DType, const char*> table[] = {
      {io::DType::F64, "float64"},   {io::DType::F32, "float32"}, {io::DType::F16, "float16"},
      {io::DType::BF16, "bfloat16"}, {io::DType::U8, "uint8"},    {io::DType::Bool, "bool"},
      {io::DType::I8, "int8"},       {io::DType::I16, "int16"},   {io::DType::I32, "int32"},
      {io::DType::I64, "int64"},     {io::DType::U16, "uint16"},  {io::DType::U32, "uint32"},
      {io::DType::U64, "uint64"}};
};

namespace sae::io {

/// @brief Byte order of multi-byte elements in a file.
enum class ByteOrder : std::uint8_t { Little, Big };

/// Byte order of the machine the library runs on.
inline constexpr ByteOrder kNativeByteOrder =
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ByteOrder::Little : ByteOrder::Big;

/// @brief True for the scalar types the readers and writers convert to and from: float, double.
template <typename Scalar>
inline constexpr bool kFloatOrDouble =
    std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;

/// @brief The DType of a float or double scalar: F32 or F64 (the default of the writers).
template <typename Scalar>
inline constexpr DType kDTypeOf = std::is_same_v<Scalar, float> ? DType::F32 : DType::F64;

/// @brief Size in bytes of one element of type `t`.
inline constexpr std::size_t dtypeSize(DType t) {
  switch (t) {
    case DType::F64:
    case DType::I64:
    case DType::U64:
      return 8;
    case DType::F32:
    case DType::I32:
    case DType::U32:
      return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16:
    case DType::U16:
      return 2;
    case DType::U8:
    case DType::Bool:
    case DType::I8:
      return 1;
  }
  return 0;
}

/// @brief True for the integer types (U8 included, Bool not).
inline constexpr bool dtypeIsInteger(DType t) {
  switch (t) {
    case DType::U8:
    case DType::I8:
    case DType::I16:
    case DType::I32:
    case DType::I64:
    case DType::U16:
    case DType::U32:
    case DType::U64:
      return true;
    default:
      return false;
  }
}

/// @brief Readable name of `t` ("float32", "bfloat16", ...), used in messages.
inline constexpr const char* dtypeName(DType t) { return enumName(t); }

namespace detail {

/// Reinterprets the bits of `from` as a `To` of the same size (std::bit_cast before C++20).
template <typename To, typename From>
inline To bitCast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bitCast needs types of the same size");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

inline std::uint8_t byteSwap(std::uint8_t v) { return v; }
inline std::uint16_t byteSwap(std::uint16_t v) { return __builtin_bswap16(v); }
inline std::uint32_t byteSwap(std::uint32_t v) { return __builtin_bswap32(v); }
inline std::uint64_t byteSwap(std::uint64_t v) { return __builtin_bswap64(v); }

}  // namespace detail

/// @brief Widens IEEE binary16 bits to float exactly (subnormals, infinities, NaN payloads).
///
/// Integer-only except for subnormals, which are computed as `mantissa * 2^-24`: the product is
/// a normal float, so the result does not depend on flush-to-zero / denormals-are-zero modes.
/// The three cases are selected with masks rather than branches so that conversion loops
/// vectorise (GCC does not if-convert the branchy form: about 1 GB/s instead of several).
inline float halfToFloat(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t magnitude = h & 0x7fffu;
  const float subnormal =
      static_cast<float>(static_cast<std::int32_t>(magnitude & 0x3ffu)) * 0x1p-24f;
  const std::uint32_t isSubnormal = 0u - static_cast<std::uint32_t>(magnitude < 0x0400u);
  const std::uint32_t isSpecial = 0u - static_cast<std::uint32_t>(magnitude >= 0x7c00u);
  // Rebias the exponent from 15 to 127; for infinity / NaN, OR-ing in 0x7f800000 sets the
  // exponent to 255 and keeps the mantissa (NaN payload).
  const std::uint32_t normal = (magnitude << 13) + 0x38000000u;
  std::uint32_t bits =
      (detail::bitCast<std::uint32_t>(subnormal) & isSubnormal) | (normal & ~isSubnormal);
  bits |= isSpecial & 0x7f800000u;
  return detail::bitCast<float>(bits | sign);
}

/// @brief Widens bfloat16 bits to float exactly: the bits are the upper half of a binary32.
inline float bfloat16ToFloat(std::uint16_t b) {
  return detail::bitCast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// @brief Rounds a float to bfloat16 bits, to nearest with ties to even.
///
/// Values beyond the largest bfloat16 become infinity, values below half the smallest subnormal
/// become zero (with the sign kept), NaN stays NaN (quieted).
inline std::uint16_t floatToBfloat16(float f) {
  const std::uint32_t u = detail::bitCast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  }
  const std::uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(rounded >> 16);
}

/// @brief Rounds a double to bfloat16 bits, to nearest with ties to even, in one rounding.
///
/// A plain `floatToBfloat16(float(d))` rounds twice and can round a value just above a tie the
/// wrong way. Here the double is first rounded to float *to odd* (an inexact result gets an odd
/// last bit), which keeps the information needed for the second rounding to be correct.
inline std::uint16_t doubleToBfloat16(double d) {
  const float f = static_cast<float>(d);
  if (std::isnan(d) || static_cast<double>(f) == d) return floatToBfloat16(f);
  std::uint32_t u = detail::bitCast<std::uint32_t>(f);
  if (std::isinf(f)) {
    u = (u & 0x80000000u) | 0x7f7fffffu;  // largest finite float, odd
  } else if ((u & 1u) == 0) {
    // Step to the neighbour on d's side, which is odd.
    u = std::abs(static_cast<double>(f)) > std::abs(d) ? u - 1 : u + 1;
  }
  return floatToBfloat16(detail::bitCast<float>(u));
}

/// @brief Rounds a double to IEEE binary16 bits, to nearest with ties to even, in one rounding.
///
/// Magnitudes from 65520 up become infinity (65504 is the largest half; 65520 is the midpoint
/// to the next power of two, and ties go to the even significand, which is the overflow);
/// magnitudes below 2^-25 become zero, keeping the sign; NaN stays NaN (quiet). A float
/// argument is widened exactly first, so floats also round once.
inline std::uint16_t doubleToHalf(double d) {
  const std::uint16_t sign = std::signbit(d) ? 0x8000u : 0u;
  if (std::isnan(d)) return static_cast<std::uint16_t>(sign | 0x7e00u);
  const double a = std::fabs(d);
  if (a >= 65520.0) return static_cast<std::uint16_t>(sign | 0x7c00u);
  if (a < 0x1p-14) {
    // Subnormal range: units of 2^-24, rounded to nearest even (exact scaling by 2^24);
    // 1024 units is the smallest normal, whose bits are the same integer.
    const double units = std::nearbyint(a * 0x1p24);
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(units));
  }
  int e = 0;
  const double m = std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
  // 11 significant bits: the significand as an integer in [1024, 2048], rounded once.
  double q = std::nearbyint(std::ldexp(m, 11));
  int exponent = e - 1;  // a = (q / 1024) 2^exponent
  if (q == 2048.0) {
    q = 1024.0;
    ++exponent;
  }
  // exponent <= 15 here: a < 65520 rounds to at most 65504 = 1.1111111111b 2^15.
  const auto biased = static_cast<std::uint16_t>(exponent + 15);
  return static_cast<std::uint16_t>(sign | (biased << 10) |
                                    (static_cast<std::uint16_t>(q) - 1024u));
}

namespace detail {

/// Unsigned integer of the same size as one element of the file type.
template <std::size_t Bytes>
struct BitsOfSize;
template <>
struct BitsOfSize<1> {
  using type = std::uint8_t;
};
template <>
struct BitsOfSize<2> {
  using type = std::uint16_t;
};
template <>
struct BitsOfSize<4> {
  using type = std::uint32_t;
};
template <>
struct BitsOfSize<8> {
  using type = std::uint64_t;
};

/// Converts `n` elements of `Bits`-sized raw data at `src` with `decode` into `dst`.
template <typename Bits, bool Swap, typename Scalar, typename Decode>
inline void convertLoop(const unsigned char* __restrict src, Index n, Scalar* __restrict dst,
                        Decode decode) {
  for (Index i = 0; i < n; ++i) {
    Bits bits;
    std::memcpy(&bits, src + static_cast<std::size_t>(i) * sizeof(Bits), sizeof(Bits));
    if constexpr (Swap) bits = byteSwap(bits);
    dst[i] = static_cast<Scalar>(decode(bits));
  }
}

template <bool Swap, typename Scalar>
inline void convertElementsImpl(const unsigned char* src, DType dtype, Index n, Scalar* dst) {
  switch (dtype) {
    case DType::F32:
      convertLoop<std::uint32_t, Swap>(src, n, dst,
                                       [](std::uint32_t b) { return bitCast<float>(b); });
      return;
    case DType::F64:
      convertLoop<std::uint64_t, Swap>(src, n, dst,
                                       [](std::uint64_t b) { return bitCast<double>(b); });
      return;
    case DType::F16:
      convertLoop<std::uint16_t, Swap>(src, n, dst, [](std::uint16_t b) { return halfToFloat(b); });
      return;
    case DType::BF16:
      convertLoop<std::uint16_t, Swap>(src, n, dst,
                                       [](std::uint16_t b) { return bfloat16ToFloat(b); });
      return;
    case DType::U8:
      convertLoop<std::uint8_t, false>(src, n, dst, [](std::uint8_t b) { return b; });
      return;
    case DType::Bool:
      convertLoop<std::uint8_t, false>(src, n, dst, [](std::uint8_t b) { return b != 0 ? 1 : 0; });
      return;
    case DType::I8:
      convertLoop<std::uint8_t, false>(src, n, dst,
                                       [](std::uint8_t b) { return bitCast<std::int8_t>(b); });
      return;
    case DType::I16:
      convertLoop<std::uint16_t, Swap>(src, n, dst,
                                       [](std::uint16_t b) { return bitCast<std::int16_t>(b); });
      return;
    case DType::I32:
      convertLoop<std::uint32_t, Swap>(src, n, dst,
                                       [](std::uint32_t b) { return bitCast<std::int32_t>(b); });
      return;
    case DType::I64:
      convertLoop<std::uint64_t, Swap>(src, n, dst,
                                       [](std::uint64_t b) { return bitCast<std::int64_t>(b); });
      return;
    case DType::U16:
      convertLoop<std::uint16_t, Swap>(src, n, dst, [](std::uint16_t b) { return b; });
      return;
    case DType::U32:
      convertLoop<std::uint32_t, Swap>(src, n, dst, [](std::uint32_t b) { return b; });
      return;
    case DType::U64:
      convertLoop<std::uint64_t, Swap>(src, n, dst, [](std::uint64_t b) { return b; });
      return;
  }
}

/// @brief Converts `n` contiguous file elements at `src` (any alignment) into `dst`.
/// @tparam Scalar float or double.
template <typename Scalar>
inline void convertElements(const unsigned char* src, DType dtype, ByteOrder order, Index n,
                            Scalar* dst) {
  static_assert(kFloatOrDouble<Scalar>, "array files are read into float or double");
  if (n <= 0) return;
  if (order == kNativeByteOrder || dtypeSize(dtype) == 1) {
    convertElementsImpl<false>(src, dtype, n, dst);
  } else {
    convertElementsImpl<true>(src, dtype, n, dst);
  }
}

/// @brief Decodes one integer element at `src` (any alignment) exactly, as int64.
/// @param dtype An integer type (dtypeIsInteger) or Bool; other types give 0.
/// @param fits Cleared when a uint64 value is above INT64_MAX (it is then returned wrapped).
inline std::int64_t decodeInteger(const unsigned char* src, DType dtype, ByteOrder order,
                                  bool& fits) {
  auto load = [&](auto bits) {
    std::memcpy(&bits, src, sizeof(bits));
    if (order != kNativeByteOrder) bits = byteSwap(bits);
    return bits;
  };
  switch (dtype) {
    case DType::U8:
      return load(std::uint8_t{});
    case DType::Bool:
      return load(std::uint8_t{}) != 0 ? 1 : 0;
    case DType::I8:
      return bitCast<std::int8_t>(load(std::uint8_t{}));
    case DType::I16:
      return bitCast<std::int16_t>(load(std::uint16_t{}));
    case DType::I32:
      return bitCast<std::int32_t>(load(std::uint32_t{}));
    case DType::I64:
      return bitCast<std::int64_t>(load(std::uint64_t{}));
    case DType::U16:
      return load(std::uint16_t{});
    case DType::U32:
      return load(std::uint32_t{});
    case DType::U64: {
      const std::uint64_t v = load(std::uint64_t{});
      if (v > std::uint64_t(std::numeric_limits<std::int64_t>::max())) fits = false;
      return bitCast<std::int64_t>(v);
    }
    default:
      return 0;
  }
}

/// @brief Stores `n` floats or doubles at `dst` as little-endian elements of `dtype`
/// (F32, F64, F16 or BF16, the types the writers produce).
template <typename Scalar>
inline void encodeLittleEndian(const Scalar* src, DType dtype, Index n, unsigned char* dst) {
  static_assert(kFloatOrDouble<Scalar>, "writers take float or double data");
  constexpr bool swap = kNativeByteOrder != ByteOrder::Little;
  auto store = [dst](Index i, auto bits) {
    if constexpr (swap) bits = byteSwap(bits);
    std::memcpy(dst + static_cast<std::size_t>(i) * sizeof(bits), &bits, sizeof(bits));
  };
  switch (dtype) {
    case DType::F32:
      for (Index i = 0; i < n; ++i) store(i, bitCast<std::uint32_t>(static_cast<float>(src[i])));
      return;
    case DType::F64:
      for (Index i = 0; i < n; ++i) store(i, bitCast<std::uint64_t>(static_cast<double>(src[i])));
      return;
    case DType::BF16:
      for (Index i = 0; i < n; ++i) {
        if constexpr (std::is_same_v<Scalar, float>) {
          store(i, floatToBfloat16(src[i]));
        } else {
          store(i, doubleToBfloat16(src[i]));
        }
      }
      return;
    case DType::F16:
      for (Index i = 0; i < n; ++i) store(i, doubleToHalf(static_cast<double>(src[i])));
      return;
    default:
      return;  // callers only pass F32, F64, F16 or BF16
  }
}

}  // namespace detail
}  // namespace sae::io

/// @file npz.hpp
/// @brief NumPy `.npz` archives as written by `np.savez`: NpzFile (memory-mapped reader),
/// readNpz() and listNpz() (the members, compressed ones included).
///
/// An `.npz` file is a zip archive holding one `.npy` member per array (`a.npy` for the array
/// saved as `a`, `arr_0.npy`... for positional arguments). `np.savez` stores the members
/// uncompressed (zip method 0), so each array is a plain `.npy` image at a fixed offset inside
/// the archive and can be memory-mapped and read row by row like a `.npy` file.
/// `np.savez_compressed` deflates the members; those archives are rejected with a message
/// naming np.savez_compressed (inflating would need zlib and a full copy of the data).
///
/// The reader validates the zip structure completely when the file is opened, before anything
/// is allocated from it: the end-of-central-directory record (and the zip64 locator and record
/// for archives beyond 4 GiB or 65535 members), every central-directory entry (including zip64
/// extra fields), every member's local header (signature, name and method agreeing with the
/// directory), that each member's data lies before the central directory, that no two members
/// overlap, and no duplicate names. Each `.npy` member's header is then validated as by
/// NpyReader, against the member's size. Members whose name does not end in `.npy` are
/// checked structurally and otherwise ignored, as numpy's loader would return them as bytes.
/// CRC-32 checksums are not verified (that would read every byte of a possibly huge archive
/// at open time). Encrypted members and multi-disk archives are rejected.
///
/// Messages name the archive, the member, the byte offset at fault and expected vs found; an
/// error inside a member's npy header reads "<file>: member '<m>' at offset <o>: ..." with the
/// byte offsets of the npy message counted from the start of the member.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/array_view.hpp>
#include <sae/io/dtype.hpp>
#include <sae/io/mapped_file.hpp>
#include <sae/io/npy.hpp>

namespace sae::io {

/// @brief Description of one array of an `.npz` archive.
struct NpzArrayInfo {
  std::string name;                ///< Array name: the member name without ".npy".
  std::string member;              ///< Member name in the archive, e.g. "a.npy".
  std::uint64_t memberOffset = 0;  ///< Offset of the member's npy image (its magic) in the file.
  std::uint64_t memberSize = 0;    ///< Size of the member's npy image in bytes.
  std::uint64_t dataOffset = 0;    ///< Offset of the array's first data byte in the file.
  std::string descr;               ///< numpy dtype string as written, e.g. "<f4".
  DType dtype = DType::F32;
  ByteOrder order = ByteOrder::Little;
  bool fortran = false;      ///< Stored in Fortran (column-major) order.
  std::vector<Index> shape;  ///< Shape as stored.
  Index rows = 1;            ///< Rows of the flattened view (product of the leading dimensions).
  Index cols = 1;            ///< Columns of the flattened view (the last dimension).
};

namespace detail {

/// One member of a zip archive, from its central-directory entry and local header.
struct ZipEntry {
  std::string name;                     ///< Member name as stored (bytes).
  std::uint16_t flags = 0;              ///< General-purpose bit flags.
  std::uint16_t method = 0;             ///< Compression method (0 = stored, 8 = deflate...).
  std::uint64_t compressedSize = 0;     ///< Bytes of (possibly compressed) data.
  std::uint64_t size = 0;               ///< Uncompressed size.
  std::uint64_t localHeaderOffset = 0;  ///< Offset of the local file header.
  std::uint64_t dataOffset = 0;         ///< Offset of the first data byte.
};

/// Little-endian unsigned integer of `Bytes` bytes at `p`.
template <int Bytes>
inline std::uint64_t loadLE(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = Bytes; i-- > 0;) v = (v << 8) | p[i];
  return v;
}

/// Name of a zip compression method, for messages.
inline const char* zipMethodName(std::uint16_t method) {
  switch (method) {
    case 0:
      return "stored";
    case 8:
      return "deflate";
    case 9:
      return "deflate64";
    case 12:
      return "bzip2";
    case 14:
      return "lzma";
    case 93:
      return "zstandard";
    case 95:
      return "xz";
    default:
      return "unknown";
  }
}

/// A member name printed in a message: control characters and quotes escaped, cut to 80.
inline std::string printableName(const std::string& name) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (const char ch : name) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f || c == '\'' || c == '\\') {
      s += "\\x";
      s += hex[c >> 4];
      s += hex[c & 15];
    } else {
      s += ch;
    }
    if (s.size() >= 80) {
      s += "...";
      break;
    }
  }
  return s;
}

/// @brief Parses and validates the zip structure of the archive mapped at `data` (see the file
/// comment). Throws FormatError naming `path`, the byte offset and expected vs found.
inline std::vector<ZipEntry> parseZipDirectory(const unsigned char* data, std::uint64_t size,
                                               const std::string& path) {
  using sae::detail::concat;
  auto fail = [&path](const std::string& what) { throw FormatError(concat(path, ": ", what)); };
  constexpr std::uint64_t kEocdSize = 22;
  constexpr std::uint64_t kLocatorSize = 20;
  constexpr std::uint64_t kZip64EocdSize = 56;
  constexpr std::uint64_t kCentralSize = 46;
  constexpr std::uint64_t kLocalSize = 30;
  if (size == 0) fail("empty file: expected a zip archive (npz)");
  if (size < kEocdSize) {
    fail(concat("not a zip archive (npz): ", size,
                " bytes, shorter than the 22-byte end-of-central-directory record"));
  }

  // End-of-central-directory record: the last "PK\5\6" whose comment ends the file.
  const std::uint64_t lowest = size - kEocdSize > 0xffff ? size - kEocdSize - 0xffff : 0;
  std::uint64_t eocd = size;
  for (std::uint64_t pos = size - kEocdSize + 1; pos-- > lowest;) {
    if (loadLE<4>(data + pos) == 0x06054b50 &&
        pos + kEocdSize + loadLE<2>(data + pos + 20) == size) {
      eocd = pos;
      break;
    }
  }
  if (eocd == size) {
    fail(concat("not a zip archive (npz): no end-of-central-directory record (signature ",
                hexBytes(reinterpret_cast<const unsigned char*>("PK\5\6"), 4), ") in the last ",
                size - lowest, " bytes; the file is truncated or not a zip"));
  }
  const unsigned char* e = data + eocd;
  std::uint64_t disk = loadLE<2>(e + 4);
  std::uint64_t cdDisk = loadLE<2>(e + 6);
  std::uint64_t diskEntries = loadLE<2>(e + 8);
  std::uint64_t entries = loadLE<2>(e + 10);
  std::uint64_t cdSize = loadLE<4>(e + 12);
  std::uint64_t cdOffset = loadLE<4>(e + 16);
  std::uint64_t cdEndLimit = eocd;  // the central directory ends before this offset

  // Zip64: a locator right before the record points at the zip64 end-of-central-directory.
  const bool needs64 =
      entries == 0xffff || diskEntries == 0xffff || cdSize == 0xffffffff || cdOffset == 0xffffffff;
  const bool hasLocator = eocd >= kLocatorSize && loadLE<4>(e - kLocatorSize) == 0x07064b50;
  if (hasLocator) {
    const std::uint64_t locator = eocd - kLocatorSize;
    const unsigned char* l = data + locator;
    const std::uint64_t at = loadLE<8>(l + 8);
    if (loadLE<4>(l + 4) != 0 || loadLE<4>(l + 16) > 1) {
      fail(concat("multi-disk (split) zip archives are not supported (zip64 locator at offset ",
                  locator, ")"));
    }
    if (at > locator || locator - at < kZip64EocdSize) {
      fail(concat("zip64 end-of-central-directory record at offset ", at,
                  " (from the locator at offset ", locator,
                  ") is out of range: it must end before the locator"));
    }
    const unsigned char* z = data + at;
    if (loadLE<4>(z) != 0x06064b50) {
      fail(concat("bad zip64 end-of-central-directory signature at offset ", at, ": expected ",
                  hexBytes(reinterpret_cast<const unsigned char*>("PK\6\6"), 4), ", found ",
                  hexBytes(z, 4)));
    }
    disk = loadLE<4>(z + 16);
    cdDisk = loadLE<4>(z + 20);
    diskEntries = loadLE<8>(z + 24);
    entries = loadLE<8>(z + 32);
    cdSize = loadLE<8>(z + 40);
    cdOffset = loadLE<8>(z + 48);
    cdEndLimit = at;
  } else if (needs64) {
    fail(concat("the end-of-central-directory record at offset ", eocd,
                " defers to a zip64 record, but there is no zip64 locator before it"));
  }
  if (disk != 0 || cdDisk != 0 || diskEntries != entries) {
    fail(
        concat("multi-disk (split) zip archives are not supported (end-of-central-directory "
               "record at offset ",
               eocd, ")"));
  }
  if (cdOffset > cdEndLimit || cdSize > cdEndLimit - cdOffset) {
    fail(concat("central directory (offset ", cdOffset, ", ", cdSize,
                " bytes) is out of range: it must end by offset ", cdEndLimit, " of ", size,
                " bytes"));
  }
  if (entries > cdSize / kCentralSize) {
    fail(concat("central directory of ", cdSize, " bytes at offset ", cdOffset, " cannot hold the ",
                entries, " entries the end record announces"));
  }

  std::vector<ZipEntry> out;
  out.reserve(static_cast<std::size_t>(entries));
  std::map<std::string, std::size_t> seen;
  const std::uint64_t cdEnd = cdOffset + cdSize;
  std::uint64_t p = cdOffset;
  for (std::uint64_t i = 0; i < entries; ++i) {
    if (cdEnd - p < kCentralSize) {
      fail(concat("central directory entry ", i, " at offset ", p,
                  " runs past the end of the central directory at offset ", cdEnd));
    }
    const unsigned char* c = data + p;
    if (loadLE<4>(c) != 0x02014b50) {
      fail(concat("bad central directory entry signature at offset ", p, " (entry ", i,
                  "): expected ", hexBytes(reinterpret_cast<const unsigned char*>("PK\1\2"), 4),
                  ", found ", hexBytes(c, 4)));
    }
    ZipEntry z;
    z.flags = static_cast<std::uint16_t>(loadLE<2>(c + 8));
    z.method = static_cast<std::uint16_t>(loadLE<2>(c + 10));
    z.compressedSize = loadLE<4>(c + 20);
    z.size = loadLE<4>(c + 24);
    const std::uint64_t nameLen = loadLE<2>(c + 28);
    const std::uint64_t extraLen = loadLE<2>(c + 30);
    const std::uint64_t commentLen = loadLE<2>(c + 32);
    std::uint64_t startDisk = loadLE<2>(c + 34);
    z.localHeaderOffset = loadLE<4>(c + 42);
    if (cdEnd - p - kCentralSize < nameLen + extraLen + commentLen) {
      fail(concat("central directory entry ", i, " at offset ", p,
                  " (name, extra field and "
                  "comment of ",
                  nameLen + extraLen + commentLen,
                  " bytes) runs past the end of the central directory at offset ", cdEnd));
    }
    z.name.assign(reinterpret_cast<const char*>(c + kCentralSize),
                  static_cast<std::size_t>(nameLen));
    const std::string shown = printableName(z.name);

    // Zip64 extended information: the 64-bit values of the fields saturated at 0xffffffff, in
    // the order uncompressed size, compressed size, local header offset, start disk.
    const unsigned char* x = c + kCentralSize + nameLen;
    for (std::uint64_t q = 0; q + 4 <= extraLen;) {
      const std::uint64_t id = loadLE<2>(x + q);
      const std::uint64_t len = loadLE<2>(x + q + 2);
      if (len > extraLen - q - 4) {
        fail(concat("extra field of entry '", shown, "' at offset ", p + kCentralSize + nameLen + q,
                    " runs past the end of its extra data"));
      }
      if (id == 0x0001) {
        const unsigned char* f = x + q + 4;
        std::uint64_t used = 0;
        auto take = [&](std::uint64_t& field, std::uint64_t saturated, int bytes) {
          if (field != saturated) return;
          if (len - used < static_cast<std::uint64_t>(bytes)) {
            fail(concat("zip64 extra field of entry '", shown, "' at offset ",
                        p + kCentralSize + nameLen + q, " is too short: ", len,
                        " bytes do not hold every field marked 0xffffffff in the entry"));
          }
          field = bytes == 8 ? loadLE<8>(f + used) : loadLE<4>(f + used);
          used += static_cast<std::uint64_t>(bytes);
        };
        take(z.size, 0xffffffff, 8);
        take(z.compressedSize, 0xffffffff, 8);
        take(z.localHeaderOffset, 0xffffffff, 8);
        take(startDisk, 0xffff, 4);
      }
      q += 4 + len;
    }
    if (startDisk != 0) {
      fail(concat("entry '", shown, "' starts on disk ", startDisk,
                  ": multi-disk (split) zip archives are not supported"));
    }
    if ((z.flags & 1u) != 0) {
      fail(concat("entry '", shown, "' is encrypted; encrypted archives are not supported"));
    }

    // Local header: must precede the central directory and agree with the entry.
    const std::uint64_t lh = z.localHeaderOffset;
    if (lh > cdOffset || cdOffset - lh < kLocalSize) {
      fail(concat("local header of entry '", shown, "' at offset ", lh,
                  " is out of range: local headers must end before the central directory at "
                  "offset ",
                  cdOffset));
    }
    const unsigned char* h = data + lh;
    if (loadLE<4>(h) != 0x04034b50) {
      fail(concat("bad local header signature of entry '", shown, "' at offset ", lh, ": expected ",
                  hexBytes(reinterpret_cast<const unsigned char*>("PK\3\4"), 4), ", found ",
                  hexBytes(h, 4)));
    }
    const std::uint64_t localName = loadLE<2>(h + 26);
    const std::uint64_t localExtra = loadLE<2>(h + 28);
    if (cdOffset - lh - kLocalSize < localName + localExtra) {
      fail(concat("local header of entry '", shown, "' at offset ", lh,
                  " runs into the central directory at offset ", cdOffset));
    }
    if (localName != nameLen || std::memcmp(h + kLocalSize, z.name.data(), nameLen) != 0) {
      fail(concat("local header at offset ", lh, " names '",
                  printableName(std::string(reinterpret_cast<const char*>(h + kLocalSize),
                                            static_cast<std::size_t>(localName))),
                  "', but the central directory names '", shown, "'"));
    }
    const std::uint64_t localMethod = loadLE<2>(h + 8);
    if (localMethod != z.method) {
      fail(concat("local header of entry '", shown, "' at offset ", lh, " gives method ",
                  localMethod, ", the central directory ", z.method));
    }
    z.dataOffset = lh + kLocalSize + localName + localExtra;
    if (z.compressedSize > cdOffset - z.dataOffset) {
      fail(concat("data of entry '", shown, "' (offset ", z.dataOffset, ", ", z.compressedSize,
                  " bytes) runs past the start of the central directory at offset ", cdOffset));
    }
    if (z.method == 0 && z.compressedSize != z.size) {
      fail(concat("stored entry '", shown, "' has compressed size ", z.compressedSize,
                  " but uncompressed size ", z.size));
    }
    if (!seen.emplace(z.name, out.size()).second) {
      fail(concat("duplicate entry '", shown, "' in the central directory"));
    }
    out.push_back(std::move(z));
    p += kCentralSize + nameLen + extraLen + commentLen;
  }

  // No two members' local header + data may overlap.
  std::vector<std::tuple<std::uint64_t, std::uint64_t, std::size_t>> spans;
  spans.reserve(out.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    spans.emplace_back(out[i].localHeaderOffset, out[i].dataOffset + out[i].compressedSize, i);
  }
  std::sort(spans.begin(), spans.end());
  for (std::size_t i = 1; i < spans.size(); ++i) {
    if (std::get<0>(spans[i]) < std::get<1>(spans[i - 1])) {
      const ZipEntry& a = out[std::get<2>(spans[i - 1])];
      const ZipEntry& b = out[std::get<2>(spans[i])];
      fail(concat("entries '", printableName(a.name), "' (offsets ", std::get<0>(spans[i - 1]),
                  " to ", std::get<1>(spans[i - 1]), ") and '", printableName(b.name),
                  "' (offsets ", std::get<0>(spans[i]), " to ", std::get<1>(spans[i]),
                  ") overlap"));
    }
  }
  return out;
}

/// @brief Parses the zip structure and the header of every `.npy` member of the archive
/// mapped at `data`. Throws FormatError (see the file comment), including for a compressed
/// `.npy` member (np.savez_compressed).
inline std::vector<NpzArrayInfo> parseNpz(const unsigned char* data, std::uint64_t size,
                                          const std::string& path) {
  using sae::detail::concat;
  const std::vector<ZipEntry> entries = parseZipDirectory(data, size, path);
  std::vector<NpzArrayInfo> arrays;
  for (const ZipEntry& z : entries) {
    constexpr std::size_t kSuffix = 4;  // ".npy"
    if (z.name.size() <= kSuffix || z.name.compare(z.name.size() - kSuffix, kSuffix, ".npy") != 0) {
      continue;
    }
    if (z.method != 0) {
      throw FormatError(
          concat(path, ": member '", printableName(z.name), "' is compressed (",
                 zipMethodName(z.method), ", zip method ", z.method,
                 "); archives written by np.savez_compressed are not supported: only uncompressed "
                 "members (np.savez) can be memory-mapped; re-save the arrays with np.savez"));
    }
    const std::string where =
        concat(path, ": member '", printableName(z.name), "' at offset ", z.dataOffset);
    const NpyHeader h = parseNpyHeader(data + z.dataOffset, z.size, where);
    NpzArrayInfo a;
    a.member = z.name;
    a.name = z.name.substr(0, z.name.size() - kSuffix);
    a.memberOffset = z.dataOffset;
    a.memberSize = z.size;
    a.dataOffset = z.dataOffset + h.dataOffset;
    a.descr = h.descr;
    copyArrayLayout(a, h, h.flat.rows, h.flat.cols);
    arrays.push_back(std::move(a));
  }
  return arrays;
}

}  // namespace detail

/// @brief One member of an `.npz` archive, as listNpz() reports it.
struct NpzMemberInfo {
  std::string name;          ///< Array name: the member name without ".npy" (else the member name).
  std::string member;        ///< Member name in the archive.
  bool compressed = false;   ///< Stored compressed (np.savez_compressed): no header read.
  bool npy = false;          ///< An uncompressed `.npy` member whose header was read.
  std::string descr;         ///< numpy dtype string, e.g. "<f4" (when npy).
  bool fortran = false;      ///< Fortran order (when npy).
  std::vector<Index> shape;  ///< Shape as stored (when npy).
};

/// @brief Lists the members of an `.npz` archive, compressed ones included (which NpzFile
/// rejects): the zip structure is validated as by NpzFile, then each uncompressed `.npy`
/// member's header (float, mask or integer dtypes) is read. FormatError naming the archive and
/// member for anything malformed; IoError when the file cannot be opened.
inline std::vector<NpzMemberInfo> listNpz(const std::string& path) {
  const MappedFile f(path);
  const std::vector<detail::ZipEntry> entries = detail::parseZipDirectory(f.data(), f.size(), path);
  std::vector<NpzMemberInfo> out;
  for (const detail::ZipEntry& z : entries) {
    NpzMemberInfo m;
    m.member = z.name;
    const bool isNpy = z.name.size() > 4 && z.name.compare(z.name.size() - 4, 4, ".npy") == 0;
    m.name = isNpy ? z.name.substr(0, z.name.size() - 4) : z.name;
    m.compressed = z.method != 0;
    if (isNpy && !m.compressed) {
      const std::string where = sae::detail::concat(
          path, ": member '", detail::printableName(z.name), "' at offset ", z.dataOffset);
      detail::NpyHeader h;
      try {
        h = detail::parseNpyHeader(f.data() + z.dataOffset, z.size, where);
      } catch (const FormatError& real) {
        // Not a float or mask array: an integer one, or the first error stands.
        try {
          h = detail::parseNpyHeader(f.data() + z.dataOffset, z.size, where,
                                     detail::NpyElements::Integer);
        } catch (const FormatError&) {
          throw real;
        }
      }
      m.npy = true;
      m.descr = h.descr;
      m.fortran = h.fortran;
      m.shape = h.shape;
    }
    out.push_back(std::move(m));
  }
  return out;
}

/// @brief Memory-mapped reader of an `.npz` archive written by `np.savez`.
///
/// The constructor maps the file and validates the archive and every array's npy header (see
/// the file comment). Arrays are then read by name, converted from the mapping into float or
/// double, as `[rows, cols]` matrices: 1-D arrays as one row `[1, n]`, N-D arrays with their
/// leading dimensions flattened into rows. C and Fortran order, both byte orders, the dtypes of
/// NpyReader.
///
/// @code
/// sae::io::NpzFile npz("acts.npz");                   // np.savez("acts.npz", acts=a, ids=b)
/// auto acts = npz.read<float>("acts");                // whole array
/// sae::RowMatrix<float> rows(100, npz.info("acts").cols);
/// npz.readRows<float>("acts", 1000, 1100, rows);      // a row range, straight from the map
/// @endcode
class NpzFile {
 public:
  /// @brief Opens and validates `path`.
  /// @param path The .npz file. Throws IoError when it cannot be opened or mapped, FormatError
  ///        when it is not a valid uncompressed npz archive (the message names the file, the
  ///        member and the byte offset; a compressed member names np.savez_compressed).
  explicit NpzFile(const std::string& path) : m_file(path) {
    m_arrays = detail::parseNpz(m_file.data(), m_file.size(), path);
    for (std::size_t i = 0; i < m_arrays.size(); ++i) {
      const NpzArrayInfo& a = m_arrays[i];
      m_index.emplace(a.name, i);
      detail::ArrayView v;
      v.where = sae::detail::concat(path, ": array '", a.name, "'");
      v.data = a.rows * a.cols > 0 ? m_file.data() + a.dataOffset : nullptr;
      detail::copyArrayLayout(v, a, a.rows, a.cols);
      m_views.push_back(std::move(v));
    }
  }

  /// @brief Path the archive was opened with.
  const std::string& path() const noexcept { return m_file.path(); }

  /// @brief Names of the arrays (member names without ".npy"), in archive order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(m_arrays.size());
    for (const auto& a : m_arrays) out.push_back(a.name);
    return out;
  }

  /// @brief True when the archive holds an array of that name.
  bool contains(const std::string& name) const { return m_index.count(name) != 0; }

  /// @brief Description of array `name`.
  /// Throws FormatError listing the arrays present when there is none of that name.
  const NpzArrayInfo& info(const std::string& name) const { return m_arrays[indexOf(name)]; }

  /// @brief Reads a whole array: 1-D as `[1, n]`, 2-D as is, N-D flattened to rows.
  /// @tparam Scalar float or double. @param name Array name (FormatError when missing).
  template <typename Scalar>
  RowMatrix<Scalar> read(const std::string& name) const {
    const detail::ArrayView& v = m_views[indexOf(name)];
    RowMatrix<Scalar> m(v.rows, v.cols);
    v.readRows<Scalar>(0, v.rows, m);
    return m;
  }

  /// @brief Converts rows [begin, end) of the flattened view of array `name` into `out`.
  /// @param out Exactly `end - begin` by `info(name).cols`; ConfigError for a bad range or size.
  template <typename Scalar>
  void readRows(const std::string& name, Index begin, Index end,
                Eigen::Ref<RowMatrix<Scalar>> out) const {
    m_views[indexOf(name)].readRows<Scalar>(begin, end, out);
  }

 private:
  std::size_t indexOf(const std::string& name) const {
    const auto it = m_index.find(name);
    if (it == m_index.end()) {
      throw FormatError(sae::detail::concat(path(), ": no array named '", name,
                                            "' (arrays present: ", arrayList(), ")"));
    }
    return it->second;
  }

  // "a, b, c" (the first 20 names, then "and N more"; "none" for an empty archive).
  std::string arrayList() const {
    std::string s;
    const std::size_t shown = std::min<std::size_t>(m_arrays.size(), 20);
    for (std::size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + m_arrays[i].name;
    if (m_arrays.size() > shown)
      s += sae::detail::concat(" and ", m_arrays.size() - shown, " more");
    return m_arrays.empty() ? "none" : s;
  }

  MappedFile m_file;
  std::vector<NpzArrayInfo> m_arrays;
  std::vector<detail::ArrayView> m_views;
  std::map<std::string, std::size_t> m_index;
};

/// @brief Reads array `name` of an `.npz` archive as a `[rows, cols]` matrix.
/// @tparam Scalar float or double. @param path The archive. @param name The array.
template <typename Scalar>
RowMatrix<Scalar> readNpz(const std::string& path, const std::string& name) {
  return NpzFile(path).read<Scalar>(name);
}

}  // namespace sae::io

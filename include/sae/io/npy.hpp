/// @file npy.hpp
/// @brief NumPy `.npy` files: NpyReader (memory-mapped, row ranges), readNpy(), readNpyMask(),
/// NpyIntegerReader / readNpyIntegers() (integer arrays such as token ids, read exactly),
/// writeNpy(), writeNpyVector(), writeNpyMask(), NpyStreamWriter (rows appended in chunks).
///
/// Format (numpy.lib.format, versions 1.0, 2.0 and 3.0): the magic `\x93NUMPY`, two version
/// bytes, the header length (little-endian u16 for 1.0, u32 for 2.0 and 3.0), then the header:
/// a Python dict literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`
/// padded with spaces and a newline, then the raw array data.
///
/// The header is parsed as the Python literal it is, by a small recursive-descent parser for
/// the subset numpy writes (dict, tuple, list, string, int, float, True/False/None), and then
/// validated completely (keys, dtype, shape, sizes against the file size) before anything is
/// allocated from it. Supported dtypes: `<f4 >f4 <f8 >f8 <f2 >f2` (either byte order),
/// `|u1 <u1 >u1` and `|b1` (masks). Arrays may be stored in C or Fortran order and have any
/// number of dimensions; the reader presents them as `[rows, cols]`, the leading dimensions
/// flattened into rows (see array_view.hpp). Integer arrays (`|i1 <i2 <i4 <i8 |u1 <u2 <u4 <u8`,
/// either byte order) are read by NpyIntegerReader only.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/array_view.hpp>
#include <sae/io/atomic_write.hpp>
#include <sae/io/dtype.hpp>
#include <sae/io/mapped_file.hpp>

namespace sae::io {

namespace detail {

/// A value of the Python literal subset that npy headers use.
struct PyValue {
  enum class Kind { Dict, Tuple, List, Str, Int, Float, Bool, None };
  Kind kind = Kind::None;
  std::size_t offset = 0;          ///< Byte offset in the file where the value starts.
  std::string text;                ///< Str: the contents; Int / Float: the literal as written.
  std::int64_t integer = 0;        ///< Int.
  bool boolean = false;            ///< Bool.
  std::vector<PyValue> items;      ///< Tuple / List elements; Dict values.
  std::vector<std::string> keys;   ///< Dict keys, parallel to items.
  std::vector<std::size_t> keyAt;  ///< Dict: byte offset of each key.
};

/// "a dict", "an int"...: the kind of a value, for messages.
inline const char* describeKind(PyValue::Kind k) {
  using K = PyValue::Kind;
  static constexpr std::pair<K, const char*> names[] = {
      {K::Dict, "a dict"}, {K::Tuple, "a tuple"}, {K::List, "a list"}, {K::Str, "a string"},
      {K::Int, "an int"},  {K::Float, "a float"}, {K::Bool, "a bool"}, {K::None, "None"}};
  return sae::detail::findName(names, k);
}

/// @brief Recursive-descent parser for one Python literal (the npy header dict).
///
/// Errors are FormatError "<path>: malformed npy header at byte <offset>: <what>", the offset
/// counted from the start of the file. Nesting is limited to kMaxDepth levels so that a hostile
/// header cannot exhaust the stack.
class PyLiteralParser {
 public:
  static constexpr int kMaxDepth = 16;

  /// @param text Header text. @param fileOffset Offset of its first byte in the file.
  /// @param path File named in messages.
  PyLiteralParser(std::string_view text, std::size_t fileOffset, const std::string& path)
      : m_text(text), m_base(fileOffset), m_path(path) {}

  /// @brief Parses one value followed only by whitespace.
  PyValue parseDocument() {
    PyValue v = parseValue(0);
    skipSpace();
    if (m_pos != m_text.size()) fail(m_pos, "unexpected text after the value: " + found(m_pos));
    return v;
  }

 private:
  static bool isSpace(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  }
  static bool isDigit(char c) { return c >= '0' && c <= '9'; }
  static bool isNameStart(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  }
  static bool isNameChar(char c) { return isNameStart(c) || isDigit(c); }

  void skipSpace() {
    while (m_pos < m_text.size() && isSpace(m_text[m_pos])) ++m_pos;
  }

  /// "'x'", "byte 0x07" or "the end of the header": what is at `pos`.
  std::string found(std::size_t pos) const {
    if (pos >= m_text.size()) return "the end of the header";
    const auto c = static_cast<unsigned char>(m_text[pos]);
    if (c >= 0x20 && c < 0x7f) return std::string("'") + static_cast<char>(c) + "'";
    static const char* hex = "0123456789abcdef";
    return std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
  }

  [[noreturn]] void fail(std::size_t pos, const std::string& what) const {
    throw FormatError(
        sae::detail::concat(m_path, ": malformed npy header at byte ", m_base + pos, ": ", what));
  }

  PyValue parseValue(int depth) {
    skipSpace();
    if (m_pos >= m_text.size()) fail(m_pos, "expected a value, found the end of the header");
    const char c = m_text[m_pos];
    if (c == '{' || c == '(' || c == '[') {
      if (depth >= kMaxDepth) {
        fail(m_pos, sae::detail::concat("nesting deeper than ", kMaxDepth, " levels"));
      }
      if (c == '{') return parseDict(depth + 1);
      return parseSequence(depth + 1, c == '(');
    }
    if (c == '\'' || c == '"') return parseString(m_pos);
    if (isDigit(c) || c == '-' || c == '+' || c == '.') return parseNumber();
    if (isNameStart(c)) return parseName();
    fail(m_pos, "expected a value, found " + found(m_pos));
  }

  PyValue parseDict(int depth) {
    PyValue v;
    v.kind = PyValue::Kind::Dict;
    v.offset = m_base + m_pos;
    ++m_pos;  // '{'
    skipSpace();
    if (m_pos < m_text.size() && m_text[m_pos] == '}') {
      ++m_pos;
      return v;
    }
    for (;;) {
      skipSpace();
      const std::size_t keyPos = m_pos;
      PyValue key = parseValue(depth);
      if (key.kind != PyValue::Kind::Str) {
        fail(keyPos,
             sae::detail::concat("dict keys must be strings, found ", describeKind(key.kind)));
      }
      skipSpace();
      if (m_pos >= m_text.size() || m_text[m_pos] != ':') {
        fail(m_pos, "expected ':' after a dict key, found " + found(m_pos));
      }
      ++m_pos;
      v.keys.push_back(std::move(key.text));
      v.keyAt.push_back(m_base + keyPos);
      v.items.push_back(parseValue(depth));
      skipSpace();
      if (m_pos < m_text.size() && m_text[m_pos] == ',') {
        ++m_pos;
        skipSpace();
        if (m_pos < m_text.size() && m_text[m_pos] == '}') {
          ++m_pos;
          return v;
        }
        continue;
      }
      if (m_pos < m_text.size() && m_text[m_pos] == '}') {
        ++m_pos;
        return v;
      }
      fail(m_pos, "expected ',' or '}' in a dict, found " + found(m_pos));
    }
  }

  // A tuple "(...)" (or a parenthesised value "(x)") or a list "[...]".
  PyValue parseSequence(int depth, bool tuple) {
    const char close = tuple ? ')' : ']';
    PyValue v;
    v.kind = tuple ? PyValue::Kind::Tuple : PyValue::Kind::List;
    v.offset = m_base + m_pos;
    ++m_pos;  // '(' or '['
    skipSpace();
    if (m_pos < m_text.size() && m_text[m_pos] == close) {
      ++m_pos;
      return v;
    }
    bool sawComma = false;
    for (;;) {
      v.items.push_back(parseValue(depth));
      skipSpace();
      if (m_pos < m_text.size() && m_text[m_pos] == ',') {
        sawComma = true;
        ++m_pos;
        skipSpace();
        if (m_pos < m_text.size() && m_text[m_pos] == close) {
          ++m_pos;
          return v;
        }
        continue;
      }
      if (m_pos < m_text.size() && m_text[m_pos] == close) {
        ++m_pos;
        if (tuple && !sawComma) return std::move(v.items.front());  // "(x)" is just x
        return v;
      }
      fail(m_pos, sae::detail::concat("expected ',' or '", close, "' in a ",
                                      tuple ? "tuple" : "list", ", found ", found(m_pos)));
    }
  }

  // A quoted string starting at `start` (the quote, after any prefix letter at m_pos).
  PyValue parseString(std::size_t start) {
    PyValue v;
    v.kind = PyValue::Kind::Str;
    v.offset = m_base + start;
    const char quote = m_text[m_pos];
    ++m_pos;
    for (;;) {
      if (m_pos >= m_text.size() || m_text[m_pos] == '\n') fail(start, "unterminated string");
      char c = m_text[m_pos++];
      if (c == quote) return v;
      if (c == '\\') {
        if (m_pos >= m_text.size()) fail(start, "unterminated string");
        const char e = m_text[m_pos++];
        switch (e) {
          case 'n':
            c = '\n';
            break;
          case 't':
            c = '\t';
            break;
          case 'r':
            c = '\r';
            break;
          case '\\':
          case '\'':
          case '"':
            c = e;
            break;
          default:  // unknown escapes stay as written, as in Python
            v.text += '\\';
            c = e;
        }
      }
      v.text += c;
    }
  }

  PyValue parseNumber() {
    PyValue v;
    v.offset = m_base + m_pos;
    const std::size_t start = m_pos;
    bool negative = false;
    if (m_text[m_pos] == '-' || m_text[m_pos] == '+') negative = m_text[m_pos++] == '-';
    const std::size_t digitsAt = m_pos;
    while (m_pos < m_text.size()) {
      const char c = m_text[m_pos];
      const bool exponentSign =
          (c == '+' || c == '-') && (m_text[m_pos - 1] == 'e' || m_text[m_pos - 1] == 'E');
      if (!(isNameChar(c) || c == '.' || exponentSign)) break;
      ++m_pos;
    }
    const std::string_view body = m_text.substr(digitsAt, m_pos - digitsAt);
    v.text = std::string(m_text.substr(start, m_pos - start));
    // Integer: digits, with the "L" suffix of Python 2 era headers allowed.
    std::string_view digits = body;
    if (!digits.empty() && (digits.back() == 'L' || digits.back() == 'l')) digits.remove_suffix(1);
    bool allDigits = !digits.empty();
    for (char c : digits) allDigits = allDigits && isDigit(c);
    if (allDigits) {
      std::int64_t value = 0;
      for (char c : digits) {
        if (__builtin_mul_overflow(value, 10, &value) ||
            __builtin_add_overflow(value, c - '0', &value)) {
          fail(start, "integer " + v.text + " does not fit in 64 bits");
        }
      }
      v.kind = PyValue::Kind::Int;
      v.integer = negative ? -value : value;
      return v;
    }
    if (isFloatLiteral(body)) {
      v.kind = PyValue::Kind::Float;
      return v;
    }
    fail(start, "invalid number '" + v.text + "'");
  }

  // [digits][.digits][(e|E)[+|-]digits], at least one mantissa digit.
  static bool isFloatLiteral(std::string_view s) {
    std::size_t i = 0;
    std::size_t mantissaDigits = 0;
    while (i < s.size() && isDigit(s[i])) ++i, ++mantissaDigits;
    if (i < s.size() && s[i] == '.') {
      ++i;
      while (i < s.size() && isDigit(s[i])) ++i, ++mantissaDigits;
    }
    if (mantissaDigits == 0) return false;
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
      ++i;
      if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
      std::size_t expDigits = 0;
      while (i < s.size() && isDigit(s[i])) ++i, ++expDigits;
      if (expDigits == 0) return false;
    }
    return i == s.size();
  }

  PyValue parseName() {
    const std::size_t start = m_pos;
    while (m_pos < m_text.size() && isNameChar(m_text[m_pos])) ++m_pos;
    const std::string_view name = m_text.substr(start, m_pos - start);
    if (m_pos < m_text.size() && (m_text[m_pos] == '\'' || m_text[m_pos] == '"') &&
        name.size() == 1 && std::string_view("uUbBrR").find(name[0]) != std::string_view::npos) {
      return parseString(start);  // u'...', b'...', r'...'
    }
    PyValue v;
    v.offset = m_base + start;
    if (name == "True" || name == "False") {
      v.kind = PyValue::Kind::Bool;
      v.boolean = name == "True";
      return v;
    }
    if (name == "None") return v;
    fail(start, "unexpected name '" + std::string(name) + "'");
  }

  std::string_view m_text;
  std::size_t m_base;
  const std::string& m_path;
  std::size_t m_pos = 0;
};

/// The parsed and validated header of an npy file.
struct NpyHeader {
  int major = 1;                 ///< Format version (1, 2 or 3).
  int minor = 0;                 ///< Always 0.
  std::uint64_t dataOffset = 0;  ///< First byte of the array data.
  std::string descr;             ///< As written, e.g. "<f4".
  DType dtype = DType::F32;
  ByteOrder order = ByteOrder::Little;
  bool fortran = false;
  std::vector<Index> shape;
  FlatShape flat;
};

/// Which element types a header may declare: the real readers' (floats, `|u1` and `|b1`
/// masks) or integers (NpyIntegerReader).
enum class NpyElements { Real, Integer };

/// One element type of a descr string: its type code ("f4") and DType.
struct DescrType {
  const char* code;
  DType dtype;
};

/// Parses a descr "<byte order><type code>" against the accepted types: a one-byte type takes
/// any of '|', '<' and '>' (and reads as little-endian), a multi-byte type '<' or '>'.
template <std::size_t OneByte, std::size_t MultiByte>
bool parseDescrFrom(const std::string& d, const DescrType (&oneByte)[OneByte],
                    const DescrType (&multiByte)[MultiByte], DType& dtype, ByteOrder& order) {
  if (d.size() != 3) return false;
  const char bo = d[0];
  const std::string type = d.substr(1);
  for (const auto& t : oneByte) {
    if (type != t.code) continue;
    if (bo != '|' && bo != '<' && bo != '>') return false;
    dtype = t.dtype;
    order = ByteOrder::Little;
    return true;
  }
  if (bo != '<' && bo != '>') return false;
  order = bo == '<' ? ByteOrder::Little : ByteOrder::Big;
  for (const auto& t : multiByte) {
    if (type != t.code) continue;
    dtype = t.dtype;
    return true;
  }
  return false;
}

/// The integer descr strings NpyIntegerReader accepts.
inline bool parseIntegerDescr(const std::string& d, DType& dtype, ByteOrder& order) {
  static constexpr DescrType oneByte[] = {{"i1", DType::I8}, {"u1", DType::U8}};
  static constexpr DescrType multiByte[] = {{"i2", DType::I16}, {"i4", DType::I32},
                                            {"i8", DType::I64}, {"u2", DType::U16},
                                            {"u4", DType::U32}, {"u8", DType::U64}};
  return parseDescrFrom(d, oneByte, multiByte, dtype, order);
}

/// The descr strings the reader accepts.
inline bool parseDescr(const std::string& d, DType& dtype, ByteOrder& order,
                       NpyElements elements = NpyElements::Real) {
  if (elements == NpyElements::Integer) return parseIntegerDescr(d, dtype, order);
  static constexpr DescrType oneByte[] = {{"u1", DType::U8}, {"b1", DType::Bool}};
  static constexpr DescrType multiByte[] = {
      {"f4", DType::F32}, {"f8", DType::F64}, {"f2", DType::F16}};
  return parseDescrFrom(d, oneByte, multiByte, dtype, order);
}

/// Hex dump "93 4e 55" of up to n bytes.
inline std::string hexBytes(const unsigned char* p, std::size_t n) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    if (i > 0) s += ' ';
    s += hex[p[i] >> 4];
    s += hex[p[i] & 15];
  }
  return s;
}

/// @brief Parses and validates the preamble and header of the npy file mapped at `data`.
/// Throws FormatError naming `path`, the byte offset and expected vs found values.
/// @param elements The dtypes accepted: the real readers' (default) or integers.
inline NpyHeader parseNpyHeader(const unsigned char* data, std::uint64_t size,
                                const std::string& path, NpyElements elements = NpyElements::Real) {
  using sae::detail::concat;
  static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (size == 0) {
    throw FormatError(concat(path, ": empty file: expected an npy file of at least 10 bytes"));
  }
  const std::size_t head = static_cast<std::size_t>(std::min<std::uint64_t>(size, 6));
  if (std::memcmp(data, magic, head) != 0) {
    throw FormatError(concat(path, ": not an npy file: bad magic at offset 0: expected ",
                             hexBytes(magic, 6), " (\\x93NUMPY), found ", hexBytes(data, head)));
  }
  if (size < 10) {
    throw FormatError(
        concat(path, ": truncated npy preamble: expected at least 10 bytes, found ", size));
  }
  NpyHeader h;
  h.major = data[6];
  h.minor = data[7];
  if (h.major < 1 || h.major > 3 || h.minor != 0) {
    throw FormatError(concat(path, ": unsupported npy format version ", h.major, ".", h.minor,
                             " at offset 6 (supported: 1.0, 2.0, 3.0)"));
  }
  const std::uint64_t preamble = h.major == 1 ? 10 : 12;
  if (size < preamble) {
    throw FormatError(concat(path, ": truncated npy preamble: expected at least ", preamble,
                             " bytes for version ", h.major, ".0, found ", size));
  }
  std::uint64_t headerLen = 0;
  for (std::uint64_t i = preamble; i-- > 8;) headerLen = (headerLen << 8) | data[i];
  if (headerLen > size - preamble) {
    throw FormatError(concat(path, ": header length ", headerLen,
                             " at offset 8 runs past the end of the file: expected at least ",
                             preamble + headerLen, " bytes, found ", size));
  }
  h.dataOffset = preamble + headerLen;

  const std::string_view text(reinterpret_cast<const char*>(data + preamble),
                              static_cast<std::size_t>(headerLen));
  PyLiteralParser parser(text, static_cast<std::size_t>(preamble), path);
  const PyValue dict = parser.parseDocument();
  auto bad = [&](std::uint64_t at, const std::string& what) {
    return FormatError(concat(path, ": invalid npy header at byte ", at, ": ", what));
  };
  if (dict.kind != PyValue::Kind::Dict) {
    throw bad(dict.offset, concat("expected a dict, found ", describeKind(dict.kind)));
  }
  const PyValue* descr = nullptr;
  const PyValue* fortran = nullptr;
  const PyValue* shape = nullptr;
  for (std::size_t i = 0; i < dict.keys.size(); ++i) {
    const std::string& key = dict.keys[i];
    const PyValue** slot = key == "descr"           ? &descr
                           : key == "fortran_order" ? &fortran
                           : key == "shape"         ? &shape
                                                    : nullptr;
    if (slot == nullptr) {
      throw bad(dict.keyAt[i],
                concat("unknown key '", key, "' (expected 'descr', 'fortran_order' and 'shape')"));
    }
    if (*slot != nullptr) throw bad(dict.keyAt[i], concat("duplicate key '", key, "'"));
    *slot = &dict.items[i];
  }
  const char* missing = descr == nullptr     ? "descr"
                        : fortran == nullptr ? "fortran_order"
                        : shape == nullptr   ? "shape"
                                             : nullptr;
  if (missing != nullptr) throw bad(dict.offset, concat("missing key '", missing, "'"));

  if (descr->kind != PyValue::Kind::Str) {
    throw bad(
        descr->offset,
        concat("'descr' must be a string, found ", describeKind(descr->kind),
               descr->kind == PyValue::Kind::List ? " (structured dtypes are not supported)" : ""));
  }
  h.descr = descr->text;
  if (!parseDescr(h.descr, h.dtype, h.order, elements)) {
    if (elements == NpyElements::Integer) {
      throw bad(descr->offset,
                concat("unsupported dtype '", h.descr,
                       "' for integer data (supported: '|i1', '<i2', '<i4', '<i8', '|u1', '<u2', "
                       "'<u4', '<u8', and '>' for big-endian)"));
    }
    throw bad(descr->offset, concat("unsupported dtype '", h.descr,
                                    "' (supported: '<f4', '>f4', '<f8', '>f8', '<f2', '>f2', "
                                    "'|u1', '<u1', '|b1')"));
  }
  if (fortran->kind != PyValue::Kind::Bool) {
    throw bad(fortran->offset,
              concat("'fortran_order' must be True or False, found ", describeKind(fortran->kind)));
  }
  h.fortran = fortran->boolean;
  if (shape->kind != PyValue::Kind::Tuple) {
    throw bad(shape->offset, concat("'shape' must be a tuple, found ", describeKind(shape->kind)));
  }
  constexpr std::size_t kMaxDims = 64;
  if (shape->items.size() > kMaxDims) {
    throw bad(shape->offset, concat("'shape' has ", shape->items.size(),
                                    " dimensions, more than the supported ", kMaxDims));
  }
  for (std::size_t i = 0; i < shape->items.size(); ++i) {
    const PyValue& d = shape->items[i];
    if (d.kind != PyValue::Kind::Int || d.integer < 0) {
      const std::string value = d.kind == PyValue::Kind::Int || d.kind == PyValue::Kind::Float
                                    ? d.text
                                    : std::string(describeKind(d.kind));
      throw bad(d.offset, concat("'shape' entry ", i, " is ", value,
                                 "; shape entries must be non-negative integers"));
    }
    h.shape.push_back(static_cast<Index>(d.integer));
  }
  h.flat = flattenShape(h.shape, h.dtype, path, true);

  const std::uint64_t expected = static_cast<std::uint64_t>(h.flat.bytes);
  const std::uint64_t available = size - h.dataOffset;
  if (available != expected) {
    throw FormatError(concat(path, ": ", available < expected ? "truncated" : "trailing",
                             " data: expected ", expected, " bytes after the header at offset ",
                             h.dataOffset, ", found ", available, " (shape ",
                             shapeString(h.shape, true), ", dtype '", h.descr, "')"));
  }
  return h;
}

/// The preamble and header numpy's `write_array` (numpy 1.24) produces for a C-order array,
/// byte for byte: the dict, spare spaces so the first dimension can grow to 21 digits in
/// place, then spaces and a newline up to the next multiple of 64 bytes (a full 64 when
/// already aligned); version 1.0 unless the header needs more than a u16 length.
inline std::string npyPreamble(const std::string& descr, const std::vector<Index>& shape) {
  std::string dict = "{'descr': '" + descr +
                     "', 'fortran_order': False, 'shape': " + shapeString(shape, true) + ", }";
  if (!shape.empty()) {
    const std::size_t digits = std::to_string(shape[0]).size();
    dict.append(digits < 21 ? 21 - digits : 0, ' ');
  }
  auto headerLength = [&](std::size_t preamble) {
    const std::size_t hlen = dict.size() + 1;
    return hlen + (64 - (preamble + hlen) % 64);
  };
  const bool v1 = headerLength(10) <= 65535;
  const std::size_t preamble = v1 ? 10 : 12;
  const std::size_t headerLen = headerLength(preamble);
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(v1 ? 1 : 2);
  out += '\0';
  for (std::size_t i = 0; i < preamble - 8; ++i) {
    out += static_cast<char>((headerLen >> (8 * i)) & 0xff);
  }
  out += dict;
  out.append(preamble + headerLen - out.size() - 1, ' ');
  out += '\n';
  return out;
}

template <typename Scalar>
constexpr const char* npyDescrOf() {
  static_assert(kFloatOrDouble<Scalar>, "writeNpy writes float (<f4) or double (<f8) matrices");
  return std::is_same_v<Scalar, float> ? "<f4" : "<f8";
}

}  // namespace detail

/// @brief Memory-mapped reader of one `.npy` file, presenting it as a `[rows, cols]` matrix.
///
/// The constructor maps the file and validates the header completely; rows are then converted
/// on demand with readRows(), straight from the mapping. 1-D arrays are one row `[1, n]`;
/// N-D arrays flatten their leading dimensions into rows (`[batch, seq, d]` ->
/// `[batch*seq, d]`). C and Fortran order, both byte orders.
class NpyReader : public detail::MappedArray {
 public:
  /// @brief Opens and validates `path`.
  /// @param path The .npy file. Throws IoError when it cannot be opened or mapped, FormatError
  ///        when it is not a valid npy file of a supported dtype (the message names the file,
  ///        the byte offset and expected vs found).
  explicit NpyReader(const std::string& path) : MappedArray(path) {
    m_header = detail::parseNpyHeader(m_file.data(), m_file.size(), path);
    m_view.where = path;
    m_view.data = m_header.flat.elements > 0 ? m_file.data() + m_header.dataOffset : nullptr;
    detail::copyArrayLayout(m_view, m_header, m_header.flat.rows, m_header.flat.cols);
  }

  /// @brief The dtype string as written in the header, e.g. "<f4".
  const std::string& descr() const noexcept { return m_header.descr; }
  /// @brief The array's shape as stored.
  const std::vector<Index>& shape() const noexcept { return m_header.shape; }
  /// @brief True when the array is stored in Fortran (column-major) order.
  bool fortranOrder() const noexcept { return m_header.fortran; }
  /// @brief Format version major number: 1, 2 or 3.
  int version() const noexcept { return m_header.major; }
  /// @brief Offset of the first data byte in the file.
  std::uint64_t dataOffset() const noexcept { return m_header.dataOffset; }

 private:
  detail::NpyHeader m_header;
};

/// @brief Reads a whole `.npy` file as a `[rows, cols]` matrix (1-D arrays as `[1, n]`).
/// @tparam Scalar float or double. @param path The file.
template <typename Scalar>
RowMatrix<Scalar> readNpy(const std::string& path) {
  return NpyReader(path).readAll<Scalar>();
}

/// @brief Reads a 1-D `|u1` / `|b1` mask (such as a dead-latent mask); bool values become 0 / 1.
/// @param path The file. Throws FormatError for another dtype or a non-1-D shape.
inline LatentMask readNpyMask(const std::string& path) {
  const MappedFile file(path);
  const detail::NpyHeader h = detail::parseNpyHeader(file.data(), file.size(), path);
  if (h.dtype != DType::U8 && h.dtype != DType::Bool) {
    throw FormatError(sae::detail::concat(
        path, ": expected a mask of dtype '|u1' or '|b1', found '", h.descr, "'"));
  }
  if (h.shape.size() != 1) {
    throw FormatError(sae::detail::concat(path, ": expected a 1-D mask, found shape ",
                                          detail::shapeString(h.shape, true)));
  }
  LatentMask mask(h.shape[0]);
  if (mask.size() > 0) std::memcpy(mask.data(), file.data() + h.dataOffset, mask.size());
  if (h.dtype == DType::Bool) mask = (mask.array() != 0).cast<std::uint8_t>();
  return mask;
}

/// @brief Memory-mapped reader of an integer `.npy` array (token ids, labels), read exactly as
/// int64.
///
/// Accepts the dtypes `|i1 <i2 <i4 <i8 |u1 <u2 <u4 <u8` in either byte order, any shape, C or
/// Fortran order. Elements are numbered in C order over the whole array: a `[batch, seq]` array
/// of token ids lines up with `[batch, seq, d]` activations, whose rows flatten the same way.
/// Nothing is copied up front; elements are decoded from the mapping on demand.
class NpyIntegerReader {
 public:
  /// @brief Opens and validates `path`. IoError when it cannot be opened or mapped; FormatError
  ///        when it is not a valid npy file of an integer dtype.
  explicit NpyIntegerReader(const std::string& path) : m_file(path) {
    m_header =
        detail::parseNpyHeader(m_file.data(), m_file.size(), path, detail::NpyElements::Integer);
    m_data = m_file.data() + m_header.dataOffset;
    m_size = m_header.flat.elements;
    m_itemsize = static_cast<Index>(dtypeSize(m_header.dtype));
    if (m_header.fortran && m_header.shape.size() >= 2 && m_size > 0) {
      // Element strides of Fortran order: products of the preceding dimensions (no overflow:
      // their product is m_size).
      Index stride = 1;
      for (const Index dim : m_header.shape) {
        m_fortranStrides.push_back(stride);
        stride *= dim;
      }
    }
  }

  /// @brief Path the reader was opened with.
  const std::string& path() const noexcept { return m_file.path(); }
  /// @brief Number of elements (the product of the shape).
  Index size() const noexcept { return m_size; }
  /// @brief Element type.
  DType dtype() const noexcept { return m_header.dtype; }
  /// @brief The dtype string as written in the header, e.g. "<i4".
  const std::string& descr() const noexcept { return m_header.descr; }
  /// @brief The array's shape as stored.
  const std::vector<Index>& shape() const noexcept { return m_header.shape; }
  /// @brief True when the array is stored in Fortran (column-major) order.
  bool fortranOrder() const noexcept { return m_header.fortran; }

  /// @brief Element `i` of the C-order flattening. ConfigError when `i` is out of range;
  ///        FormatError when a uint64 element does not fit in int64.
  std::int64_t operator[](Index i) const {
    if (i < 0 || i >= m_size) {
      throw ConfigError(
          sae::detail::concat(path(), ": element ", i, " is out of range [0, ", m_size, ")"));
    }
    bool fits = true;
    const std::int64_t v = detail::decodeInteger(m_data + storageIndex(i) * m_itemsize,
                                                 m_header.dtype, m_header.order, fits);
    if (!fits) {
      throw FormatError(sae::detail::concat(path(), ": element ", i, " (",
                                            static_cast<std::uint64_t>(v),
                                            ") does not fit in a signed 64-bit integer"));
    }
    return v;
  }

  /// @brief Every element, in C order.
  std::vector<std::int64_t> readAll() const {
    std::vector<std::int64_t> out(static_cast<std::size_t>(m_size));
    for (Index i = 0; i < m_size; ++i) out[static_cast<std::size_t>(i)] = (*this)[i];
    return out;
  }

 private:
  // Position in storage order of the element with C-order index `i`.
  Index storageIndex(Index i) const {
    const auto& shape = m_header.shape;
    if (m_fortranStrides.empty()) return i;
    Index off = 0;
    for (std::size_t d = shape.size(); d-- > 0;) {
      off += (i % shape[d]) * m_fortranStrides[d];
      i /= shape[d];
    }
    return off;
  }

  MappedFile m_file;
  detail::NpyHeader m_header;
  const unsigned char* m_data = nullptr;
  Index m_size = 0;
  Index m_itemsize = 1;
  std::vector<Index> m_fortranStrides;  ///< Empty unless Fortran order with 2+ dimensions.
};

/// @brief Reads every element of an integer `.npy` array (any shape, C-order flattening), exactly.
/// @param path The file; see NpyIntegerReader for the dtypes and errors.
inline std::vector<std::int64_t> readNpyIntegers(const std::string& path) {
  return NpyIntegerReader(path).readAll();
}

/// @brief Writes a matrix as a `.npy` file (version 1.0, C order, shape `(rows, cols)`,
/// `<f4` for float and `<f8` for double), atomically (see AtomicFileWriter).
/// @param path Destination; IoError naming it on failure.
/// @param m Any Eigen matrix or expression of float or double.
template <typename Derived>
void writeNpy(const std::string& path, const Eigen::MatrixBase<Derived>& m) {
  using Scalar = typename Derived::Scalar;
  constexpr const char* descr = detail::npyDescrOf<Scalar>();
  const Eigen::Ref<const RowMatrix<Scalar>> mat(m.derived());
  const std::string pre = detail::npyPreamble(descr, {mat.rows(), mat.cols()});
  const DType as = kDTypeOf<Scalar>;
  AtomicFileWriter w(path);
  w.write(pre.data(), pre.size());
  if (mat.outerStride() == mat.cols()) {
    w.writeElements(mat.data(), mat.size(), as);
  } else {
    for (Index r = 0; r < mat.rows(); ++r) w.writeElements(mat.row(r).data(), mat.cols(), as);
  }
  w.commit();
}

/// @brief Writes a vector (a matrix with one row or one column) as a 1-D `.npy` file of shape
/// `(n,)`, atomically. @param path Destination. @param v Vector of float or double; ConfigError
/// when it has more than one row and more than one column.
template <typename Derived>
void writeNpyVector(const std::string& path, const Eigen::MatrixBase<Derived>& v) {
  using Scalar = typename Derived::Scalar;
  constexpr const char* descr = detail::npyDescrOf<Scalar>();
  require(v.rows() == 1 || v.cols() == 1, path, ": writeNpyVector needs a vector, found a ",
          v.rows(), "x", v.cols(), " matrix");
  const Vector<Scalar> data =
      v.cols() == 1 ? Vector<Scalar>(v.col(0)) : Vector<Scalar>(v.row(0).transpose());
  const std::string pre = detail::npyPreamble(descr, {data.size()});
  AtomicFileWriter w(path);
  w.write(pre.data(), pre.size());
  w.writeElements(data.data(), data.size(), kDTypeOf<Scalar>);
  w.commit();
}

namespace detail {

/// A `.npy` file written atomically whose header goes first and is rewritten in place by
/// commit() once the length is known (npyPreamble pads the first dimension, so the header's
/// size does not change).
class StreamedNpyFile {
 public:
  StreamedNpyFile(const std::string& path, const std::string& header)
      : m_out(path), m_header_size(header.size()) {
    m_out.write(header.data(), header.size());
  }
  AtomicFileWriter& out() noexcept { return m_out; }
  const std::string& path() const noexcept { return m_out.path(); }
  void commit(const std::string& header) {
    require(header.size() == m_header_size, m_out.path(), ": the npy header grew from ",
            m_header_size, " to ", header.size(), " bytes");
    m_out.overwrite(0, header.data(), header.size());
    m_out.commit();
  }

 private:
  AtomicFileWriter m_out;
  std::size_t m_header_size;
};

}  // namespace detail

/// @brief Writes a 2-D `.npy` file of `cols` columns whose rows arrive in chunks, so that the
/// whole array never has to be in memory; atomically (see AtomicFileWriter).
///
/// The header is written first with room for the row count to grow in place (as numpy's own
/// writer leaves it) and fixed up by commit() with the rows actually appended: the file is byte
/// for byte what writeNpy() writes for the same matrix. Nothing appears at `path` before
/// commit(); a writer destroyed without commit() leaves `path` as it was.
///
/// @code
/// sae::io::NpyStreamWriter out("codes.npy", d_sae, sae::io::DType::F32);
/// for (...) out.append(chunk);   // [n, d_sae] rows
/// out.commit();
/// @endcode
class NpyStreamWriter {
 public:
  /// @param path Destination (IoError naming it when it cannot be created).
  /// @param cols Columns of every row (>= 0). @param as Element type stored: F32, F64 or F16
  /// (`<f2`, rounded to nearest even).
  NpyStreamWriter(const std::string& path, Index cols, DType as = DType::F32)
      : m_cols(cols), m_as(as), m_file(path, header()) {
    require(cols >= 0, path, ": NpyStreamWriter needs cols >= 0, found ", cols);
    require(as == DType::F32 || as == DType::F64 || as == DType::F16, path,
            ": NpyStreamWriter stores F32, F64 or F16, not ", dtypeName(as));
  }

  /// @brief Appends the rows of `rows` (float or double, `cols` columns; ConfigError otherwise).
  template <typename Derived>
  void append(const Eigen::MatrixBase<Derived>& rows) {
    using Scalar = typename Derived::Scalar;
    static_assert(kFloatOrDouble<Scalar>, "NpyStreamWriter appends float or double rows");
    require(rows.cols() == m_cols, m_file.path(), ": rows of ", rows.cols(),
            " columns appended to an array of ", m_cols, " columns");
    const Eigen::Ref<const RowMatrix<Scalar>> m(rows.derived());
    if (m.outerStride() == m_cols) {  // contiguous rows: one write
      m_file.out().writeElements(m.data(), m.size(), m_as);
    } else {
      for (Index r = 0; r < m.rows(); ++r)
        m_file.out().writeElements(m.row(r).data(), m_cols, m_as);
    }
    m_rows += m.rows();
  }

  /// @brief Rows appended so far.
  Index rows() const noexcept { return m_rows; }

  /// @brief Writes the final row count into the header and moves the file into place.
  void commit() { m_file.commit(header()); }

 private:
  std::string header() const {
    const char* descr = m_as == DType::F32 ? "<f4" : m_as == DType::F64 ? "<f8" : "<f2";
    return detail::npyPreamble(descr, {m_rows, m_cols});
  }

  Index m_cols;
  DType m_as;
  Index m_rows = 0;
  detail::StreamedNpyFile m_file;
};

/// @brief Writes a 1-D `<i4` `.npy` file whose values arrive in chunks (token ids, positions),
/// atomically: the header is fixed up by commit(), as NpyStreamWriter does, and nothing appears
/// at `path` before it.
class NpyInt32StreamWriter {
 public:
  /// @param path Destination (IoError naming it when it cannot be created).
  explicit NpyInt32StreamWriter(const std::string& path) : m_file(path, header()) {}

  /// @brief Appends `n` values.
  void append(const std::int32_t* data, Index n) {
    require(n >= 0, m_file.path(), ": NpyInt32StreamWriter::append needs n >= 0, found ", n);
    AtomicFileWriter& out = m_file.out();
    if (kNativeByteOrder == ByteOrder::Little) {
      if (n > 0) out.write(data, static_cast<std::size_t>(n) * sizeof(std::int32_t));
    } else {
      for (Index i = 0; i < n; ++i) {
        const std::uint32_t le = detail::byteSwap(detail::bitCast<std::uint32_t>(data[i]));
        out.write(&le, sizeof(le));
      }
    }
    m_count += n;
  }

  /// @brief Values appended so far.
  Index size() const noexcept { return m_count; }

  /// @brief Writes the final length into the header and moves the file into place.
  void commit() { m_file.commit(header()); }

 private:
  std::string header() const { return detail::npyPreamble("<i4", {m_count}); }

  Index m_count = 0;
  detail::StreamedNpyFile m_file;
};

/// @brief Writes a mask as a 1-D `|u1` `.npy` file, atomically (the format of dead_mask.npy).
inline void writeNpyMask(const std::string& path, const Eigen::Ref<const LatentMask>& mask) {
  const std::string pre = detail::npyPreamble("|u1", {mask.size()});
  AtomicFileWriter w(path);
  w.write(pre.data(), pre.size());
  w.write(mask.data(), static_cast<std::size_t>(mask.size()));
  w.commit();
}

/// @brief Writes `n` int32 values as a 1-D `<i4` `.npy` file of shape `(n,)`, atomically (token
/// ids, positions, source indices). @param path Destination; IoError naming it on failure.
inline void writeNpyInt32(const std::string& path, const std::int32_t* data, Index n) {
  require(n >= 0, path, ": writeNpyInt32 needs n >= 0, found ", n);
  NpyInt32StreamWriter w(path);
  w.append(data, n);
  w.commit();
}
inline void writeNpyInt32(const std::string& path, const std::vector<std::int32_t>& v) {
  writeNpyInt32(path, v.data(), static_cast<Index>(v.size()));
}

}  // namespace sae::io

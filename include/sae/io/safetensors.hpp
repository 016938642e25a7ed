/// @file safetensors.hpp
/// @brief `.safetensors` files: SafetensorsFile (memory-mapped reader) and SafetensorsWriter
/// (float tensors stored as F32, F64, F16 or BF16; int32 / int64 tensors as I32 / I64).
///
/// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian u64 header
/// length N, N bytes of UTF-8 JSON, then the data section. The JSON maps each tensor name to
/// `{"dtype": "F32", "shape": [r, c], "data_offsets": [begin, end]}` (offsets relative to the
/// data section, row-major little-endian data) and may hold `"__metadata__"`, a string-to-string
/// map.
///
/// The reader validates the whole header when the file is opened: the JSON (no duplicate keys),
/// every entry's fields, shape arithmetic (checked against 64-bit overflow), that each byte
/// range lies inside the data section, matches shape x item size and overlaps no other tensor.
/// Tensors of every dtype of the format are listed; F32, F64, F16 and BF16 can be read (into
/// float or double), the integer dtypes with readIntegers() (as int64). A dtype name the reader
/// does not know is listed too, with its byte range checked but its size unchecked, and reading it
/// is a FormatError.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <sae/core/error.hpp>
#include <sae/core/types.hpp>
#include <sae/io/array_view.hpp>
#include <sae/io/atomic_write.hpp>
#include <sae/io/dtype.hpp>
#include <sae/io/mapped_file.hpp>

namespace sae::io {

/// @brief Description of one tensor of a safetensors file.
struct TensorInfo {
  std::string name;              ///< Tensor name.
  std::string dtype;             ///< dtype as written: "F32", "BF16", "I64"...
  std::vector<Index> shape;      ///< Shape as stored.
  std::uint64_t begin = 0;       ///< data_offsets[0], relative to the data section.
  std::uint64_t end = 0;         ///< data_offsets[1], relative to the data section.
  std::uint64_t fileOffset = 0;  ///< Offset of the first byte in the file.
  Index rows = 1;                ///< Rows of the flattened view (1 for 0-D and 1-D tensors).
  Index cols = 1;                ///< Columns of the flattened view (the last dimension).
  bool readable = false;         ///< True for F32, F64, F16 and BF16.
};

namespace detail {

/// A dtype of the safetensors format: its name, bits per element, and our DType if readable.
struct SafetensorsDType {
  const char* name;
  int bits;
  bool readable;
  DType dtype;
};

/// Looks up a safetensors dtype name; nullptr when unknown.
inline const SafetensorsDType* findSafetensorsDType(const std::string& name) {
  static const SafetensorsDType table[] = {
      {"F64", 64, true, DType::F64},    {"F32", 32, true, DType::F32},
      {"F16", 16, true, DType::F16},    {"BF16", 16, true, DType::BF16},
      {"BOOL", 8, false, DType::Bool},  {"U8", 8, false, DType::U8},
      {"I8", 8, false, DType::U8},      {"F8_E5M2", 8, false, DType::U8},
      {"F8_E4M3", 8, false, DType::U8}, {"F8_E8M0", 8, false, DType::U8},
      {"I16", 16, false, DType::U8},    {"U16", 16, false, DType::U8},
      {"I32", 32, false, DType::U8},    {"U32", 32, false, DType::U8},
      {"I64", 64, false, DType::U8},    {"U64", 64, false, DType::U8},
      {"C64", 64, false, DType::U8},    {"F4", 4, false, DType::U8},
      {"F6_E2M3", 6, false, DType::U8}, {"F6_E3M2", 6, false, DType::U8},
  };
  for (const auto& t : table) {
    if (name == t.name) return &t;
  }
  return nullptr;
}

/// The safetensors name of a writable DType.
inline const char* safetensorsName(DType t) {
  static constexpr std::pair<DType, const char*> names[] = {
      {DType::F32, "F32"}, {DType::F64, "F64"}, {DType::BF16, "BF16"},
      {DType::F16, "F16"}, {DType::I32, "I32"}, {DType::I64, "I64"}};
  return sae::detail::findName(names, t);
}

/// A JSON value printed for a message, cut to a readable length.
inline std::string jsonSnippet(const nlohmann::json& j) {
  std::string s = j.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

/// "a, b, c" (the first 20 names, then "and N more").
inline std::string nameList(const std::vector<std::string>& names) {
  std::string s;
  const std::size_t shown = std::min<std::size_t>(names.size(), 20);
  for (std::size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > shown) s += sae::detail::concat(" and ", names.size() - shown, " more");
  if (names.empty()) s = "none";
  return s;
}

}  // namespace detail

/// @brief Memory-mapped reader of one `.safetensors` file.
///
/// The constructor validates the whole header (see the file comment). Tensors are then read
/// by name, converted from the mapping into float or double: 1-D tensors as one row `[1, n]`,
/// 2-D as they are, N-D with the leading dimensions flattened into rows.
class SafetensorsFile {
 public:
  /// Largest JSON header accepted (the limit of the reference implementation).
  static constexpr std::uint64_t kMaxHeaderBytes = 100000000;

  /// @brief Opens and validates `path`.
  /// @param path The .safetensors file. Throws IoError when it cannot be opened or mapped,
  ///        FormatError when its header is malformed (the message names the file, the tensor,
  ///        and expected vs found).
  explicit SafetensorsFile(const std::string& path) : m_file(path) { parse(); }

  /// @brief Path the file was opened with.
  const std::string& path() const noexcept { return m_file.path(); }

  /// @brief Names of the tensors, in the order of their data in the file.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(m_entries.size());
    for (const auto& e : m_entries) out.push_back(e.info.name);
    return out;
  }

  /// @brief True when a tensor of that name exists.
  bool contains(const std::string& name) const { return m_index.count(name) != 0; }

  /// @brief Description of tensor `name`.
  /// Throws FormatError listing the tensors present when there is none of that name.
  const TensorInfo& info(const std::string& name) const { return entry(name).info; }

  /// @brief The `__metadata__` map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return m_metadata; }

  /// @brief Offset of the data section in the file (8 + header length).
  std::uint64_t dataOffset() const noexcept { return m_dataOffset; }

  /// @brief Reads a whole tensor: 1-D as `[1, n]`, 2-D as is, N-D flattened to rows.
  /// @tparam Scalar float or double. @param name Tensor name.
  /// Throws FormatError for a missing name or a dtype other than F32, F64, F16, BF16.
  template <typename Scalar>
  RowMatrix<Scalar> read(const std::string& name) const {
    const Entry& e = readableEntry(name);
    RowMatrix<Scalar> m(e.view.rows, e.view.cols);
    e.view.readRows<Scalar>(0, e.view.rows, m);
    return m;
  }

  /// @brief Reads a whole integer tensor (I8, I16, I32, I64, U8, U16, U32 or U64) exactly, as
  /// int64 in row-major order. Throws FormatError naming the file and tensor for a missing name,
  /// another dtype, or a U64 element beyond the int64 range.
  std::vector<std::int64_t> readIntegers(const std::string& name) const {
    const Entry& e = entry(name);
    const auto* type = detail::findSafetensorsDType(e.info.dtype);
    const std::string& d = e.info.dtype;
    const bool isSigned = d == "I8" || d == "I16" || d == "I32" || d == "I64";
    if (type == nullptr || (!isSigned && d != "U8" && d != "U16" && d != "U32" && d != "U64")) {
      fail(sae::detail::concat("tensor '", name, "' has dtype ", d,
                               ", not an integer dtype (I8, I16, I32, I64, U8, U16, U32, U64)"));
    }
    const std::size_t width = static_cast<std::size_t>(type->bits / 8);
    const std::uint64_t count = (e.info.end - e.info.begin) / width;
    std::vector<std::int64_t> out(static_cast<std::size_t>(count));
    const unsigned char* p = e.view.data;
    for (std::size_t i = 0; i < out.size(); ++i, p += width) {
      std::uint64_t u = 0;
      for (std::size_t b = width; b-- > 0;) u = (u << 8) | p[b];
      if (isSigned && width < 8 && (u >> (8 * width - 1)) != 0)
        u |= ~std::uint64_t(0) << (8 * width);
      if (!isSigned && width == 8 && u > std::uint64_t(std::numeric_limits<std::int64_t>::max())) {
        fail(sae::detail::concat("tensor '", name, "' element ", i, " = ", u,
                                 " does not fit in int64"));
      }
      out[i] = static_cast<std::int64_t>(u);
    }
    return out;
  }

  /// @brief Converts rows [begin, end) of the flattened view of tensor `name` into `out`.
  /// @param out Exactly `end - begin` by `info(name).cols`; ConfigError for a bad range or size.
  template <typename Scalar>
  void readRows(const std::string& name, Index begin, Index end,
                Eigen::Ref<RowMatrix<Scalar>> out) const {
    readableEntry(name).view.readRows<Scalar>(begin, end, out);
  }

 private:
  struct Entry {
    TensorInfo info;
    detail::ArrayView view;
  };

  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(sae::detail::concat(path(), ": ", what));
  }

  const Entry& entry(const std::string& name) const {
    const auto it = m_index.find(name);
    if (it == m_index.end()) {
      fail(sae::detail::concat("no tensor named '", name,
                               "' (tensors present: ", detail::nameList(names()), ")"));
    }
    return m_entries[it->second];
  }

  const Entry& readableEntry(const std::string& name) const {
    const Entry& e = entry(name);
    if (!e.info.readable) {
      fail(sae::detail::concat("tensor '", name, "' has dtype ", e.info.dtype,
                               ", which cannot be read (readable dtypes: F32, F64, F16, BF16)"));
    }
    return e;
  }

  void parse() {
    using nlohmann::json;
    using sae::detail::concat;
    const std::uint64_t size = m_file.size();
    if (size < 8) {
      fail(concat(size == 0 ? "empty file" : "truncated file",
                  ": expected at least 8 bytes (the header length), found ", size));
    }
    const unsigned char* data = m_file.data();
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
    if (n > size - 8) {
      fail(concat("header length ", n, " at offset 0 runs past the end of the file: ", size - 8,
                  " bytes follow the length"));
    }
    if (n > kMaxHeaderBytes) {
      fail(concat("header length ", n, " at offset 0 exceeds the limit of ", kMaxHeaderBytes,
                  " bytes"));
    }
    m_dataOffset = 8 + n;
    const std::uint64_t dataSize = size - m_dataOffset;

    // Parse the JSON, rejecting duplicate keys (nlohmann would keep the last silently) and
    // deep nesting (a safetensors header is three levels deep).
    std::vector<std::set<std::string>> openObjects;
    auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
      if (event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) {
        if (depth >= 16) fail("malformed JSON header: nested deeper than 16 levels");
        if (event == json::parse_event_t::object_start) openObjects.emplace_back();
      } else if (event == json::parse_event_t::object_end) {
        openObjects.pop_back();
      } else if (event == json::parse_event_t::key) {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!openObjects.back().insert(key).second) {
          fail(concat("malformed JSON header: duplicate key '", key, "'"));
        }
      }
      return true;
    };
    json header;
    try {
      const char* first = reinterpret_cast<const char*>(data + 8);
      header = json::parse(first, first + n, callback);
    } catch (const json::parse_error& e) {
      const std::uint64_t at = 8 + std::max<std::uint64_t>(e.byte, 1) - 1;
      fail(concat("malformed JSON header at byte ", at, ": ", e.what()));
    } catch (const json::exception& e) {
      fail(concat("malformed JSON header: ", e.what()));
    }
    if (!header.is_object()) {
      fail(concat("the JSON header must be an object, found ", header.type_name()));
    }

    std::vector<Entry> entries;
    for (const auto& [name, value] : header.items()) {
      if (name == "__metadata__") {
        parseMetadata(value);
        continue;
      }
      entries.push_back(parseEntry(name, value, dataSize));
    }

    // Storage order; then no two non-empty byte ranges may overlap.
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      return std::tie(a.info.begin, a.info.end, a.info.name) <
             std::tie(b.info.begin, b.info.end, b.info.name);
    });
    const TensorInfo* previous = nullptr;
    for (const auto& e : entries) {
      if (e.info.begin == e.info.end) continue;
      if (previous != nullptr && e.info.begin < previous->end) {
        fail(concat("tensors '", previous->name, "' (data_offsets [", previous->begin, ", ",
                    previous->end, "]) and '", e.info.name, "' (data_offsets [", e.info.begin, ", ",
                    e.info.end, "]) overlap"));
      }
      previous = &e.info;
    }
    m_entries = std::move(entries);
    for (std::size_t i = 0; i < m_entries.size(); ++i) {
      m_entries[i].view.data = m_file.data() + m_entries[i].info.fileOffset;
      m_index.emplace(m_entries[i].info.name, i);
    }
  }

  void parseMetadata(const nlohmann::json& value) {
    if (!value.is_object()) {
      fail(sae::detail::concat("'__metadata__' must be an object of strings, found ",
                               detail::jsonSnippet(value)));
    }
    for (const auto& [key, v] : value.items()) {
      if (!v.is_string()) {
        fail(sae::detail::concat("'__metadata__' value of '", key, "' must be a string, found ",
                                 detail::jsonSnippet(v)));
      }
      m_metadata.emplace(key, v.get<std::string>());
    }
  }

  Entry parseEntry(const std::string& name, const nlohmann::json& value, std::uint64_t dataSize) {
    using sae::detail::concat;
    const std::string where = concat("tensor '", name, "'");
    if (!value.is_object()) {
      fail(concat(where, " must be an object with dtype, shape and data_offsets, found ",
                  detail::jsonSnippet(value)));
    }
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      if (!value.contains(key)) fail(concat(where, " has no '", key, "'"));
    }
    Entry e;
    TensorInfo& t = e.info;
    t.name = name;
    const auto& dtype = value.at("dtype");
    if (!dtype.is_string()) {
      fail(concat(where, ": 'dtype' must be a string, found ", detail::jsonSnippet(dtype)));
    }
    t.dtype = dtype.get<std::string>();

    const auto& shape = value.at("shape");
    auto isIndex = [](const nlohmann::json& j) {
      return j.is_number_unsigned() &&
             j.get<std::uint64_t>() <=
                 static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    };
    bool shapeOk = shape.is_array() && shape.size() <= 64;
    for (std::size_t i = 0; shapeOk && i < shape.size(); ++i) shapeOk = isIndex(shape[i]);
    if (!shapeOk) {
      fail(concat(where, ": 'shape' must be an array of at most 64 non-negative integers, found ",
                  detail::jsonSnippet(shape)));
    }
    for (const auto& d : shape) t.shape.push_back(static_cast<Index>(d.get<std::uint64_t>()));

    const auto& offsets = value.at("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      fail(concat(where, ": 'data_offsets' must be two non-negative integers [begin, end], found ",
                  detail::jsonSnippet(offsets)));
    }
    t.begin = offsets[0].get<std::uint64_t>();
    t.end = offsets[1].get<std::uint64_t>();
    if (t.end < t.begin) {
      fail(concat(where, ": data_offsets [", t.begin, ", ", t.end, "] end before they begin"));
    }
    if (t.end > dataSize) {
      fail(concat(where, ": data_offsets [", t.begin, ", ", t.end,
                  "] run past the end of the data section: it has ", dataSize,
                  " bytes, from offset ", m_dataOffset));
    }
    t.fileOffset = m_dataOffset + t.begin;

    // Sizes, checked: the shape comes from the file.
    const std::string context = concat(path(), ": ", where);
    const detail::FlatShape flat = detail::flattenShape(t.shape, DType::U8, context, false);
    t.rows = flat.rows;
    t.cols = flat.cols;
    const detail::SafetensorsDType* type = detail::findSafetensorsDType(t.dtype);
    if (type != nullptr) {
      std::int64_t bits = 0;
      if (!detail::checkedMul(flat.elements, type->bits, bits)) {
        fail(concat(where, ": shape ", detail::shapeString(t.shape, false), " of ", t.dtype,
                    " needs more bytes than fit in 64 bits"));
      }
      const std::uint64_t span = t.end - t.begin;
      if (bits % 8 != 0 || static_cast<std::uint64_t>(bits / 8) != span) {
        fail(concat(where, ": data_offsets [", t.begin, ", ", t.end, "] span ", span,
                    " bytes, but shape ", detail::shapeString(t.shape, false), " of ", t.dtype,
                    " needs ", bits / 8, bits % 8 != 0 ? " and a fraction" : "", " bytes"));
      }
      t.readable = type->readable;
      e.view.dtype = type->dtype;
    }
    e.view.where = context;
    e.view.order = ByteOrder::Little;
    e.view.shape = t.shape;
    e.view.rows = t.rows;
    e.view.cols = t.cols;
    return e;
  }

  MappedFile m_file;
  std::uint64_t m_dataOffset = 0;
  std::vector<Entry> m_entries;
  std::map<std::string, std::size_t> m_index;
  std::map<std::string, std::string> m_metadata;
};

/// @brief Collects tensors and metadata, then writes a `.safetensors` file atomically.
///
/// Tensors are written in the order they were added, contiguously, each as row-major
/// little-endian F32, F64, F16 or BF16 (rounded to nearest even from float or double); the JSON
/// header is padded with spaces to a multiple of 8 bytes.
///
/// @code
/// sae::io::SafetensorsWriter w;
/// w.add("W_enc", {d_in, d_sae}, wEnc.data());   // row-major float data -> F32
/// w.add("b_dec", bDec);                         // an Eigen vector, copied -> shape [d_in]
/// w.setMetadata("format", "pt");
/// w.write("sae_weights.safetensors");
/// @endcode
class SafetensorsWriter {
 public:
  /// @brief Adds a tensor of row-major float data that stays owned by the caller until write().
  /// @param name Unique, non-empty, not "__metadata__". @param shape Non-negative dimensions.
  /// @param data `product(shape)` floats. @param storeAs F32 (default), F64, F16 or BF16.
  void add(const std::string& name, std::vector<Index> shape, const float* data,
           DType storeAs = DType::F32) {
    addEntry(name, std::move(shape), data, Kind::Float, storeAs, nullptr);
  }

  /// @brief Adds a tensor of row-major double data that stays owned by the caller until
  /// write(). @param storeAs F64 (default), F32, F16 or BF16.
  void add(const std::string& name, std::vector<Index> shape, const double* data,
           DType storeAs = DType::F64) {
    addEntry(name, std::move(shape), data, Kind::Double, storeAs, nullptr);
  }

  /// @brief Adds a tensor of int32 data (stored as I32) that stays owned by the caller until
  /// write(). @param name Unique, non-empty, not "__metadata__". @param shape Dimensions.
  void add(const std::string& name, std::vector<Index> shape, const std::int32_t* data) {
    addEntry(name, std::move(shape), data, Kind::Int32, DType::I32, nullptr);
  }

  /// @brief Adds a tensor of int64 data (stored as I64) that stays owned by the caller until
  /// write(). @param name Unique, non-empty, not "__metadata__". @param shape Dimensions.
  void add(const std::string& name, std::vector<Index> shape, const std::int64_t* data) {
    addEntry(name, std::move(shape), data, Kind::Int64, DType::I64, nullptr);
  }

  /// @brief Adds a copy of an Eigen matrix or vector (of float or double), stored row-major.
  /// A compile-time vector gets the 1-D shape `[n]`, anything else `[rows, cols]`.
  /// @param storeAs Defaults to F32 for float and F64 for double data; F16 and BF16 are allowed.
  template <typename Derived>
  void add(const std::string& name, const Eigen::MatrixBase<Derived>& m,
           DType storeAs = kDTypeOf<typename Derived::Scalar>) {
    using Scalar = typename Derived::Scalar;
    static_assert(kFloatOrDouble<Scalar>,
                  "safetensors tensors are added from float or double data");
    auto copy = std::make_shared<RowMatrix<Scalar>>(m);
    std::vector<Index> shape;
    if (Derived::IsVectorAtCompileTime) {
      shape = {copy->size()};
    } else {
      shape = {copy->rows(), copy->cols()};
    }
    addEntry(name, std::move(shape), copy->data(),
             std::is_same_v<Scalar, double> ? Kind::Double : Kind::Float, storeAs, copy);
  }

  /// @brief Sets a `__metadata__` entry (string to string).
  void setMetadata(const std::string& key, const std::string& value) { m_metadata[key] = value; }

  /// @brief Number of tensors added.
  std::size_t size() const noexcept { return m_entries.size(); }

  /// @brief Writes the file atomically. Throws IoError naming `path` on failure.
  void write(const std::string& path) const {
    using nlohmann::ordered_json;
    ordered_json header = ordered_json::object();
    if (!m_metadata.empty()) {
      ordered_json meta = ordered_json::object();
      for (const auto& [k, v] : m_metadata) meta[k] = v;
      header["__metadata__"] = std::move(meta);
    }
    std::uint64_t offset = 0;
    for (const auto& e : m_entries) {
      const std::uint64_t bytes = static_cast<std::uint64_t>(e.count) * dtypeSize(e.storeAs);
      ordered_json t = ordered_json::object();
      t["dtype"] = detail::safetensorsName(e.storeAs);
      t["shape"] = e.shape;
      t["data_offsets"] = ordered_json::array({offset, offset + bytes});
      header[e.name] = std::move(t);
      offset += bytes;
    }
    std::string text;
    try {
      text = header.dump();
    } catch (const nlohmann::json::exception& ex) {
      throw ConfigError(sae::detail::concat(
          path, ": a tensor name or metadata string is not valid UTF-8: ", ex.what()));
    }
    text.append((8 - text.size() % 8) % 8, ' ');
    unsigned char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(text.size() >> (8 * i));

    AtomicFileWriter w(path);
    w.write(length, 8);
    w.write(text.data(), text.size());
    for (const auto& e : m_entries) {
      if (e.kind == Kind::Double) {
        w.writeElements(static_cast<const double*>(e.data), e.count, e.storeAs);
      } else if (e.kind == Kind::Float) {
        w.writeElements(static_cast<const float*>(e.data), e.count, e.storeAs);
      } else {
        writeIntegers(w, e);
      }
    }
    w.commit();
  }

 private:
  /// The element type of the caller's data.
  enum class Kind { Float, Double, Int32, Int64 };

  struct Entry {
    std::string name;
    std::vector<Index> shape;
    Index count;
    const void* data;
    Kind kind;
    DType storeAs;
    std::shared_ptr<const void> owned;
  };

  /// Integers as little-endian elements of their own width, whatever the machine's order.
  static void writeIntegers(AtomicFileWriter& w, const Entry& e) {
    const std::size_t width = e.kind == Kind::Int64 ? 8 : 4;
    std::vector<unsigned char> buf;
    constexpr Index kChunk = 1 << 16;
    for (Index first = 0; first < e.count; first += kChunk) {
      const Index len = std::min(kChunk, e.count - first);
      buf.resize(static_cast<std::size_t>(len) * width);
      for (Index i = 0; i < len; ++i) {
        const std::uint64_t u =
            e.kind == Kind::Int64
                ? static_cast<std::uint64_t>(static_cast<const std::int64_t*>(e.data)[first + i])
                : static_cast<std::uint32_t>(static_cast<const std::int32_t*>(e.data)[first + i]);
        for (std::size_t b = 0; b < width; ++b)
          buf[static_cast<std::size_t>(i) * width + b] = static_cast<unsigned char>(u >> (8 * b));
      }
      w.write(buf.data(), buf.size());
    }
  }

  void addEntry(const std::string& name, std::vector<Index> shape, const void* data, Kind kind,
                DType storeAs, std::shared_ptr<const void> owned) {
    require(!name.empty(), "SafetensorsWriter: a tensor name must not be empty");
    require(name != "__metadata__", "SafetensorsWriter: '__metadata__' is reserved");
    for (const auto& e : m_entries) {
      require(e.name != name, "SafetensorsWriter: tensor '", name, "' added twice");
    }
    const bool integer = kind == Kind::Int32 || kind == Kind::Int64;
    require(integer || storeAs == DType::F32 || storeAs == DType::F64 || storeAs == DType::F16 ||
                storeAs == DType::BF16,
            "SafetensorsWriter: tensor '", name, "' cannot be stored as ", dtypeName(storeAs),
            " (F32, F64, F16 or BF16)");
    std::int64_t count = 1;
    for (Index d : shape) {
      require(d >= 0, "SafetensorsWriter: tensor '", name, "' has a negative dimension ", d);
      require(detail::checkedMul(count, d, count), "SafetensorsWriter: tensor '", name,
              "' has more elements than fit in 64 bits");
    }
    std::int64_t bytes = 0;
    require(detail::checkedMul(count, static_cast<std::int64_t>(dtypeSize(storeAs)), bytes),
            "SafetensorsWriter: tensor '", name, "' has more bytes than fit in 64 bits");
    require(data != nullptr || count == 0, "SafetensorsWriter: tensor '", name, "' has no data");
    m_entries.push_back(
        Entry{name, std::move(shape), count, data, kind, storeAs, std::move(owned)});
  }

  std::vector<Entry> m_entries;
  std::map<std::string, std::string> m_metadata;
};

}  // namespace sae::io

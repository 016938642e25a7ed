// libFuzzer harness of Gpt2Tokenizer (GPT-2's real files from tests/data/lm/gpt2-tokenizer) and
// of the vocab.json parser. Any input must either be valid UTF-8, then encode and
// encodeWithSpecial must decode back to exactly the input, or be invalid UTF-8 (as the
// harness's own check, independent of PCRE2's, says), then encode must throw FormatError. The
// same bytes as a vocab.json must parse or throw FormatError. A crash, a sanitizer report, a
// mismatch (abort) or any other exception is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <sae/core/error.hpp>
#include <sae/lm/tokenizer.hpp>

namespace {

/// Valid UTF-8 (shortest forms, no surrogates, at most U+10FFFF), checked byte by byte.
bool validUtf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    std::size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (n == 0 || s.size() - i < n) return false;
    std::uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
    for (std::size_t k = 1; k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c >> 6) != 2) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    const std::uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const sae::lm::Gpt2Tokenizer tok =
      sae::lm::Gpt2Tokenizer::fromDirectory(SAE_FUZZ_TOKENIZER_DIR);
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const bool valid = validUtf8(in);
  try {
    const std::vector<std::int32_t> ids = tok.encode(in, "fuzz.txt");
    if (!valid || tok.decode(ids) != in) std::abort();
    if (tok.decode(tok.encodeWithSpecial(in)) != in) std::abort();
  } catch (const sae::FormatError&) {
    if (valid) std::abort();
  }
  try {
    (void)sae::lm::detail::VocabParser("fuzz.json", in).parse();
  } catch (const sae::FormatError&) {
  }
  return 0;
}

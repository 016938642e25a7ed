// Tokenizer benchmark: GPT-2's tokenizer (Gpt2Tokenizer) loading its files, encoding a few MB
// of text in one call and line by line, and decoding it again, on one thread.
//
//   bench_tokenizer [--tokenizer <dir>] [--text <file>] [--mb 4] [--threads 1]
//
// The text is the file repeated until it is --mb megabytes (default: the tests' multilingual
// text, tests/data/lm/tokenizer_text.txt). One call caches the pieces it has merged for the
// rest of the call, so a repeated text is the cache's best case; line-by-line calls start each
// line with an empty cache, its worst. Each figure is the best of three passes. With
// --threads N, N threads each encode the whole text at once (the tokenizer is shared).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include <sae/lm/tokenizer.hpp>

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

template <typename F>
double bestOfThree(F&& f) {
  double best = 1e300;
  for (int k = 0; k < 3; ++k) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, since(t0));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = SAE_BENCH_TOKENIZER_DIR, textPath = SAE_BENCH_TOKENIZER_TEXT;
  double mb = 4;
  int threads = 1;
  CLI::App app("GPT-2 tokenizer benchmark");
  app.add_option("--tokenizer", dir, "Folder of vocab.json + merges.txt");
  app.add_option("--text", textPath, "UTF-8 text, repeated up to --mb megabytes");
  app.add_option("--mb", mb, "Size of the text to encode, in megabytes (1e6 bytes)");
  app.add_option("--threads", threads, "Threads encoding the text at once (one call each)");
  CLI11_PARSE(app, argc, argv);

  try {
    auto t0 = Clock::now();
    const auto tok = sae::lm::Gpt2Tokenizer::fromDirectory(dir);
    std::printf("load %s: %.3f s (%d tokens, %zu merges)\n", dir.c_str(), since(t0),
                tok.vocabSize(), tok.mergeCount());

    const std::string unit = sae::lm::detail::readWholeFile(textPath);
    std::string text;
    while (text.size() < static_cast<std::size_t>(mb * 1e6)) text += unit;
    std::vector<std::string> lines;
    for (std::size_t pos = 0; pos < text.size();) {
      std::size_t end = text.find('\n', pos);
      end = end == std::string::npos ? text.size() : end + 1;
      lines.push_back(text.substr(pos, end - pos));
      pos = end;
    }
    const double megabytes = static_cast<double>(text.size()) / 1e6;

    std::vector<std::int32_t> ids;
    const double one = bestOfThree([&] { ids = tok.encode(text); });
    const double ntok = static_cast<double>(ids.size());
    std::printf("encode, one call:    %.2f MB, %.0f tokens in %.3f s: %.2f M tokens/s, %.1f MB/s\n",
                megabytes, ntok, one, ntok / one / 1e6, megabytes / one);

    std::size_t perLineTokens = 0;
    const double perLine = bestOfThree([&] {
      perLineTokens = 0;
      for (const auto& l : lines) perLineTokens += tok.encode(l).size();
    });
    std::printf("encode, per line:    %zu lines, %zu tokens in %.3f s: %.2f M tokens/s\n",
                lines.size(), perLineTokens, perLine,
                static_cast<double>(perLineTokens) / perLine / 1e6);

    std::string back;
    const double dec = bestOfThree([&] { back = tok.decode(ids); });
    std::printf("decode:              %.3f s: %.2f M tokens/s (round trip %s)\n", dec,
                ntok / dec / 1e6, back == text ? "exact" : "DIFFERS");

    if (threads > 1) {
      const double par = bestOfThree([&] {
        std::vector<std::thread> pool;
        for (int k = 0; k < threads; ++k) pool.emplace_back([&] { (void)tok.encode(text); });
        for (auto& th : pool) th.join();
      });
      std::printf("encode, %d threads:   %.2f M tokens/s in total\n", threads,
                  threads * ntok / par / 1e6);
    }
    return back == text ? 0 : 1;
  } catch (const sae::Error& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
}

// A consumer of sae::lm: includes the tokenizer header and links PCRE2, through the target
// alone. Built beside `app` when sae was built with SAE_LM.
#include <cstdio>

#include <sae/lm/tokenizer.hpp>

int main() {
  try {
    (void)sae::lm::Gpt2Tokenizer::fromDirectory("/nonexistent/gpt2-tokenizer");
  } catch (const sae::IoError& e) {
    std::printf("sae::lm: %s\n", e.what());
    return 0;
  }
  return 1;
}

// Steady-state training steps (backward, clipping, Adam) do no heap allocation.
//
// This program replaces the global operator new to count allocations made between two
// points. The sizes are small enough for Eigen to keep its GEMM blocking buffers on the stack
// (below EIGEN_STACK_ALLOCATION_LIMIT); at large sizes those buffers are Eigen's only
// per-product allocations.
// Eigen allocates with malloc, not operator new. With EIGEN_RUNTIME_NO_MALLOC, every Eigen
// allocation checks an eigen_assert; warmAllocations() disallows them while it counts, and the
// assertion handler below counts each one. Every other Eigen assertion that fails aborts the
// program with its text (assertions are on in this program only).
#define EIGEN_RUNTIME_NO_MALLOC
namespace {
void eigenAssertion(bool ok, const char* condition);
}  // namespace
#define eigen_assert(x) eigenAssertion(static_cast<bool>(x), #x)

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/sae.hpp>
#if SAE_TEST_HAS_LM
#include <sae/lm/gpt2.hpp>
#endif

// GCC pairs the inlined malloc of these replacements with the free of the deletes and warns
// (-Wmismatched-new-delete); both sides are ours and match.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
std::atomic<std::size_t> g_largest{0};  // largest counted allocation, bytes
}  // namespace

// Every replaceable form is replaced, so that whatever form allocates, the matching delete
// here frees it (AddressSanitizer checks the pairing).
namespace {
void* countedAlloc(std::size_t size, std::size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) {
    g_allocations.fetch_add(1);
    std::size_t seen = g_largest.load();
    while (size > seen && !g_largest.compare_exchange_weak(seen, size)) {
    }
  }
  if (size == 0) size = 1;
  if (align <= alignof(std::max_align_t)) return std::malloc(size);
  return std::aligned_alloc(align, (size + align - 1) / align * align);
}
}  // namespace

void* operator new(std::size_t size) {
  if (void* p = countedAlloc(size, 0)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return operator new(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  return countedAlloc(size, 0);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  return countedAlloc(size, 0);
}
void* operator new(std::size_t size, std::align_val_t align) {
  if (void* p = countedAlloc(size, static_cast<std::size_t>(align))) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t align) { return operator new(size, align); }
void* operator new(std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  return countedAlloc(size, static_cast<std::size_t>(align));
}
void* operator new[](std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  return countedAlloc(size, static_cast<std::size_t>(align));
}
namespace {
void eigenAssertion(bool ok, const char* condition) {
  if (ok) return;
  if (std::strstr(condition, "heap allocation is forbidden") != nullptr) {
    g_allocations.fetch_add(1);  // an Eigen allocation while warmAllocations() counts
    return;
  }
  std::fprintf(stderr, "Eigen assertion failed: %s\n", condition);
  std::abort();
}
}  // namespace

void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

using sae::Index;

// Allocations made by `steps` training steps after two warm-up steps.
template <typename Model, typename Setup>
long allocationsPerStep(const sae::SaeConfig& cfg, Setup setup, Index batch = 64) {
  Model model(cfg, 1);
  setup(model);
  sae::eval::SyntheticOptions data_opts;
  data_opts.d_in = cfg.d_in;
  data_opts.n_features = 2 * cfg.d_in;
  sae::eval::SyntheticFeatures<float> data(data_opts, 2);
  const sae::RowMatrix<float> x = data.sample(batch);
  auto grads = model.makeGradients();
  sae::Adam<float> adam(model.parameters());
  typename Model::Workspace ws;
  sae::LatentMask dead = sae::LatentMask::Zero(cfg.d_sae);
  for (Index i = 0; i < cfg.d_sae; i += 3) dead[i] = 1;
  sae::TrainOptions opts;
  opts.dead_mask = &dead;
  auto step = [&] {
    const auto terms = model.backward(x, grads, opts, ws);
    sae::clipGradNorm(grads, 1.0);
    adam.step(model.parameters(), grads);
    model.updateBuffers(ws);
    return terms.total();
  };
  step();
  step();
  g_allocations = 0;
  g_largest = 0;
  g_counting = true;
  float sum = 0;
  for (int i = 0; i < 3; ++i) sum += step();
  g_counting = false;
  REQUIRE(std::isfinite(sum));
  return g_allocations.load();
}

sae::SaeConfig config() {
  sae::SaeConfig cfg;
  cfg.d_in = 32;
  cfg.d_sae = 256;
  cfg.k = 8;
  cfg.rescale_acts_by_decoder_norm = true;
  return cfg;
}

}  // namespace

TEST_CASE("The counter sees allocations", "[allocations]") {
  g_allocations = 0;
  g_counting = true;
  auto* v = new std::vector<int>(100);
  g_counting = false;
  delete v;
  CHECK(g_allocations.load() == 2);
}

TEST_CASE("TopK training steps do not allocate", "[allocations][TopKSAE]") {
  CHECK(allocationsPerStep<sae::TopKSAE<float>>(config(), [](auto&) {}) == 0);
}

TEST_CASE("Standard training steps do not allocate, dense or sparse", "[allocations]") {
  CHECK(allocationsPerStep<sae::StandardSAE<float>>(config(), [](auto&) {}) == 0);
  CHECK(allocationsPerStep<sae::StandardSAE<float>>(
            config(), [](auto& m) { m.parameters().flat("b_enc").array() -= 0.2f; }) == 0);
}

TEST_CASE("Gated training steps do not allocate, dense or sparse", "[allocations]") {
  CHECK(allocationsPerStep<sae::GatedSAE<float>>(config(), [](auto&) {}) == 0);
  CHECK(allocationsPerStep<sae::GatedSAE<float>>(
            config(), [](auto& m) { m.parameters().flat("b_gate").array() -= 0.2f; }) == 0);
}

TEST_CASE("JumpReLU training steps do not allocate, dense or sparse", "[allocations]") {
  for (auto mode :
       {sae::SaeConfig::SparsityLossMode::Step, sae::SaeConfig::SparsityLossMode::Tanh}) {
    sae::SaeConfig cfg = config();
    cfg.sparsity_loss_mode = mode;
    cfg.pre_act_loss_coefficient = 0.1;
    CHECK(allocationsPerStep<sae::JumpReLUSAE<float>>(cfg, [](auto&) {}) == 0);
    // Most latents quiet, no pre-activation loss: the sparse path, with window entries.
    cfg.pre_act_loss_coefficient = 0;
    CHECK(allocationsPerStep<sae::JumpReLUSAE<float>>(
              cfg, [](auto& m) { m.parameters().flat("threshold").array() += 0.1f; }) == 0);
  }
}

// Products routed to oneDNN: its primitive execution builds a small argument map on every
// call (kernels::kOnednnExecuteAllocations small blocks; no way around it through its
// API), and nothing else allocates: no buffer of ours, no scratchpad (ours, kept).
template <typename Model>
void checkOnednnStepAllocations(const sae::SaeConfig& cfg, Index batch) {
  const std::size_t before = sae::kernels::gemmExecutions();
  const long allocations = allocationsPerStep<Model>(
      cfg, [](auto&) {}, batch);
  // Three counted steps after two warm-up steps.
  const std::size_t executions = (sae::kernels::gemmExecutions() - before) * 3 / 5;
  INFO(Model::Arch::kName << ": " << allocations << " allocations, largest " << g_largest.load()
                          << " bytes, " << executions << " oneDNN products");
  if (!sae::kernels::onednnGemmAvailable()) {
    CHECK(allocations == 0);
    return;
  }
  CHECK(executions > 0);
  CHECK(allocations <= long(executions) * sae::kernels::kOnednnExecuteAllocations);
  CHECK(g_largest.load() <= 1024);
}

TEST_CASE("Training steps whose products run on oneDNN allocate only oneDNN's argument maps",
          "[allocations][gemm]") {
  // Shapes above kernels::gemm's threshold: the encoder product (and, dense, the backward
  // products) go through cached oneDNN primitives in a oneDNN build.
  sae::SaeConfig cfg = config();
  cfg.d_in = 64;
  cfg.d_sae = 1024;
  cfg.k = 16;
  const Index batch = 256;
  CHECK(sae::kernels::gemmUsesOnednn<float>(batch, cfg.d_sae, cfg.d_in) ==
        sae::kernels::onednnGemmAvailable());
  checkOnednnStepAllocations<sae::TopKSAE<float>>(cfg, batch);
  checkOnednnStepAllocations<sae::StandardSAE<float>>(cfg, batch);
  checkOnednnStepAllocations<sae::GatedSAE<float>>(cfg, batch);
  checkOnednnStepAllocations<sae::JumpReLUSAE<float>>(cfg, batch);
}

TEST_CASE("BatchTopK and Matryoshka training steps do not allocate",
          "[allocations][BatchTopKSAE]") {
  CHECK(allocationsPerStep<sae::BatchTopKSAE<float>>(config(), [](auto&) {}) == 0);
  sae::SaeConfig cfg = config();
  cfg.matryoshka_widths = {32, 96, 256};
  CHECK(allocationsPerStep<sae::MatryoshkaBatchTopKSAE<float>>(cfg, [](auto&) {}) == 0);
}

namespace {

// Allocations made by three calls of `fn` after two warm-up calls: operator new and Eigen's
// own (malloc) allocations both. Eigen's GEMM runs on one thread here: on several, each
// product allocates its blocking buffers (Eigen's parallel session), a cost of Eigen's kernel
// and not of the code measured (the large products go to oneDNN in oneDNN builds).
template <typename Fn>
long warmAllocations(Fn&& fn) {
  const int eigen_threads = Eigen::nbThreads();
  Eigen::setNbThreads(1);
  fn();
  fn();
  g_allocations = 0;
  g_largest = 0;
  g_counting = true;
  Eigen::internal::set_is_malloc_allowed(false);
  for (int i = 0; i < 3; ++i) fn();
  Eigen::internal::set_is_malloc_allowed(true);
  g_counting = false;
  Eigen::setNbThreads(eigen_threads);
  return g_allocations.load();
}

// config() for `Model` (Matryoshka levels added), with or without rescale_acts_by_decoder_norm.
template <typename Model>
sae::SaeConfig configFor(bool rescale) {
  sae::SaeConfig cfg = config();
  cfg.rescale_acts_by_decoder_norm = rescale;
  if (std::is_same<typename Model::Arch, sae::MatryoshkaBatchTopKArch>::value)
    cfg.matryoshka_widths = {32, 96, 256};
  return cfg;
}

template <typename Model>
Model modelFor(bool rescale) {
  Model model(configFor<Model>(rescale), 1);
  if constexpr (Model::kHasBuffers) model.buffers().flat("topk_threshold")[0] = 0.02;
  return model;
}

sae::RowMatrix<float> hiddenBatch(Index rows) {
  sae::eval::SyntheticOptions data_opts;
  data_opts.d_in = config().d_in;
  sae::eval::SyntheticFeatures<float> data(data_opts, 3);
  return data.sample(rows);
}

const sae::steer::EditList& someEdits() {
  static const sae::steer::EditList edits = {
      sae::steer::FeatureEdit::zero(3), sae::steer::FeatureEdit::multiply(7, 2.0),
      sae::steer::FeatureEdit::set(100, 0.5), sae::steer::FeatureEdit::add(9, 0.1)};
  return edits;
}

// The normalisations a facade is measured with: none and SAELens's three modes.
std::vector<sae::ActivationNormalizer> normalizers() {
  return {sae::ActivationNormalizer(),
          sae::ActivationNormalizer(sae::NormalizeActivations::LayerNorm),
          sae::ActivationNormalizer(sae::NormalizeActivations::ConstantNormRescale),
          sae::ActivationNormalizer(sae::NormalizeActivations::ExpectedAverageOnlyIn, 2.0)};
}

// Allocations of warm calls of each path of a sae::Sae that a hook calls.
struct FacadeAllocations {
  long encode = -1, decode = -1, decode_buffer = -1, forward = -1, forward_buffer = -1, edit = -1,
       edit_rows = -1, edit_buffer = -1;
};

template <typename Model>
FacadeAllocations facadeAllocations(bool rescale, const sae::ActivationNormalizer& normalizer) {
  sae::Sae<float> sae(modelFor<Model>(rescale), normalizer);
  const sae::RowMatrix<float> x = hiddenBatch(16);
  sae::RowMatrix<float> hidden = x;
  sae::Sae<float>::Codes codes;
  sae::RowMatrix<float> out;
  std::vector<float> buffer(static_cast<std::size_t>(x.size()));
  Eigen::Map<sae::RowMatrix<float>> view(buffer.data(), x.rows(), x.cols());
  const std::vector<Index> ids = {0, 5, 6, 15};
  FacadeAllocations a;
  a.encode = warmAllocations([&] { sae.encode(x, codes); });
  a.decode = warmAllocations([&] { sae.decode(codes, out); });
  a.decode_buffer = warmAllocations([&] { sae.decode(codes, view); });
  a.forward = warmAllocations([&] { sae.forward(x, out); });
  a.forward_buffer = warmAllocations([&] { sae.forward(x, view); });
  // Each call edits the same hidden state (copied into the same buffer: no allocation), as a
  // hook sees a new batch of the same size.
  a.edit = warmAllocations([&] {
    hidden = x;
    sae.edit(hidden, someEdits());
  });
  REQUIRE(hidden != x);  // the edits did change the buffer
  a.edit_rows = warmAllocations([&] {
    hidden = x;
    sae.edit(hidden, someEdits(), sae::steer::RowSelection::indices(ids));
  });
  a.edit_buffer = warmAllocations([&] {
    hidden = x;
    sae.edit(hidden.data(), hidden.rows(), hidden.cols(), someEdits());
  });
  REQUIRE(hidden.allFinite());
  return a;
}

}  // namespace

TEST_CASE("The counter sees Eigen's allocations", "[allocations]") {
  const long n = warmAllocations([] {
    Eigen::VectorXf v(100);
    v.setZero();
    REQUIRE(v.sum() == 0.0f);
  });
  CHECK(n == 3);
}

#define SAE_ALLOCATION_ARCHITECTURES                                                           \
  sae::StandardSAE<float>, sae::GatedSAE<float>, sae::JumpReLUSAE<float>, sae::TopKSAE<float>, \
      sae::BatchTopKSAE<float>, sae::MatryoshkaBatchTopKSAE<float>

TEMPLATE_TEST_CASE("Feature steering allocates nothing once warm", "[allocations][steering]",
                   SAE_ALLOCATION_ARCHITECTURES) {
  const TestType model = modelFor<TestType>(true);
  const sae::RowMatrix<float> x0 = hiddenBatch(16);
  sae::RowMatrix<float> x = x0;
  const std::vector<Index> ids = {0, 5, 6, 15};
  sae::steer::FeatureEditor<TestType> editor(model, someEdits());
  // Each call edits the same hidden state (copied into the same buffer: no allocation).
  auto fresh = [&](auto&& call) {
    return [&, call] {
      x = x0;
      call();
    };
  };
  CHECK(warmAllocations(fresh([&] { editor.apply(x); })) == 0);
  CHECK(warmAllocations(fresh([&] { editor.apply(x.data(), x.rows(), x.cols()); })) == 0);
  CHECK(warmAllocations(fresh([&] { editor.apply(x, sae::steer::RowSelection::indices(ids)); })) ==
        0);
  CHECK(x != x0);  // the edits did change the buffer
  CHECK(warmAllocations(fresh([&] { editor.addDirection(x, 9, 0.5f); })) == 0);
  // A layer-normed SAE's output scale per row.
  const sae::Vector<float> scale = sae::Vector<float>::Constant(16, 1.5f);
  CHECK(warmAllocations(fresh([&] { editor.applyScaled(x0, x, scale); })) == 0);
  CHECK(warmAllocations(fresh([&] {
          editor.applyScaled(x0, x, scale, sae::steer::RowSelection::indices(ids));
        })) == 0);
}

TEMPLATE_TEST_CASE("sae::Sae: warm encode, decode, forward and edit do not allocate",
                   "[allocations][runtime]", SAE_ALLOCATION_ARCHITECTURES) {
  constexpr bool topk_family =
      std::is_same<typename TestType::Arch, sae::TopKArch>::value ||
      std::is_base_of<sae::detail::BatchTopKFamily, typename TestType::Arch>::value;
  for (const bool rescale : {false, true}) {
    if (rescale && !topk_family) continue;
    for (const auto& normalizer : normalizers()) {
      INFO(sae::normalizeActivationsName(normalizer.mode())
           << ", scale " << normalizer.scale() << ", rescale_acts_by_decoder_norm " << rescale);
      const FacadeAllocations a = facadeAllocations<TestType>(rescale, normalizer);
      CHECK(a.encode == 0);
      CHECK(a.edit == 0);
      CHECK(a.edit_rows == 0);
      CHECK(a.edit_buffer == 0);
      if (rescale) continue;  // the rescaled decode: the case below
      CHECK(a.decode == 0);
      CHECK(a.decode_buffer == 0);
      CHECK(a.forward == 0);
      CHECK(a.forward_buffer == 0);
    }
  }
}

// rescale_acts_by_decoder_norm: the model's decode computes its decoder norms into scratch it
// keeps, so the facade's decode and forward allocate nothing once warm here too.
TEMPLATE_TEST_CASE(
    "sae::Sae: warm decode and forward of a rescaled TopK-family SAE do not allocate",
    "[allocations][runtime][rescaled]", sae::TopKSAE<float>, sae::BatchTopKSAE<float>,
    sae::MatryoshkaBatchTopKSAE<float>) {
  const FacadeAllocations a = facadeAllocations<TestType>(true, sae::ActivationNormalizer());
  CHECK(a.decode == 0);
  CHECK(a.decode_buffer == 0);
  CHECK(a.forward == 0);
  CHECK(a.forward_buffer == 0);
}

TEMPLATE_TEST_CASE("Warm encode and decode of rescaled TopK and BatchTopK do not allocate",
                   "[allocations][TopKSAE][BatchTopKSAE]", sae::TopKSAE<float>,
                   sae::BatchTopKSAE<float>) {
  sae::SaeConfig cfg = config();
  REQUIRE(cfg.rescale_acts_by_decoder_norm);
  TestType model(cfg, 1);
  // Decoder rows of unequal norms, so that the rescaling changes the reconstruction.
  auto W_dec = model.parameters().rowMajor("W_dec");
  for (Index i = 0; i < cfg.d_sae; ++i) W_dec.row(i) *= float(1 + i % 5);
  if constexpr (TestType::kHasBuffers) model.buffers().flat("topk_threshold")[0] = 0.05;
  sae::eval::SyntheticOptions data_opts;
  data_opts.d_in = cfg.d_in;
  sae::eval::SyntheticFeatures<float> data(data_opts, 4);
  const sae::RowMatrix<float> x = data.sample(48);
  typename TestType::Codes codes;
  typename TestType::Workspace ws;
  sae::RowMatrix<float> out;
  auto run = [&] {
    model.encode(x, codes, ws);
    model.decode(codes, out);
  };
  run();
  run();
  g_allocations = 0;
  g_counting = true;
  for (int i = 0; i < 3; ++i) run();
  g_counting = false;
  CHECK(g_allocations.load() == 0);
  // The reconstruction is still decode(encode(x)) with fresh buffers.
  const sae::RowMatrix<float> fresh = model.decode(model.encode(x));
  REQUIRE(out.rows() == x.rows());
  CHECK(out == fresh);
  CHECK(codes.l0() > 0);
}

#if SAE_TEST_HAS_LM
// The GPT-2 engine: once its buffers have grown to a call's shape, a forward with hooks and
// logits allocates nothing, and neither does a step of cached generation.
TEST_CASE("GPT-2: a warm forward and cached generation steps do not allocate",
          "[allocations][lm]") {
  sae::lm::Gpt2Model m = sae::lm::Gpt2Model::load(std::string(SAE_TEST_DATA_DIR) + "/lm/tiny-gpt2");
  sae::lm::TokenMatrix tokens(3, 16);
  for (Index i = 0; i < tokens.size(); ++i) tokens.data()[i] = static_cast<std::int32_t>(i % 101);
  sae::RowMatrix<float> logits;
  float seen = 0.0f;
  sae::lm::HookList hooks;
  hooks.add("blocks.1.hook_resid_pre", [](sae::lm::HookActivation& a) {
    a.value.col(0).array() += 1.0f;
    return sae::lm::HookAction::Continue;
  });
  hooks.addReader("blocks.0.mlp.hook_post",
                  [&](const sae::lm::HookActivation& a) { seen += a.value(0, 0); });
  m.forward(tokens, hooks, &logits);
  g_allocations = 0;
  g_counting = true;
  for (int i = 0; i < 3; ++i) m.forward(tokens, hooks, &logits);
  g_counting = false;
  CHECK(g_allocations.load() == 0);
  CHECK(std::isfinite(seen));

  // Generation: the allocation count seen at each step's first hook (after the embedding); the
  // steps after the first two (the prompt, then the first one-token step) add none.
  std::vector<std::size_t> at_step;
  at_step.reserve(64);
  sae::lm::HookList watch;
  watch.addReader("hook_embed",
                  [&](const sae::lm::HookActivation&) { at_step.push_back(g_allocations.load()); });
  const std::vector<std::int32_t> prompt = {1, 2, 3};
  sae::lm::Gpt2Sampling sampling;
  sampling.temperature = 0.8;
  sampling.top_k = 10;
  m.generate(prompt, 6, sampling, watch);  // warm
  g_allocations = 0;
  g_counting = true;
  m.generate(prompt, 10, sampling, watch);
  g_counting = false;
  REQUIRE(at_step.size() == 6 + 10);
  for (std::size_t i = 6 + 3; i < at_step.size(); ++i) CHECK(at_step[i] == at_step[6 + 2]);
}
#endif

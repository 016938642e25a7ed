// Tests of the architecture registry (models/registry.hpp): the one list of architectures,
// dispatch by name, construction, traits.
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/models/registry.hpp>

namespace sae_test_registry {

using sae::Index;

TEST_CASE("The registry lists the six architectures under SAELens's names", "[registry]") {
  const std::vector<std::string> expected = {"standard", "gated",     "topk",
                                             "jumprelu", "batchtopk", "matryoshka_batchtopk"};
  CHECK(sae::architectureNames() == expected);
  CHECK(sae::architectureNameList() ==
        "standard, gated, topk, jumprelu, batchtopk, matryoshka_batchtopk");
  CHECK(sae::Architectures::size == 6);
  CHECK(std::variant_size_v<sae::AnyModel<float>> == 6);
  for (const std::string& n : expected) CHECK(sae::isArchitecture(n));
  CHECK_FALSE(sae::isArchitecture("TopK"));
  CHECK_FALSE(sae::isArchitecture(""));
}

TEST_CASE("Traits come from the policies", "[registry]") {
  using sae::ArchitectureTraits;
  STATIC_REQUIRE(ArchitectureTraits<sae::TopKArch>::uses_k);
  STATIC_REQUIRE(ArchitectureTraits<sae::BatchTopKArch>::uses_k);
  STATIC_REQUIRE(ArchitectureTraits<sae::MatryoshkaBatchTopKArch>::uses_k);
  STATIC_REQUIRE_FALSE(ArchitectureTraits<sae::StandardArch>::uses_k);
  STATIC_REQUIRE_FALSE(ArchitectureTraits<sae::GatedArch>::uses_k);
  STATIC_REQUIRE_FALSE(ArchitectureTraits<sae::JumpReLUArch>::uses_k);
  CHECK(std::string(ArchitectureTraits<sae::BatchTopKArch>::saved_as) == "jumprelu");
  CHECK(std::string(ArchitectureTraits<sae::MatryoshkaBatchTopKArch>::saved_as) == "jumprelu");
  CHECK(std::string(ArchitectureTraits<sae::TopKArch>::saved_as) == "topk");
  // The file readers produce the architectures that are saved as themselves.
  CHECK(sae::architectureNames<sae::LoadableArchitectures>() ==
        std::vector<std::string>{"standard", "gated", "topk", "jumprelu"});
  const sae::ArchitectureInfo info = sae::architectureInfo("batchtopk");
  CHECK(std::string(info.name) == "batchtopk");
  CHECK(info.uses_k);
  CHECK_FALSE(info.loadable);
  CHECK(sae::architectureInfo("gated").loadable);
}

TEST_CASE("visitArchitecture dispatches a name to its type", "[registry]") {
  for (const std::string& n : sae::architectureNames()) {
    const std::string seen =
        sae::visitArchitecture(n, [](auto tag) { return std::string(decltype(tag)::Arch::kName); });
    CHECK(seen == n);
  }
  int calls = 0;
  sae::visitArchitecture("gated", [&](auto tag) {
    ++calls;
    CHECK(std::is_same_v<typename decltype(tag)::Arch, sae::GatedArch>);
  });
  CHECK(calls == 1);
  auto unknown = [] { return sae::visitArchitecture("topK", [](auto) { return 0; }); };
  CHECK_THROWS_AS(unknown(), sae::ConfigError);
  CHECK_THROWS_WITH(unknown(),
                    "unknown architecture 'topK' (supported: standard, gated, topk, jumprelu, "
                    "batchtopk, matryoshka_batchtopk)");
  CHECK_THROWS_WITH(
      sae::visitArchitecture<sae::LoadableArchitectures>("batchtopk", [](auto) { return 0; }),
      "unknown architecture 'batchtopk' (supported: standard, gated, topk, jumprelu)");
}

TEST_CASE("makeModel builds the named architecture, zero-initialised", "[registry]") {
  sae::SaeConfig cfg;
  cfg.d_in = 6;
  cfg.d_sae = 12;
  cfg.k = 3;
  cfg.matryoshka_widths = {4, 12};
  for (const std::string& n : sae::architectureNames()) {
    const sae::AnyModel<float> m = sae::makeModel<float>(n, cfg);
    std::visit(
        [&](const auto& model) {
          CHECK(std::string(model.architecture()) == n);
          CHECK(model.dIn() == 6);
          CHECK(model.dSae() == 12);
          CHECK(model.parameters().rowMajor("W_dec").cwiseAbs().maxCoeff() == 0.0f);
        },
        m);
  }
  sae::SaeConfig no_k = cfg;
  no_k.k = 0;
  CHECK_THROWS_AS(sae::makeModel<float>("topk", no_k), sae::ConfigError);
  CHECK_NOTHROW(sae::makeModel<float>("standard", no_k));
  CHECK_THROWS_AS(sae::makeModel<double>("relu", cfg), sae::ConfigError);
}

}  // namespace sae_test_registry

namespace sae_test_registry {

TEST_CASE("parameterLayout: a model's parameters without allocating them", "[registry]") {
  sae::SaeConfig cfg;
  cfg.d_in = 3;
  cfg.d_sae = 5;
  const auto gated = sae::GatedSAE<float>::parameterLayout(cfg);
  const sae::GatedSAE<float> model(cfg);
  REQUIRE(gated.size() == model.parameters().entries().size());
  for (std::size_t i = 0; i < gated.size(); ++i) {
    const sae::ParameterInfo& e = model.parameters().entries()[i];
    CHECK(gated[i].name == e.name);
    CHECK(gated[i].shape == e.shape);
    CHECK(gated[i].layout == e.layout);
    CHECK(gated[i].offset == e.offset);
  }
  // A size no machine could allocate: described, not allocated (1e13 scalars).
  sae::SaeConfig huge;
  huge.d_in = 1000000;
  huge.d_sae = 10000000;
  const auto layout = sae::JumpReLUSAE<float>::parameterLayout(huge);
  std::vector<std::string> names;
  for (const auto& e : layout) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"W_enc", "b_enc", "W_dec", "b_dec", "threshold"});
  CHECK(layout.front().shape == std::vector<Index>{1000000, 10000000});
  CHECK(layout.back().offset + layout.back().size == 2 * Index(1e13) + Index(1e6) + 2 * Index(1e7));
  // The architecture's own validation still applies.
  sae::SaeConfig no_k = cfg;
  CHECK_THROWS_AS(sae::TopKSAE<float>::parameterLayout(no_k), sae::ConfigError);

  auto p = sae::ParameterSet<float>::layoutOnly();
  p.add("W", {2, 3});
  CHECK(p.size() == 6);
  CHECK(p.contains("W"));
  CHECK_THROWS_WITH(p.rowMajor("W"),
                    "this parameter set describes a layout only and holds no values");
  CHECK_THROWS_AS(p.flat(), sae::ConfigError);
}

}  // namespace sae_test_registry

// Tests of the option enums' names (core/enum_names.hpp): parsing, printing, JSON, NamedEnum.
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sae/core/enum_names.hpp>

namespace sae_test_enum_names {
enum class Colour { Red, Green, Blue };
}  // namespace sae_test_enum_names

template <>
struct sae::EnumNames<sae_test_enum_names::Colour> {
  using C = sae_test_enum_names::Colour;
  static constexpr std::pair<C, const char*> table[] = {
      {C::Red, "red"}, {C::Green, "green"}, {C::Blue, "blue"}, {C::Red, "rouge"}};
};

namespace sae_test_enum_names {

TEST_CASE("Enum names: the first name of a value is written, every name is read", "[enum]") {
  CHECK(std::string(sae::enumName(Colour::Red)) == "red");
  CHECK(std::string(sae::enumName(Colour::Blue)) == "blue");
  CHECK(sae::enumNames<Colour>() == std::vector<std::string>{"red", "green", "blue"});
  CHECK(sae::enumNameList<Colour>() == "red, green or blue");
  CHECK(sae::parseEnum<Colour>("rouge", "colour") == Colour::Red);
  CHECK(sae::parseEnum<Colour>("green", "colour") == Colour::Green);
  CHECK_THROWS_AS(sae::parseEnum<Colour>("Green", "colour"), sae::ConfigError);
  CHECK_THROWS_WITH(sae::parseEnum<Colour>("mauve", "colour"),
                    "colour must be red, green or blue, found 'mauve'");
}

TEST_CASE("NamedEnum holds a value, takes names and reports an unknown one", "[enum]") {
  sae::NamedEnum<Colour> c = Colour::Blue;
  CHECK(c == Colour::Blue);
  CHECK(c == "blue");
  CHECK(c.name() == "blue");
  c = "rouge";
  CHECK(c.valid());
  CHECK(c.value() == Colour::Red);
  CHECK(c == "red");
  c = "mauve";
  CHECK_FALSE(c.valid());
  CHECK(c.name() == "mauve");
  CHECK(c != Colour::Red);
  CHECK_THROWS_WITH(c.check("paint"), "paint must be red, green or blue, found 'mauve'");
  CHECK_THROWS_AS(c.value(), sae::ConfigError);
}

TEST_CASE("Enums and NamedEnums are their names in JSON", "[enum]") {
  const nlohmann::json j = {{"a", Colour::Green}, {"b", sae::NamedEnum<Colour>("blue")}};
  CHECK(j.dump() == R"({"a":"green","b":"blue"})");
  CHECK(j.at("a").get<Colour>() == Colour::Green);
  CHECK(j.at("b").get<sae::NamedEnum<Colour>>() == Colour::Blue);
  CHECK(nlohmann::json("rouge").get<Colour>() == Colour::Red);
  CHECK_THROWS_WITH(nlohmann::json("mauve").get<sae::NamedEnum<Colour>>(),
                    "the value must be red, green or blue, found 'mauve'");
  CHECK_THROWS_AS(nlohmann::json(3).get<Colour>(), nlohmann::json::exception);
}

}  // namespace sae_test_enum_names

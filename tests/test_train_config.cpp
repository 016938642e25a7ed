// Tests of TrainerConfig's field list (SAE_TRAIN_FIELDS: JSON keys, flags, resume rules) and of
// TrainerConfig::resumed, the configuration of a resumed run: repeated values accepted, a
// changed fixed field refused naming the flag and both values, total_steps allowed to grow.
#include <map>
#include <set>
#include <string>

#include <catch2/catch.hpp>

#include <sae/train/trainer.hpp>

// Everything of this file in its own namespace: the test sources are compiled together in
// unity batches (tests/CMakeLists.txt), so file-local names of two files must not meet.
namespace sae_test_train_config {

using sae::train::ResumeRule;
using sae::train::TrainerConfig;

TEST_CASE("SAE_TRAIN_FIELDS: one entry per JSON key, distinct flags", "[TrainerConfig]") {
  const auto fields = TrainerConfig::fields();
  const nlohmann::json j = TrainerConfig().toJson();
  CHECK(fields.size() == j.size());
  std::set<std::string> names, flags;
  for (const auto& f : fields) {
    INFO(f.name);
    CHECK(j.contains(f.name));
    CHECK(names.insert(f.name).second);
    const std::string flag = f.flag;
    if (flag.empty()) continue;
    CHECK(flag.rfind("--", 0) == 0);
    CHECK(flags.insert(flag).second);
    CHECK(std::string(f.help).size() > 0);
  }
  // The rules the CLI relies on.
  std::map<std::string, ResumeRule> rule;
  for (const auto& f : fields) rule[f.name] = f.rule;
  CHECK(rule.at("total_steps") == ResumeRule::MayGrow);
  CHECK(rule.at("architecture") == ResumeRule::Fixed);
  CHECK(rule.at("seed") == ResumeRule::Fixed);
  CHECK(rule.at("threads") == ResumeRule::Free);
  CHECK(rule.at("log_every") == ResumeRule::Free);
}

TEST_CASE("TrainerConfig::resumed accepts repeated values, refuses changed ones",
          "[TrainerConfig]") {
  TrainerConfig run;
  run.architecture = "jumprelu";
  run.l0_coefficient = 0.5;
  run.total_steps = 300;
  run.log_every = 100;
  run.matryoshka_widths = {};
  run.out_dir = "/old/place";

  // The same values, as a repeated command line gives them.
  TrainerConfig same = run;
  same.out_dir = "/new/place";
  const std::map<std::string, std::string> given = {{"architecture", "--arch"},
                                                    {"l0_coefficient", "--l0-coefficient"},
                                                    {"total_steps", "--steps"},
                                                    {"out_dir", "--out"}};
  const TrainerConfig r = TrainerConfig::resumed(run, same, given);
  CHECK(r.toJson() == same.toJson());

  // A field the command line did not give keeps the run's value.
  TrainerConfig other = same;
  other.lr = 0.1;
  CHECK(TrainerConfig::resumed(run, other, given).lr == run.lr);

  // Fixed fields: refused, naming the flag and both values.
  other = same;
  other.l0_coefficient = 2;
  CHECK_THROWS_AS(TrainerConfig::resumed(run, other, given), sae::ConfigError);
  CHECK_THROWS_WITH(TrainerConfig::resumed(run, other, given),
                    "--l0-coefficient cannot be changed when resuming (the run has "
                    "l0_coefficient = 0.5, the command line gives 2.0)");
  other = same;
  other.architecture = "gated";
  CHECK_THROWS_WITH(TrainerConfig::resumed(run, other, given),
                    "--arch cannot be changed when resuming (the run has architecture = "
                    "\"jumprelu\", the command line gives \"gated\")");

  // total_steps may grow, never shrink.
  other = same;
  other.total_steps = 500;
  CHECK(TrainerConfig::resumed(run, other, given).total_steps == 500);
  other.total_steps = 200;
  CHECK_THROWS_WITH(TrainerConfig::resumed(run, other, {{"total_steps", "--tokens"}}),
                    "--tokens cannot be lowered when resuming (the run has total_steps = 300, "
                    "the command line gives 200)");

  // Free fields take the new value.
  other = same;
  other.log_every = 7;
  other.threads = 3;
  const TrainerConfig f =
      TrainerConfig::resumed(run, other, {{"log_every", "--log-every"}, {"threads", "--threads"}});
  CHECK(f.log_every == 7);
  CHECK(f.threads == 3);
  CHECK(f.out_dir == "/old/place");
}

}  // namespace sae_test_train_config

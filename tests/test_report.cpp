// The run report (sae/report/): HTML escaping, tick values, the curves and the density
// histogram of a hand-written run folder (coordinates computed here from the chart's layout),
// errors for bad run folders, `sae report` and `sae train --report`, and — when chromium is
// installed (SAE_CHROMIUM_PATH) — the page opened in headless chromium from file:// with the
// network off: no console errors, the expected elements in its DOM, and a screenshot kept.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <sae/io/safetensors.hpp>
#include <sae/report/run_report.hpp>

#include <support/browser.hpp>
#include <support/cli_runner.hpp>
#include <support/test_support.hpp>

namespace test_report {

using sae::report::escapeHtml;
using sae::report::niceTicks;
using sae::report::runReportHtml;
using sae::test::readFile;
using sae::test::scratchDir;
using sae::test::writeBytes;

std::size_t countOf(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

// The `<svg ...>...</svg>` element with id `id` (empty when there is none).
std::string svgById(const std::string& html, const std::string& id) {
  const std::size_t at = html.find("id=\"" + id + "\"");
  if (at == std::string::npos) return {};
  const std::size_t start = html.rfind("<svg", at);
  const std::size_t end = html.find("</svg>", at);
  return html.substr(start, end + 6 - start);
}

// A run folder as the trainer leaves it, written by hand: three training lines (l0 10, 20, 30
// at steps 0, 50, 100; a NaN loss written as null at step 50), one held-out line, a cfg.json
// whose hook name holds markup, and log10 densities of four latents.
std::string handWrittenRun(const std::string& name) {
  const std::string dir = scratchDir("report", name);
  writeBytes(dir + "/metrics.jsonl",
             std::string("{\"step\":0,\"l0\":10,\"lr\":0.001,\"losses\":{\"mse_loss\":4.0}}\n"
                         "{\"step\":50,\"l0\":20,\"lr\":0.001,\"losses\":{\"mse_loss\":null}}\n"
                         "\n"
                         "{\"step\":100,\"l0\":30,\"lr\":0.0005,\"losses\":{\"mse_loss\":1.0}}\n"
                         "{\"step\":100,\"eval\":true,\"l0\":28,\"mse\":1.5}\n"));
  writeBytes(dir + "/cfg.json", std::string("{\"architecture\":\"topk\",\"d_in\":8,\"d_sae\":4,"
                                            "\"hook_name\":\"<script>alert('x')</script>\"}"));
  writeBytes(dir + "/train_config.json", std::string("{\"k\":2,\"lr\":0.001}"));
  Eigen::VectorXf log_density(4);
  log_density << -10.0f, -0.1f, -2.2f, -2.3f;
  sae::io::SafetensorsWriter w;
  w.add("sparsity", log_density);
  w.write(dir + "/sparsity.safetensors");
  return dir;
}

TEST_CASE("escapeHtml makes markup text and is safe inside attributes", "[report]") {
  CHECK(escapeHtml("<script>alert('x') & \"y\"</script>") ==
        "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;");
  CHECK(escapeHtml("plain text, é") == "plain text, é");
  CHECK(escapeHtml("") == "");
}

TEST_CASE("niceTicks covers the range with round steps", "[report]") {
  CHECK(niceTicks(0, 100, 6) == std::vector<double>{0, 20, 40, 60, 80, 100});
  CHECK(niceTicks(3, 97, 5) == std::vector<double>{0, 20, 40, 60, 80, 100});
  CHECK(niceTicks(10, 30, 4) == std::vector<double>{10, 15, 20, 25, 30});
  const std::vector<double> small = niceTicks(0.0003, 0.0009, 4);
  REQUIRE(small.size() == 5);
  CHECK(small.front() == Approx(0.0002));
  CHECK(small.back() == Approx(0.001));
  // A constant curve gets a range around its value.
  const std::vector<double> flat = niceTicks(32, 32, 4);
  CHECK(flat.front() <= 32);
  CHECK(flat.back() >= 32);
  CHECK(flat.front() < flat.back());
}

TEST_CASE("readRunMetrics splits training and held-out points and skips nulls", "[report]") {
  const std::string dir = handWrittenRun("metrics");
  const sae::report::RunMetrics m = sae::report::readRunMetrics(dir + "/metrics.jsonl");
  CHECK(m.training_lines == 3);
  CHECK(m.eval_lines == 1);
  const auto& l0 = m.curves.at("l0");
  CHECK(l0.steps == std::vector<double>{0, 50, 100});
  CHECK(l0.values == std::vector<double>{10, 20, 30});
  CHECK(l0.eval_steps == std::vector<double>{100});
  CHECK(l0.eval_values == std::vector<double>{28});
  const auto& mse = m.curves.at("losses.mse_loss");
  CHECK(mse.steps == std::vector<double>{0, 100});
  CHECK(mse.values == std::vector<double>{4.0, 1.0});
  CHECK(m.curves.at("mse").steps.empty());
  CHECK(m.curves.count("step") == 0);
}

TEST_CASE("the run report draws each curve at the chart's coordinates", "[report]") {
  const std::string html = runReportHtml(handWrittenRun("page"));
  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  // Self-contained: no script, no external resource.
  CHECK(html.find("<script") == std::string::npos);
  CHECK(html.find("src=") == std::string::npos);
  CHECK(html.find("href=") == std::string::npos);
  // The hook name from cfg.json is shown as text.
  CHECK(html.find("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") != std::string::npos);

  // l0: x ticks 0..100, y ticks 10..30 (step 5); plot area 520 x 180 at (64, 28), so step s
  // is at x = 64 + 520 s / 100 and value v at y = 28 + 180 (1 - (v - 10) / 20).
  const std::string l0 = svgById(html, "chart-l0");
  REQUIRE(!l0.empty());
  CHECK(l0.find("points=\"64.00,208.00 324.00,118.00 584.00,28.00\"") != std::string::npos);
  CHECK(l0.find("data-points=\"3\"") != std::string::npos);
  CHECK(countOf(l0, "<circle class=\"pt train\"") == 3);
  // The held-out point (28 at step 100): y = 28 + 180 * (1 - 18 / 20) = 46.
  CHECK(countOf(l0, "<circle class=\"pt heldout\"") == 1);
  CHECK(l0.find("cx=\"584.00\" cy=\"46.00\"") != std::string::npos);
  CHECK(l0.find("<title>held-out: 28 at step 100</title>") != std::string::npos);
  // The null loss is left out; lr and the held-out-only mse have their charts.
  CHECK(svgById(html, "chart-losses-mse-loss").find("data-points=\"2\"") != std::string::npos);
  CHECK(!svgById(html, "chart-lr").empty());
  CHECK(countOf(svgById(html, "chart-mse"), "<circle class=\"pt heldout\"") == 1);

  // Density bins of 0.5 decade from -10: -0.1 is in [-0.5, 0), -2.2 and -2.3 in [-2.5, -2);
  // -10 (log10 of 0 + 1e-10) is dead.
  const std::string hist = svgById(html, "density-histogram");
  REQUIRE(!hist.empty());
  CHECK(countOf(hist, "<rect class=\"bar\"") == 21);
  CHECK(hist.find("<title>dead: 1</title>") != std::string::npos);
  CHECK(hist.find("<title>-2.5: 2</title>") != std::string::npos);
  CHECK(hist.find("<title>-0.5: 1</title>") != std::string::npos);
  CHECK(hist.find("<title>-3: 0</title>") != std::string::npos);
  CHECK(html.find("<td>k</td><td>2</td>") != std::string::npos);
}

TEST_CASE("the run report of a run in progress has its curves and says what is missing",
          "[report]") {
  const std::string dir = handWrittenRun("progress");
  std::filesystem::remove(dir + "/cfg.json");
  std::filesystem::remove(dir + "/sparsity.safetensors");
  const std::string html = runReportHtml(dir);
  CHECK(html.find("no final SAE yet") != std::string::npos);
  CHECK(html.find("id=\"density-missing\"") != std::string::npos);
  CHECK(!svgById(html, "chart-l0").empty());
}

TEST_CASE("bad run folders get errors naming the file and the problem", "[report]") {
  const std::string dir = scratchDir("report", "bad");
  auto fails = [&](const std::string& what) {
    try {
      (void)runReportHtml(dir);
      FAIL("no error; expected: " << what);
    } catch (const sae::Error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(what) != std::string::npos);
    }
  };
  fails(dir + "/metrics.jsonl: cannot read");
  writeBytes(dir + "/metrics.jsonl", std::string("\n\n"));
  fails("metrics.jsonl: no metrics lines yet");
  writeBytes(dir + "/metrics.jsonl", std::string("{\"step\":1,\"l0\":3}\n{\"step\":2,\"l0\":\n"));
  fails("metrics.jsonl: line 2 is not valid JSON");
  writeBytes(dir + "/metrics.jsonl", std::string("{\"step\":1}\n[1,2]\n"));
  fails("line 2 is not a metrics object with a numeric \"step\"");
  writeBytes(dir + "/metrics.jsonl", std::string("{\"step\":1,\"l0\":3}\n"));
  writeBytes(dir + "/cfg.json", std::string("{\"d_in\": 8,"));
  fails(dir + "/cfg.json: not valid JSON");
  std::filesystem::remove(dir + "/cfg.json");
  Eigen::VectorXf bad(2);
  bad << -1.0f, std::numeric_limits<float>::quiet_NaN();
  sae::io::SafetensorsWriter w;
  w.add("sparsity", bad);
  w.write(dir + "/sparsity.safetensors");
  fails("sparsity.safetensors: latent 1 has a non-finite log density");
}

TEST_CASE("sae train --report and sae report write the page", "[report][cli]") {
  const std::string run = scratchDir("report", "train", false);
  sae::test::runCliOk({"train", "--out", run, "--steps", "60", "--log-every", "20", "--holdout",
                       "0.1", "--eval-every", "30", "--checkpoint-every", "40", "--report",
                       "--quiet"});
  const std::string html = readFile(run + "/report.html");
  CHECK(svgById(html, "chart-l0").find("data-points=\"3\"") != std::string::npos);
  // Held-out at steps 30 and 60 (the last is the final evaluation).
  CHECK(countOf(svgById(html, "chart-l0"), "<circle class=\"pt heldout\"") == 2);
  CHECK(!svgById(html, "density-histogram").empty());

  const std::string out = run + "/again.html";
  const auto r = sae::test::runCliOk({"report", run, "--out", out});
  CHECK(r.out == out + "\n");
  CHECK(readFile(out) == html);

  const std::string empty = scratchDir("report", "cli_empty");
  sae::test::checkCliFails({"report", empty}, empty + "/metrics.jsonl: cannot read");
  sae::test::checkCliFails({"report", run, "--out", "/nonexistent-dir/r.html"},
                           "/nonexistent-dir/r.html");
  const auto missing = sae::test::runCli({"report", empty + "/nope"});
  CHECK(missing.status == 2);
}

#ifdef SAE_CHROMIUM_PATH
using sae::test::chromium;

TEST_CASE("the run report opens in headless chromium with no errors", "[report][browser]") {
  const std::string run = scratchDir("report", "browser", false);
  sae::test::runCliOk({"train", "--out", run, "--steps", "400", "--log-every", "20", "--holdout",
                       "0.1", "--eval-every", "100", "--report", "--quiet"});
  const std::string page = run + "/report.html";
  std::string log;
  const std::string dom = chromium(page, "--dump-dom", log);
  INFO("chromium stderr: " << log);
  // With --enable-logging, every console message (script errors included) is logged as an
  // INFO:CONSOLE line.
  CHECK(log.find(":CONSOLE") == std::string::npos);
  CHECK(dom.find("<svg class=\"chart\" id=\"chart-l0\"") != std::string::npos);
  CHECK(countOf(svgById(dom, "chart-l0"), "<circle class=\"pt train\"") == 20);
  CHECK(countOf(svgById(dom, "chart-explained-variance"), "<circle class=\"pt heldout\"") == 4);
  CHECK(countOf(svgById(dom, "density-histogram"), "<rect class=\"bar\"") == 21);
  CHECK(dom.find("id=\"train-config\"") != std::string::npos);

  const std::string shot = run + "/report.png";
  (void)chromium(page, "--screenshot='" + shot + "'", log);
  // The artefact: build/tests/report-screenshots/run-report.png (the README's picture).
  sae::test::keepScreenshot(shot, "run-report.png");
}
#endif

}  // namespace test_report

// Headless chromium for the tests of the HTML pages (when CMake found it: SAE_CHROMIUM_PATH).
#pragma once

#ifdef SAE_CHROMIUM_PATH
#include <cstdlib>
#include <filesystem>
#include <string>

#include <catch2/catch.hpp>

#include <support/test_support.hpp>

namespace sae::test {

/// @brief Runs headless chromium on `page` (a file, opened as file://) with name resolution off,
/// so that any network request fails, and `mode` (--dump-dom, --screenshot=FILE, plus any other
/// flags such as --virtual-time-budget=MS). Returns its stdout; its stderr goes to `log`. With
/// --enable-logging, every console message (script errors included) is logged as an
/// INFO:CONSOLE line, so `log` holding no ":CONSOLE" means the page logged nothing.
inline std::string chromium(const std::string& page, const std::string& mode, std::string& log,
                            const std::string& window = "1280,1500") {
  const std::string dir = std::filesystem::path(page).parent_path().string();
  const std::string out = dir + "/chromium.out", err = dir + "/chromium.err";
  const std::string cmd = std::string("timeout 120 '") + SAE_CHROMIUM_PATH +
                          "' --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
                          "--no-first-run --user-data-dir='" +
                          dir +
                          "/chromium-profile' "
                          "--host-resolver-rules='MAP * ~NOTFOUND' --enable-logging=stderr "
                          "--v=0 --window-size=" +
                          window + " --hide-scrollbars " + mode + " 'file://" + page + "' >'" +
                          out + "' 2>'" + err + "'";
  INFO(cmd);
  REQUIRE(std::system(cmd.c_str()) == 0);
  log = readFile(err);
  return readFile(out);
}

/// @brief Copies screenshot `shot` (checked to be a PNG of some size) to the test artefacts,
/// build/tests/report-screenshots/`name`.
inline void keepScreenshot(const std::string& shot, const std::string& name) {
  const std::string png = readFile(shot);
  REQUIRE(png.size() > 10000);
  CHECK(png.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0);
  const std::filesystem::path keep = std::filesystem::current_path() / "report-screenshots";
  std::filesystem::create_directories(keep);
  std::filesystem::copy_file(shot, keep / name, std::filesystem::copy_options::overwrite_existing);
}

}  // namespace sae::test
#endif

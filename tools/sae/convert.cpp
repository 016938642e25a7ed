// `sae convert`: an SAE (SAELens, sparsify or Gemma Scope) into an SAELens folder, or a TopK SAE
// into a sparsify folder; the folder appears whole or not at all.
#include <unistd.h>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <sae/io/saelens.hpp>
#include <sae/io/sparsify.hpp>

#include "common.hpp"

namespace sae_cli {

constexpr const char* kAbout =
    "Convert an SAE (SAELens, sparsify or Gemma Scope) into an SAELens folder, or a TopK SAE "
    "into a sparsify folder";

namespace {

struct ConvertOptions {
  std::string src, dst, to = "saelens", dtype;
  bool force = false;
};

// Writes `sae` in format `to` into folder `dir`.
void writeSae(const sae::io::LoadedSae<double>& sae, const std::string& dir, const std::string& to,
              sae::io::DType dtype, const Eigen::VectorXd& log_sparsity) {
  if (to == "sparsify") {
    sae::io::SparsifySaveOptions o;
    o.dtype = dtype;
    sae::io::saveSparsify(sae, dir, o);
  } else {
    sae::io::SaeLensSaveOptions o;
    o.dtype = dtype;
    o.log_sparsity = log_sparsity;
    sae::io::saveSaeLens(sae, dir, o);
  }
}

}  // namespace

int runConvert(const ConvertOptions& o, const CLI::App&) {
  namespace fs = std::filesystem;
  const std::string& src = o.src;
  const std::string& dst = o.dst;
  const std::string& to = o.to;
  const auto loaded = sae::io::loadSae<double>(src);
  sae::io::DType dtype = sae::io::DType::F32;
  const std::string dtype_used = o.dtype.empty() ? loaded.storage_dtype : o.dtype;
  if (!sae::io::parseTorchDType(dtype_used, dtype)) dtype = sae::io::DType::F32;  // "mixed"
  Eigen::VectorXd log_sparsity;
  if (loaded.format == sae::io::SaeFormat::SaeLens && to == "saelens") {
    const sae::io::SaeDescription d = sae::io::describeSae(src);
    if (!d.sparsity_path.empty()) log_sparsity = sae::io::readSparsity(d.path);
  }
  std::error_code ec;
  const bool exists = fs::symlink_status(dst, ec).type() != fs::file_type::not_found;
  if (exists) {
    if (!o.force) throw sae::ConfigError(dst + ": already exists; pass --force to overwrite it");
    if (!isDir(dst)) throw sae::ConfigError(dst + ": exists and is not a directory");
    writeSae(loaded, dst, to, dtype, log_sparsity);
    // Files of the other format would leave two SAEs in the folder.
    const std::vector<std::string> stale =
        to == "sparsify"
            ? std::vector<std::string>{sae::io::kSaeWeightsFilename, sae::io::kSparsityFilename}
            : std::vector<std::string>{sae::io::kSparsifyWeightsFilename};
    for (const auto& name : stale) fs::remove(fs::path(dst) / name, ec);
    if (to == "saelens" && log_sparsity.size() == 0)
      fs::remove(fs::path(dst) / sae::io::kSparsityFilename, ec);
  } else {
    // Build the folder beside its destination, then rename it into place: readers see no
    // folder or the whole one.
    const std::string tmp = dst + ".tmp." + std::to_string(::getpid());
    fs::remove_all(tmp, ec);
    try {
      writeSae(loaded, tmp, to, dtype, log_sparsity);
      fs::rename(tmp, dst);
    } catch (...) {
      fs::remove_all(tmp, ec);
      throw;
    }
  }
  ojson out;
  out["src"] = src;
  out["src_format"] = sae::io::saeFormatName(loaded.format);
  out["dst"] = dst;
  out["format"] = to;
  out["architecture"] = loaded.config.architecture;
  out["dtype"] = sae::io::dtypeName(dtype);
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

Command registerConvert(CLI::App& app) {
  auto [cmd, sub, o] = newCommand(app, "convert", kAbout, runConvert);
  sub.add_option("src", o.src, "SAE folder or Gemma Scope params.npz")->required();
  sub.add_option("dst", o.dst, "output folder")->required();
  sub.add_option("--to", o.to, "output format (default saelens)")
      ->check(CLI::IsMember({"saelens", "sparsify"}));
  sub.add_option("--dtype", o.dtype,
                 "storage type of the weights (default: the source's, float32 if mixed)")
      ->check(CLI::IsMember({"float32", "float64", "float16", "bfloat16"}));
  sub.add_flag("--force", o.force, "overwrite dst if it exists");
  return cmd;
}

}  // namespace sae_cli

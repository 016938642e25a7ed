// `sae info`: shape, dtype and tensor names of a .npy / .npz / .safetensors file, or what an
// SAE (SAELens or sparsify folder, Gemma Scope params.npz) computes and how it is stored.
#include <sys/stat.h>
#include <cstdio>
#include <memory>
#include <string>

#include <sae/io/npy.hpp>
#include <sae/io/npz.hpp>
#include <sae/io/safetensors.hpp>

#include "common.hpp"

namespace sae_cli {

constexpr const char* kAbout =
    "Shape, dtype and tensor names of a .npy / .npz / .safetensors file; for an SAE (SAELens "
    "or sparsify folder, Gemma Scope params.npz): format, architecture, shapes, dtype, "
    "normalisation and tensors";

namespace {

ojson tensorList(const sae::io::SafetensorsFile& f) {
  ojson tensors = ojson::array();
  for (const auto& name : f.names()) {
    const auto& t = f.info(name);
    tensors.push_back({{"name", name}, {"dtype", t.dtype}, {"shape", t.shape}});
  }
  return tensors;
}

// .npz: its members; uncompressed .npy members with their header.
ojson npzInfo(const std::string& path) {
  ojson arrays = ojson::array();
  for (const sae::io::NpzMemberInfo& m : sae::io::listNpz(path)) {
    ojson entry = {{"name", m.name}};
    if (m.npy) {
      entry["dtype"] = m.descr;
      entry["shape"] = m.shape;
      entry["fortran_order"] = m.fortran;
    } else if (m.compressed) {
      entry["compressed"] = true;
    }
    arrays.push_back(entry);
  }
  return {{"file", path}, {"format", "npz"}, {"arrays", arrays}};
}

// The SAE at `path`, of any format: what it computes, then the tensors as stored.
ojson saeInfo(const sae::io::SaeDescription& d) {
  const sae::io::SaeLensConfig& c = d.config;
  ojson out;
  out["sae"] = d.path;
  out["format"] = sae::io::saeFormatName(d.format);
  out["architecture"] = c.architecture;
  out["d_in"] = c.sae_cfg.d_in;
  out["d_sae"] = c.sae_cfg.d_sae;
  if (c.architecture == "topk") {
    out["k"] = c.sae_cfg.k;
    out["rescale_acts_by_decoder_norm"] = c.sae_cfg.rescale_acts_by_decoder_norm;
  }
  out["dtype"] = d.storage_dtype;
  out["normalize_activations"] = c.normalize_activations;
  out["apply_b_dec_to_input"] = c.sae_cfg.apply_b_dec_to_input;
  if (!c.notes.empty()) out["notes"] = c.notes;
  out["saelens_config"] = c.toJson();  // as SAELens 6 would write it
  out["weights"] = d.weights_path;
  ojson tensors = ojson::array();
  for (const auto& t : d.tensors)
    tensors.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}});
  out["tensors"] = tensors;
  if (!d.sparsity_path.empty())
    out["sparsity"] = tensorList(sae::io::SafetensorsFile(d.sparsity_path));
  return out;
}

// True when an .npz archive holds Gemma Scope SAE weights (W_enc / w_enc and threshold).
bool looksLikeGemmaScope(const std::string& path) {
  try {
    const sae::io::NpzFile f(path);
    return (f.contains("W_enc") || f.contains("w_enc")) && f.contains("threshold");
  } catch (const sae::Error&) {
    return false;  // not readable as an uncompressed npz: shown as a plain archive
  }
}

struct InfoOptions {
  std::string path;
};

}  // namespace

int runInfo(const InfoOptions& o, const CLI::App&) {
  const std::string& path = o.path;
  ojson out;
  if (isDir(path) || (endsWith(path, ".npz") && looksLikeGemmaScope(path))) {
    out = saeInfo(sae::io::describeSae(path));
  } else if (endsWith(path, ".npy")) {
    const sae::io::NpyReader f(path);
    out = {{"file", path},
           {"format", "npy"},
           {"dtype", f.descr()},
           {"shape", f.shape()},
           {"fortran_order", f.fortranOrder()}};
  } else if (endsWith(path, ".npz")) {
    out = npzInfo(path);
  } else if (endsWith(path, ".safetensors")) {
    const sae::io::SafetensorsFile f(path);
    out = {{"file", path}, {"format", "safetensors"}, {"tensors", tensorList(f)}};
    if (!f.metadata().empty()) {
      ojson meta = ojson::object();
      for (const auto& [k, v] : f.metadata())
        meta[k] = v.size() > 200 ? v.substr(0, 200) + "..." : v;
      out["metadata"] = meta;
    }
  } else {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw sae::IoError(path + ": no such file or directory");
    throw sae::ConfigError(path +
                           ": unsupported file type (expected .npy, .npz, .safetensors or an "
                           "SAE folder)");
  }
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

Command registerInfo(CLI::App& app) {
  auto [cmd, sub, o] = newCommand(app, "info", kAbout, runInfo);
  sub.add_option("path", o.path, "file or SAE folder")->required();
  return cmd;
}

}  // namespace sae_cli

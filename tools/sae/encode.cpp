// `sae encode`: the feature activations of activation files, as a codes file
// (sae/io/codes_file.hpp) or, with --dense, a [N, d_sae] float32 .npy.
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <sae/io/activation_files.hpp>
#include <sae/io/codes_file.hpp>
#include <sae/io/npy.hpp>

#include "common.hpp"

namespace sae_cli {

constexpr const char* kAbout =
    "Feature activations of activation files. Default output: safetensors with 'indices' and "
    "'values' ([N, k] for TopK; CSR with 'row_offsets' otherwise); --dense: a [N, d_sae] .npy";

namespace {

struct EncodeOptions {
  InferenceOptions in;
  std::string out;
  bool dense = false;
};

}  // namespace

int runEncode(const EncodeOptions& o, const CLI::App&) {
  const bool bf16 = o.in.prepare();
  const auto loaded = sae::io::loadSae<float>(o.in.sae);
  const sae::io::ActivationFiles files(expandDumpFolders(o.in.data));
  checkWidth(loaded, files.cols(), o.in.sae);
  const sae::ActivationNormalizer normalizer = loaded.normalizer();
  const Index N = files.rows(), d_sae = loaded.config.sae_cfg.d_sae;
  std::optional<sae::io::NpyStreamWriter> npy;
  std::optional<sae::io::CodesFileWriter> sparse;
  if (o.dense) {
    if (!endsWith(o.out, ".npy")) throw sae::ConfigError(o.out + ": --dense writes a .npy file");
    npy.emplace(o.out, d_sae, sae::io::DType::F32);
  } else if (!endsWith(o.out, ".safetensors")) {
    throw sae::ConfigError(o.out + ": sparse codes are written as .safetensors (or use --dense)");
  } else {
    sparse.emplace(d_sae, loaded.config.architecture);
  }
  RowMatrix<float> x;
  sae::NormalizationStats stats;
  for (Index b = 0; b < N; b += o.in.batch) {
    const Index n = std::min(o.in.batch, N - b);
    x.resize(n, files.cols());
    files.readRows<float>(b, b + n, x);
    normalizer.normalize(x, stats);
    std::visit(
        [&](const auto& model) {
          const auto codes = encodeChunk(model, x, bf16);
          using Codes = std::decay_t<decltype(codes)>;
          if (npy) {
            npy->append(codes.toDense());
          } else if constexpr (std::is_same_v<Codes, sae::SparseCodes<float>>) {
            sparse->addTopK(codes.indices, codes.values);
          } else {
            sparse->addDense(codes.toDense());
          }
        },
        loaded.model);
  }
  if (npy)
    npy->commit();
  else
    sparse->write(o.out);
  std::fprintf(stderr, "%s encode: %lld rows -> %s\n", kProg, static_cast<long long>(N),
               o.out.c_str());
  return 0;
}

Command registerEncode(CLI::App& app) {
  auto [cmd, sub, o] = newCommand(app, "encode", kAbout, runEncode);
  o.in.add(sub, "SAE: SAELens or sparsify folder, or Gemma Scope params.npz (see sae info)");
  sub.add_option("--out", o.out, "output file")->required();
  sub.add_flag("--dense", o.dense, "write a dense [N, d_sae] float32 .npy");
  return cmd;
}

}  // namespace sae_cli

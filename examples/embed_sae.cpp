// Embedding an SAE in an inference engine: load an SAE folder once into sae::Sae<float>, then
// let the engine's per-layer hook edit its hidden-state buffer in place.
//
// The hook gets the engine's own memory (a row-major [tokens, d_in] float buffer) and calls
// sae.edit() on it: the chosen feature's code is changed and the change of its decoder term
// is added, with the SAE's normalize_activations applied inside and its reconstruction error
// kept. Once warm (the same batch size), the call allocates nothing.
//
//   embed_sae --sae path/to/sae --feature 1234 --op set --value 8   # on a random hidden state
//   embed_sae --check    # builds its own small SAE folder (a layer-normed TopK SAE), loads
//                        # it, and exits 1 unless the edit equals its hand computation
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include <sae/sae.hpp>

namespace {

using sae::Index;
namespace steer = sae::steer;

// A hidden state as an engine holds it: row-major floats, rows of random activations with an
// offset and a scale of their own (what layer_norm normalisation removes).
std::vector<float> randomHiddenState(Index tokens, Index d_in, std::uint64_t seed) {
  sae::Rng rng(seed);
  std::vector<float> h(static_cast<std::size_t>(tokens * d_in));
  for (Index t = 0; t < tokens; ++t) {
    const double offset = rng.normal(), scale = 1.0 + 3.0 * rng.uniform(0.0, 1.0);
    for (Index j = 0; j < d_in; ++j)
      h[static_cast<std::size_t>(t * d_in + j)] = float(offset + scale * rng.normal());
  }
  return h;
}

// Writes a small TopK SAE (rescale_acts_by_decoder_norm, layer_norm inputs) as an SAELens
// folder, with biases and decoder norms away from the initialisation.
void writeDemoSae(const std::string& dir) {
  sae::SaeConfig cfg;
  cfg.d_in = 16;
  cfg.d_sae = 4 * cfg.d_in;
  cfg.k = 6;
  cfg.rescale_acts_by_decoder_norm = true;
  sae::TopKSAE<float> model(cfg, 3);
  sae::Rng rng(5);
  auto& p = model.parameters();
  auto W_dec = p.rowMajor("W_dec");
  for (Index i = 0; i < cfg.d_sae; ++i) W_dec.row(i) *= float(rng.uniform(2.0, 20.0));
  for (const char* bias : {"b_enc", "b_dec"}) {
    auto b = p.flat(bias);
    for (Index i = 0; i < b.size(); ++i) b[i] = float(0.1 * rng.normal());
  }
  sae::io::SaeLensSaveOptions opts;
  opts.normalize_activations = "layer_norm";
  sae::io::saveSaeLens(model, dir, opts);
}

// The edit by hand, in double, from the loaded TopK model's parameters: layer_norm each row
// (x' = (x - mu) / (sigma + 1e-5)), take its codes f, edit them to f', and add
// sigma * (f' - f) diag(1 / n) W_dec (the TopK decode with rescale_acts_by_decoder_norm).
std::vector<double> editByHand(const sae::TopKSAE<float>& model, const std::vector<float>& hidden,
                               Index tokens, const steer::EditList& edits) {
  const Index d = model.dIn();
  const Eigen::MatrixXd W_dec = model.parameters().rowMajor("W_dec").cast<double>();
  std::vector<double> out(hidden.begin(), hidden.end());
  for (Index t = 0; t < tokens; ++t) {
    Eigen::RowVectorXd x(d);
    for (Index j = 0; j < d; ++j) x[j] = hidden[static_cast<std::size_t>(t * d + j)];
    const double mu = x.mean();
    const double sigma = std::sqrt((x.array() - mu).square().sum() / double(d - 1));
    const sae::RowMatrix<float> xn = ((x.array() - mu) / (sigma + 1e-5)).cast<float>();
    const Eigen::RowVectorXd f = model.encode(xn).toDense().row(0).cast<double>();
    for (const auto& e : edits) {
      double g = f[e.feature];
      if (e.op == steer::EditOp::Set) g = e.value;
      if (e.op == steer::EditOp::Add) g += e.value;
      if (e.op == steer::EditOp::Multiply) g *= e.value;
      if (e.op == steer::EditOp::Zero) g = 0;
      const double n =
          model.config().rescale_acts_by_decoder_norm ? W_dec.row(e.feature).norm() : 1;
      for (Index j = 0; j < d; ++j)
        out[static_cast<std::size_t>(t * d + j)] +=
            sigma * (g - f[e.feature]) / n * W_dec(e.feature, j);
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  Index feature = 0;
  std::string op = "set";
  double value = 4.0;
  Index tokens = 8;
  bool check = false;
  CLI::App app{"Load an SAE folder into sae::Sae and edit a hidden-state buffer through it"};
  app.add_option("--sae", dir, "SAE folder (SAELens, sparsify, Gemma Scope, this library's)");
  app.add_option("--feature", feature, "latent to edit")->check(CLI::NonNegativeNumber);
  app.add_option("--op", op, "set, add, multiply or zero")
      ->check(CLI::IsMember({"set", "add", "multiply", "zero"}));
  app.add_option("--value", value, "operand of set / add / multiply");
  app.add_option("--tokens", tokens, "rows of the random hidden state")->check(CLI::PositiveNumber);
  app.add_flag("--check", check,
               "build a small SAE folder, load it and verify the edit against a hand computation");
  CLI11_PARSE(app, argc, argv);
  if (dir.empty() && !check) {
    std::fprintf(stderr, "embed_sae: give --sae DIR, or --check\n");
    return 2;
  }

  try {
    std::string scratch;
    if (check) {
      scratch = (std::filesystem::temp_directory_path() /
                 ("embed_sae_check_" + std::to_string(::getpid())))
                    .string();
      writeDemoSae(scratch);
      dir = scratch;
    }

    // Once, when the engine starts: the SAE, its normalisation, its workspace.
    auto sae = sae::Sae<float>::load(dir);
    std::printf("%s: %s SAE, d_in %ld, d_sae %ld, normalize_activations %s\n", dir.c_str(),
                sae.architecture(), long(sae.dIn()), long(sae.dSae()),
                sae::normalizeActivationsName(sae.normalizer().mode()));
    const Index d_in = sae.dIn();
    std::vector<float> hidden = randomHiddenState(tokens, d_in, 7);
    const std::vector<float> original = hidden;

    steer::EditList edits;
    if (check) {
      // Clamp the latent most active on the first token, and ablate the second most active.
      sae::Sae<float>::Codes codes;
      sae.encode(Eigen::Map<const sae::RowMatrix<float>>(hidden.data(), tokens, d_in), codes);
      const sae::RowMatrix<float> f = codes.toDense();
      Index first = 0, second = 0;
      f.row(0).maxCoeff(&first);
      sae::RowMatrix<float> rest = f.row(0);
      rest(0, first) = -1;
      rest.row(0).maxCoeff(&second);
      edits = {steer::FeatureEdit::set(first, 3.0 * f(0, first) + 1.0),
               steer::FeatureEdit::zero(second)};
    } else {
      const steer::EditOp kind = op == "set"        ? steer::EditOp::Set
                                 : op == "add"      ? steer::EditOp::Add
                                 : op == "multiply" ? steer::EditOp::Multiply
                                                    : steer::EditOp::Zero;
      edits = {steer::FeatureEdit{feature, kind, value}};
    }

    // The engine's hook for this layer: its buffer, edited in place.
    auto onLayerOutput = [&](float* h, long n_tokens, long width) {
      sae.edit(h, n_tokens, width, edits);
    };
    onLayerOutput(hidden.data(), long(tokens), long(d_in));

    double changed = 0, largest = 0;
    Index rows_changed = 0;
    for (Index t = 0; t < tokens; ++t) {
      double row = 0;
      for (Index j = 0; j < d_in; ++j) {
        const std::size_t i = static_cast<std::size_t>(t * d_in + j);
        row += double(hidden[i] - original[i]) * double(hidden[i] - original[i]);
      }
      row = std::sqrt(row);
      rows_changed += row > 0;
      changed += row;
      largest = std::max(largest, row);
    }
    std::printf("%zu edit(s): %ld of %ld tokens changed, mean |change| %.4g, largest %.4g\n",
                edits.size(), long(rows_changed), long(tokens), changed / double(tokens), largest);

    if (check) {
      const auto* model = sae.modelAs<sae::TopKSAE<float>>();
      if (model == nullptr) throw sae::Error("the demo SAE did not load as TopK");
      const std::vector<double> want = editByHand(*model, original, tokens, edits);
      double err = 0, scale = 1;
      for (std::size_t i = 0; i < want.size(); ++i) {
        err = std::max(err, std::abs(double(hidden[i]) - want[i]));
        scale = std::max(scale, std::abs(want[i]));
      }
      std::filesystem::remove_all(scratch);
      std::printf("largest difference from the hand computation: %.3g (relative %.3g)\n", err,
                  err / scale);
      if (rows_changed == 0 || err / scale > 1e-4) {
        std::printf("check FAILED\n");
        return 1;
      }
      std::printf("check passed\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "embed_sae: %s\n", e.what());
    return 1;
  }
  return 0;
}

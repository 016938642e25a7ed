// The `sae` command-line program: train, encode, eval, info, convert.
//
//   sae train --out DIR                         # TopK SAE on built-in synthetic data
//   sae train --data acts.npy --arch topk --k 32 --expansion 8 --steps 2000 --out DIR
//   sae train --data acts.npy --arch jumprelu --l0-coefficient 2 --jumprelu-mode tanh --out DIR
//   sae train --data acts.npy --arch matryoshka_batchtopk --matryoshka-widths 256,1024,4096
//             --k 32 --d-sae 4096 --out DIR       # saved as jumprelu
//   sae train --out DIR --resume                # continue an interrupted run
//   sae encode --sae DIR --data acts.npy --out codes.safetensors [--dense]
//   sae eval --sae DIR --data acts.npy [--features stats.json [--top-n 20] [--token-ids ids.npy]]
//   sae info PATH                               # .npy / .npz / .safetensors / SAE folder
//   sae convert SRC DST [--to saelens|sparsify] [--dtype float32|float64|float16|bfloat16]
//
// SAEs are read from SAELens folders, sparsify folders and Gemma Scope params.npz files
// (sae::io::loadSae); convert writes SAELens or (TopK only) sparsify folders.
//
// Exit status: 0 on success; 1 for a bad input or failure, with a one-line message on stderr;
// 130 / 143 when training was stopped by SIGINT / SIGTERM (after writing a checkpoint).
#include <sys/stat.h>
#include <unistd.h>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "sae/progress.hpp"

#include <sae/io/activation_stream.hpp>
#include <sae/io/mapped_file.hpp>
#include <sae/io/npy.hpp>
#include <sae/io/sae_formats.hpp>
#include <sae/io/saelens.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/sae.hpp>
#include <sae/train/batch_source.hpp>
#include <sae/train/checkpoint.hpp>
#include <sae/train/trainer.hpp>

namespace {

using sae::Index;
using sae::RowMatrix;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

constexpr const char* kProg = "sae";

// ------------------------------------------------------------------------------ helpers

bool isDir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool endsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

json readJsonFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw sae::IoError(path + ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw sae::FormatError(path + ": not valid JSON: " + e.what());
  }
}

// ------------------------------------------------------------------------------ train

struct TrainArgs {
  std::string config_file;
  std::vector<std::string> data;
  std::string arch, out, lr_scheduler, b_dec_init, normalize, tensor, precision, jumprelu_mode;
  Index k = 0, d_sae = 0, batch = 0, synth_d_in = 64, synth_features = 256;
  double expansion = 0, lr = 0, l1 = 0, aux = 0, holdout = 0, synth_active = 5, synth_noise = 0.01;
  double l0 = 0, jumprelu_bandwidth = 0, jumprelu_tanh_scale = 0, jumprelu_init_threshold = 0,
         pre_act = 0, topk_threshold_lr = 0;
  std::vector<Index> matryoshka_widths;
  std::int64_t steps = 0, tokens = 0, lr_warmup = 0, lr_decay = 0, l1_warmup = 0, dead_window = 0,
               log_every = 0, eval_every = 0, checkpoint_every = 0;
  std::uint64_t seed = 0;
  int threads = 0, keep = 0;
  bool resume = false, unit_norm = false, quiet = false;
};

template <typename Arch, typename Source, typename Report>
int runTrainer(const sae::train::TrainerConfig& cfg, Source& source, bool resume, bool quiet,
               Report report) {
  sae::train::Trainer<float, Arch, Source> trainer(cfg, source);
  trainer.setHandleSignals(true);
  if (resume) {
    const auto latest = trainer.latestCheckpoint();
    if (!latest) throw sae::IoError(cfg.out_dir + "/checkpoints: no checkpoint to resume from");
    trainer.resume(*latest);
    if (!quiet)
      std::fprintf(stderr, "%s train: resuming from %s (step %lld of %lld)\n", kProg,
                   latest->c_str(), static_cast<long long>(trainer.step()),
                   static_cast<long long>(cfg.total_steps));
  } else {
    trainer.initialize();
  }
  sae::train::StopSignalGuard guard;
  sae::tools::TerminalProgress progress(quiet);
  const sae::train::TrainResult r = trainer.train(-1, progress);
  if (r.signal != 0) {
    std::fprintf(stderr,
                 "%s train: stopped by %s at step %lld; checkpoint %s written; continue with "
                 "`sae train --out %s --resume`\n",
                 kProg, r.signal == SIGINT ? "SIGINT" : "SIGTERM", static_cast<long long>(r.step),
                 r.checkpoint.c_str(), cfg.out_dir.c_str());
    return 128 + r.signal;
  }
  json summary = r.final_metrics;
  summary["out"] = cfg.out_dir;
  summary["steps"] = r.step;
  std::printf("%s\n", summary.dump().c_str());
  report(trainer);
  return 0;
}

template <typename Source>
int dispatchArch(const sae::train::TrainerConfig& cfg, Source& source, bool resume, bool quiet,
                 const sae::RowMatrix<float>* truth) {
  auto mmcs = [truth](const auto& trainer) {
    if (!truth) return;
    const double v =
        sae::eval::meanMaxCosineSimilarity(*truth, trainer.model().parameters().rowMajor("W_dec"));
    std::printf("{\"mmcs\": %.6f}\n", v);
  };
  if (cfg.architecture == "standard")
    return runTrainer<sae::StandardArch>(cfg, source, resume, quiet, mmcs);
  if (cfg.architecture == "gated")
    return runTrainer<sae::GatedArch>(cfg, source, resume, quiet, mmcs);
  if (cfg.architecture == "jumprelu")
    return runTrainer<sae::JumpReLUArch>(cfg, source, resume, quiet, mmcs);
  if (cfg.architecture == "batchtopk")
    return runTrainer<sae::BatchTopKArch>(cfg, source, resume, quiet, mmcs);
  if (cfg.architecture == "matryoshka_batchtopk")
    return runTrainer<sae::MatryoshkaBatchTopKArch>(cfg, source, resume, quiet, mmcs);
  return runTrainer<sae::TopKArch>(cfg, source, resume, quiet, mmcs);
}

int cmdTrain(const TrainArgs& a, CLI::App& app) {
  sae::train::TrainerConfig cfg;
  if (a.resume) {
    // The run's own configuration, from its newest checkpoint.
    sae::train::CheckpointDir dir(a.out + "/checkpoints");
    const auto latest = dir.latest();
    if (!latest) throw sae::IoError(a.out + "/checkpoints: no checkpoint to resume from");
    const sae::train::Checkpoint ck(*latest);
    if (!ck.state().contains("config")) ck.fail("state has no 'config'");
    cfg.updateFromJson(ck.state().at("config"), *latest);
    for (const char* flag : {"--config",
                             "--arch",
                             "--k",
                             "--d-sae",
                             "--expansion",
                             "--batch",
                             "--steps",
                             "--tokens",
                             "--lr",
                             "--l1",
                             "--seed",
                             "--data",
                             "--l0-coefficient",
                             "--jumprelu-bandwidth",
                             "--jumprelu-mode",
                             "--jumprelu-tanh-scale",
                             "--jumprelu-init-threshold",
                             "--pre-act-loss-coefficient",
                             "--topk-threshold-lr",
                             "--matryoshka-widths"})
      if (app.count(flag) > 0)
        throw sae::ConfigError(std::string(flag) +
                               " cannot be changed when resuming (the run's configuration is "
                               "read from its checkpoint)");
    if (app.count("--threads") == 0) sae::setThreads(cfg.threads);
  } else {
    if (!a.config_file.empty()) {
      json j = readJsonFile(a.config_file);
      if (j.is_object() && j.contains("data") && j.at("data").is_array()) {
        json d = {{"kind", "files"}, {"paths", j.at("data")}};
        j["data"] = d;
      }
      cfg.updateFromJson(j, a.config_file);
    }
    if (!a.arch.empty()) cfg.architecture = a.arch;
    if (app.count("--k")) cfg.k = a.k;
    if (app.count("--d-sae")) cfg.d_sae = a.d_sae;
    if (app.count("--expansion")) {
      cfg.expansion_factor = a.expansion;
      cfg.d_sae = 0;
    }
    if (app.count("--batch")) cfg.batch_size = a.batch;
    if (app.count("--steps")) cfg.total_steps = a.steps;
    if (app.count("--tokens")) cfg.total_steps = (a.tokens + cfg.batch_size - 1) / cfg.batch_size;
    if (app.count("--lr")) cfg.lr = a.lr;
    if (app.count("--l1")) cfg.l1_coefficient = a.l1;
    if (app.count("--aux")) cfg.aux_loss_coefficient = a.aux;
    if (app.count("--l0-coefficient")) cfg.l0_coefficient = a.l0;
    if (app.count("--jumprelu-bandwidth")) cfg.jumprelu_bandwidth = a.jumprelu_bandwidth;
    if (app.count("--jumprelu-mode")) cfg.jumprelu_sparsity_loss_mode = a.jumprelu_mode;
    if (app.count("--jumprelu-tanh-scale")) cfg.jumprelu_tanh_scale = a.jumprelu_tanh_scale;
    if (app.count("--jumprelu-init-threshold"))
      cfg.jumprelu_init_threshold = a.jumprelu_init_threshold;
    if (app.count("--pre-act-loss-coefficient")) cfg.pre_act_loss_coefficient = a.pre_act;
    if (app.count("--topk-threshold-lr")) cfg.topk_threshold_lr = a.topk_threshold_lr;
    if (app.count("--matryoshka-widths")) cfg.matryoshka_widths = a.matryoshka_widths;
    if (app.count("--seed")) cfg.seed = a.seed;
    if (app.count("--lr-scheduler")) cfg.lr_scheduler = a.lr_scheduler;
    if (app.count("--lr-warmup")) cfg.lr_warmup_steps = a.lr_warmup;
    if (app.count("--lr-decay")) cfg.lr_decay_steps = a.lr_decay;
    if (app.count("--l1-warmup")) cfg.l1_warmup_steps = a.l1_warmup;
    if (app.count("--dead-window")) cfg.dead_feature_window = a.dead_window;
    if (app.count("--b-dec-init")) cfg.b_dec_init = a.b_dec_init;
    if (app.count("--normalize")) cfg.normalize_activations = a.normalize;
    if (app.count("--unit-norm-decoder")) cfg.decoder_unit_norm = a.unit_norm;
    if (app.count("--log-every")) cfg.log_every = a.log_every;
    if (app.count("--eval-every")) cfg.eval_every = a.eval_every;
    if (app.count("--checkpoint-every")) cfg.checkpoint_every = a.checkpoint_every;
    if (app.count("--keep-checkpoints")) cfg.keep_checkpoints = a.keep;
    if (app.count("--threads")) cfg.threads = a.threads;
    if (app.count("--precision")) cfg.precision = a.precision;
    cfg.out_dir = a.out;
    if (!a.data.empty()) {
      cfg.data = {{"kind", "files"}, {"paths", a.data}, {"holdout", a.holdout}};
      if (!a.tensor.empty()) cfg.data["tensor"] = a.tensor;
    } else if (!cfg.data.contains("kind")) {
      cfg.data = {{"kind", "synthetic"},
                  {"d_in", a.synth_d_in},
                  {"features", a.synth_features},
                  {"active", a.synth_active},
                  {"noise", a.synth_noise}};
    }
    if (app.count("--holdout") && cfg.data.value("kind", "") == "files")
      cfg.data["holdout"] = a.holdout;
    cfg.validate();
    if (isDir(a.out + "/checkpoints")) {
      sae::train::CheckpointDir dir(a.out + "/checkpoints");
      if (dir.latest())
        throw sae::ConfigError(a.out +
                               " already holds a run with checkpoints; pass --resume to continue "
                               "it or choose another --out");
    }
    sae::setThreads(cfg.threads);
  }
  if (app.count("--threads")) sae::setThreads(a.threads);

  const std::string kind = cfg.data.value("kind", "");
  if (kind == "synthetic") {
    sae::eval::SyntheticOptions o;
    o.d_in = cfg.data.value("d_in", Index(64));
    o.n_features = cfg.data.value("features", Index(256));
    o.expected_active = cfg.data.value("active", 5.0);
    o.noise = cfg.data.value("noise", 0.01);
    sae::train::SyntheticSource<float> source(o, cfg.seed, cfg.batch_size);
    return dispatchArch(cfg, source, a.resume, a.quiet, &source.directions());
  }
  if (kind == "files") {
    sae::io::StreamOptions so;
    so.batch_size = cfg.batch_size;
    so.seed = cfg.seed;
    so.holdout_fraction = cfg.data.value("holdout", 0.0);
    so.tensor_name = cfg.data.value("tensor", std::string());
    const auto paths = cfg.data.at("paths").get<std::vector<std::string>>();
    sae::train::StreamSource<sae::io::ActivationStream<float>> source(paths, so);
    return dispatchArch(cfg, source, a.resume, a.quiet, nullptr);
  }
  throw sae::ConfigError("unknown data kind '" + kind + "' in the configuration");
}

// ------------------------------------------------------------------------------ encode / eval

void checkWidth(const sae::io::LoadedSae<float>& m, Index cols, const std::string& sae_dir) {
  if (cols != m.config.sae_cfg.d_in)
    throw sae::ConfigError("the data have " + std::to_string(cols) + " columns but the SAE in " +
                           sae_dir + " expects d_in = " + std::to_string(m.config.sae_cfg.d_in));
}

// Writes a safetensors file of I32 / I64 / F32 tensors (the io writer stores floats only).
struct RawTensor {
  std::string name, dtype;
  std::vector<Index> shape;
  std::vector<unsigned char> bytes;
};

void writeRawSafetensors(const std::string& path, const std::vector<RawTensor>& tensors,
                         const std::map<std::string, std::string>& meta) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = meta;
  std::uint64_t off = 0;
  for (const auto& t : tensors) {
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
    off += t.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(text.size() >> (8 * i));
  sae::io::AtomicFileWriter w(path);
  w.write(len, 8);
  w.write(text.data(), text.size());
  for (const auto& t : tensors) w.write(t.bytes.data(), t.bytes.size());
  w.commit();
}

template <typename T>
void appendBytes(std::vector<unsigned char>& out, const T& v) {
  const auto* p = reinterpret_cast<const unsigned char*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}

// The codes of one chunk, the encoder product in bf16 when asked (--precision bf16).
template <typename Model>
typename Model::Codes encodeChunk(const Model& model, const RowMatrix<float>& x, bool bf16) {
  typename Model::Workspace ws;
  ws.bf16_encoder = bf16;
  typename Model::Codes codes;
  model.encode(x, codes, ws);
  return codes;
}

// --precision of encode / eval: true for bf16; ConfigError when this build has no bf16 GEMM.
bool wantsBf16(const std::string& precision) {
  if (precision != "bf16") return false;
  if (!sae::kernels::bf16Available()) throw sae::ConfigError(sae::kernels::kBf16Unavailable);
  return true;
}

int cmdEncode(const std::string& sae_dir, const std::vector<std::string>& data,
              const std::string& out, bool dense, Index batch, bool bf16) {
  const auto loaded = sae::io::loadSae<float>(sae_dir);
  const sae::train::ActivationFiles files(data);
  checkWidth(loaded, files.cols(), sae_dir);
  const sae::ActivationNormalizer normalizer = loaded.normalizer();
  const Index N = files.rows(), d_sae = loaded.config.sae_cfg.d_sae;
  std::unique_ptr<sae::io::AtomicFileWriter> npy;
  if (dense) {
    if (!endsWith(out, ".npy")) throw sae::ConfigError(out + ": --dense writes a .npy file");
    npy = std::make_unique<sae::io::AtomicFileWriter>(out);
    const std::string pre = sae::io::detail::npyPreamble("<f4", {N, d_sae});
    npy->write(pre.data(), pre.size());
  } else if (!endsWith(out, ".safetensors")) {
    throw sae::ConfigError(out + ": sparse codes are written as .safetensors (or use --dense)");
  }
  RawTensor indices{"indices", "I32", {}, {}}, values{"values", "F32", {}, {}},
      offsets{"row_offsets", "I64", {N + 1}, {}};
  std::int64_t nnz = 0;
  appendBytes(offsets.bytes, nnz);
  Index k_cols = 0;
  bool topk_codes = false;
  RowMatrix<float> x;
  sae::NormalizationStats stats;
  for (Index b = 0; b < N; b += batch) {
    const Index n = std::min(batch, N - b);
    x.resize(n, files.cols());
    files.readRows<float>(b, b + n, x);
    normalizer.normalize(x, stats);
    std::visit(
        [&](const auto& model) {
          const auto codes = encodeChunk(model, x, bf16);
          if (dense) {
            const RowMatrix<float> d = codes.toDense();
            npy->writeElements(d.data(), d.size(), sae::io::DType::F32);
            return;
          }
          using Codes = std::decay_t<decltype(codes)>;
          if constexpr (std::is_same_v<Codes, sae::SparseCodes<float>>) {
            topk_codes = true;
            k_cols = codes.indices.cols();
            for (Index r = 0; r < n; ++r)
              for (Index j = 0; j < k_cols; ++j) {
                appendBytes(indices.bytes, codes.indices(r, j));
                appendBytes(values.bytes, codes.values(r, j));
              }
          } else {
            for (Index r = 0; r < n; ++r) {
              for (Index i = 0; i < d_sae; ++i) {
                const float v = codes.values(r, i);
                if (v != 0.0f) {
                  appendBytes(indices.bytes, std::int32_t(i));
                  appendBytes(values.bytes, v);
                  ++nnz;
                }
              }
              appendBytes(offsets.bytes, nnz);
            }
          }
        },
        loaded.model);
  }
  if (dense) {
    npy->commit();
  } else {
    std::map<std::string, std::string> meta = {{"d_sae", std::to_string(d_sae)},
                                               {"rows", std::to_string(N)},
                                               {"architecture", loaded.config.architecture}};
    std::vector<RawTensor> tensors;
    if (topk_codes) {
      meta["format"] = "topk";
      indices.shape = {N, k_cols};
      values.shape = {N, k_cols};
      tensors = {indices, values};
    } else {
      meta["format"] = "csr";
      indices.shape = {nnz};
      values.shape = {nnz};
      tensors = {indices, offsets, values};
    }
    writeRawSafetensors(out, tensors, meta);
  }
  std::fprintf(stderr, "%s encode: %lld rows -> %s\n", kProg, static_cast<long long>(N),
               out.c_str());
  return 0;
}

// `sae eval --features`: where to write the per-feature statistics and with what.
struct FeatureArgs {
  std::string out;                     // OUT.json; empty = no feature statistics
  Index top_n = 20;                    // top activations kept per feature
  std::vector<std::string> token_ids;  // integer .npy files, one id per activation row
};

// The token ids of --token-ids: the integer .npy files concatenated in order (each flattened in
// C order), cut to the first `rows` ids, as the FeatureStatistics::toJson TokenIds concept.
class TokenIdFiles {
 public:
  explicit TokenIdFiles(const std::vector<std::string>& paths) {
    for (const auto& p : paths) {
      m_files.push_back(std::make_unique<sae::io::NpyIntegerReader>(p));
      m_first.push_back(m_total);
      m_total += m_files.back()->size();
      m_names += (m_names.empty() ? "" : ", ") + p;
    }
    m_size = m_total;
  }
  Index total() const { return m_total; }
  const std::string& names() const { return m_names; }
  void limit(Index rows) { m_size = std::min(rows, m_total); }
  Index size() const { return m_size; }
  std::int64_t operator[](Index row) const {
    const auto at = std::upper_bound(m_first.begin(), m_first.end(), row) - m_first.begin() - 1;
    return (*m_files[std::size_t(at)])[row - m_first[std::size_t(at)]];
  }

 private:
  std::vector<std::unique_ptr<sae::io::NpyIntegerReader>> m_files;
  std::vector<Index> m_first;
  Index m_total = 0, m_size = 0;
  std::string m_names;
};

int cmdEval(const std::string& sae_dir, const std::vector<std::string>& data, Index batch,
            Index max_rows, const FeatureArgs& fa, bool bf16) {
  const auto loaded = sae::io::loadSae<float>(sae_dir);
  const sae::train::ActivationFiles files(data);
  checkWidth(loaded, files.cols(), sae_dir);
  const sae::ActivationNormalizer normalizer = loaded.normalizer();
  const Index d_sae = loaded.config.sae_cfg.d_sae;
  const Index N = max_rows > 0 ? std::min(max_rows, files.rows()) : files.rows();
  sae::eval::ReconstructionMetrics recon;
  sae::eval::FiringStats firing(d_sae);
  // Feature statistics: rows are read in file order (no shuffling), so row b of the pass is
  // row b of the concatenated --data files, and of the --token-ids files. Everything is checked
  // and the output file opened before the pass, so that a bad path fails at once.
  std::unique_ptr<sae::eval::FeatureStatistics> features;
  std::unique_ptr<TokenIdFiles> ids;
  std::unique_ptr<sae::io::AtomicFileWriter> features_out;
  if (!fa.out.empty()) {
    features = std::make_unique<sae::eval::FeatureStatistics>(d_sae, fa.top_n);
    if (!fa.token_ids.empty()) {
      ids = std::make_unique<TokenIdFiles>(fa.token_ids);
      if (ids->total() != files.rows() && ids->total() != N)
        throw sae::ConfigError(sae::detail::concat(
            ids->names(), ": ", ids->total(), " token ids, but the activation files have ",
            files.rows(), " rows",
            N != files.rows() ? sae::detail::concat(" (", N, " evaluated)") : "",
            "; give exactly one token id per activation row, in the same order"));
      ids->limit(N);
    }
    features_out = std::make_unique<sae::io::AtomicFileWriter>(fa.out);
  }
  RowMatrix<float> x, raw;
  sae::NormalizationStats stats;
  for (Index b = 0; b < N; b += batch) {
    const Index n = std::min(batch, N - b);
    raw.resize(n, files.cols());
    files.readRows<float>(b, b + n, raw);
    x = raw;
    normalizer.normalize(x, stats);
    std::visit(
        [&](const auto& model) {
          const auto codes = encodeChunk(model, x, bf16);
          RowMatrix<float> y = model.decode(codes);
          normalizer.denormalize(y, stats);
          recon.add<float>(raw, y);
          firing.add(codes);
          if (features) features->add(codes, b);
        },
        loaded.model);
  }
  const Eigen::VectorXd density = firing.density();
  // log10-density buckets: dead, then [-inf..-6), [-6,-5), ..., [-1, 0].
  std::vector<std::string> labels = {"dead",       "<1e-6",      "1e-6..1e-5", "1e-5..1e-4",
                                     "1e-4..1e-3", "1e-3..1e-2", "1e-2..1e-1", ">=1e-1"};
  std::vector<std::int64_t> counts(labels.size(), 0);
  for (Index i = 0; i < density.size(); ++i) {
    const double d = density[i];
    if (d <= 0) {
      ++counts[0];
      continue;
    }
    const double l = std::log10(d);
    const int bucket = l < -6 ? 1 : l >= -1 ? 7 : 2 + int(std::floor(l + 6));
    ++counts[std::size_t(std::min(bucket, 7))];
  }
  ojson hist = ojson::array();
  for (std::size_t i = 0; i < labels.size(); ++i)
    hist.push_back({{"bucket", labels[i]}, {"latents", counts[i]}});
  ojson out;
  out["sae"] = sae_dir;
  out["architecture"] = loaded.config.architecture;
  out["rows"] = recon.tokens();
  out["mse"] = recon.mse();
  out["explained_variance"] = recon.explainedVariance();
  out["fvu"] = recon.fvu();
  out["l0"] = firing.l0();
  out["dead_fraction"] = firing.deadFraction();
  out["density_histogram"] = hist;
  if (features) {
    ojson fj = ids ? features->toJson(*ids, ids->names()) : features->toJson();
    fj["summary"]["sae"] = sae_dir;
    fj["summary"]["data"] = data;
    if (ids) fj["summary"]["token_id_files"] = fa.token_ids;
    const std::string text = fj.dump() + "\n";
    features_out->write(text.data(), text.size());
    features_out->commit();
    std::fprintf(stderr, "%s eval: feature statistics of %lld rows x %lld features -> %s\n", kProg,
                 static_cast<long long>(N), static_cast<long long>(d_sae), fa.out.c_str());
  }
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

// ------------------------------------------------------------------------------ info

ojson tensorList(const sae::io::SafetensorsFile& f) {
  ojson tensors = ojson::array();
  for (const auto& name : f.names()) {
    const auto& t = f.info(name);
    tensors.push_back({{"name", name}, {"dtype", t.dtype}, {"shape", t.shape}});
  }
  return tensors;
}

ojson npyInfo(const unsigned char* data, std::uint64_t size, const std::string& where) {
  const auto h = sae::io::detail::parseNpyHeader(data, size, where);
  return {{"dtype", h.descr}, {"shape", h.shape}, {"fortran_order", h.fortran}};
}

std::uint32_t le32(const unsigned char* p) {
  return std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]) << 16 |
         std::uint32_t(p[3]) << 24;
}
std::uint16_t le16(const unsigned char* p) { return std::uint16_t(p[0] | p[1] << 8); }

// .npz: a zip of .npy members; stored (uncompressed) members have their header parsed.
ojson npzInfo(const std::string& path) {
  const sae::io::MappedFile f(path);
  const unsigned char* d = f.data();
  const std::uint64_t n = f.size();
  auto bad = [&](const std::string& what) {
    return sae::FormatError(path + ": not a valid .npz (zip) file: " + what);
  };
  if (n < 22) throw bad("too short");
  std::uint64_t eocd = n - 22;
  while (true) {
    if (le32(d + eocd) == 0x06054b50) break;
    if (eocd == 0 || n - eocd > 65557) throw bad("no end-of-central-directory record");
    --eocd;
  }
  const std::uint32_t entries = le16(d + eocd + 10);
  std::uint64_t p = le32(d + eocd + 16);
  ojson arrays = ojson::array();
  for (std::uint32_t i = 0; i < entries; ++i) {
    if (p + 46 > n || le32(d + p) != 0x02014b50) throw bad("bad central directory entry");
    const std::uint16_t method = le16(d + p + 10);
    const std::uint32_t csize = le32(d + p + 20);
    const std::uint16_t name_len = le16(d + p + 28), extra = le16(d + p + 30),
                        comment = le16(d + p + 32);
    const std::uint32_t local = le32(d + p + 42);
    if (p + 46 + name_len > n) throw bad("truncated central directory");
    std::string name(reinterpret_cast<const char*>(d + p + 46), name_len);
    ojson entry = {{"name", endsWith(name, ".npy") ? name.substr(0, name.size() - 4) : name}};
    if (method == 0 && local + 30 <= n && le32(d + local) == 0x04034b50) {
      const std::uint64_t start = local + 30 + le16(d + local + 26) + le16(d + local + 28);
      if (start + csize > n) throw bad("member '" + name + "' extends past the end");
      ojson info = npyInfo(d + start, csize, path + ":" + name);
      entry.update(info);
    } else {
      entry["compressed"] = true;
    }
    arrays.push_back(entry);
    p += 46 + name_len + extra + comment;
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

int cmdInfo(const std::string& path) {
  ojson out;
  if (isDir(path) || (endsWith(path, ".npz") && looksLikeGemmaScope(path))) {
    out = saeInfo(sae::io::describeSae(path));
  } else if (endsWith(path, ".npy")) {
    const sae::io::MappedFile f(path);
    out = {{"file", path}, {"format", "npy"}};
    out.update(npyInfo(f.data(), f.size(), path));
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

// ------------------------------------------------------------------------------ convert

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

int cmdConvert(const std::string& src, const std::string& dst, const std::string& to,
               const std::string& dtype_name, bool force) {
  namespace fs = std::filesystem;
  const auto loaded = sae::io::loadSae<double>(src);
  sae::io::DType dtype = sae::io::DType::F32;
  const std::string dtype_used = dtype_name.empty() ? loaded.storage_dtype : dtype_name;
  if (!sae::io::parseTorchDType(dtype_used, dtype)) dtype = sae::io::DType::F32;  // "mixed"
  Eigen::VectorXd log_sparsity;
  if (loaded.format == sae::io::SaeFormat::SaeLens && to == "saelens") {
    const sae::io::SaeDescription d = sae::io::describeSae(src);
    if (!d.sparsity_path.empty()) log_sparsity = sae::io::readSparsity(d.path);
  }
  std::error_code ec;
  const bool exists = fs::symlink_status(dst, ec).type() != fs::file_type::not_found;
  if (exists) {
    if (!force) throw sae::ConfigError(dst + ": already exists; pass --force to overwrite it");
    if (!isDir(dst)) throw sae::ConfigError(dst + ": exists and is not a directory");
    writeSae(loaded, dst, to, dtype, log_sparsity);
    // Files of the other format would leave two SAEs in the folder.
    const std::vector<std::string> stale =
        to == "sparsify"
            ? std::vector<std::string>{sae::io::kSaeWeightsFilename, sae::io::kSparsityFilename}
            : std::vector<std::string>{sae::io::kSparsifyWeightsFilename};
    for (const auto& name : stale) fs::remove(sae::io::detail::joinPath(dst, name), ec);
    if (to == "saelens" && log_sparsity.size() == 0)
      fs::remove(sae::io::detail::joinPath(dst, sae::io::kSparsityFilename), ec);
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

std::string oneLine(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sae: train, run and inspect sparse autoencoders (SAELens-compatible files)"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "help for every subcommand");

  // ---- train
  TrainArgs t;
  CLI::App* train = app.add_subcommand(
      "train",
      "Train an SAE. Without --data, on built-in synthetic superposition data. The final SAE is "
      "saved in SAELens's format in --out (cfg.json, sae_weights.safetensors, "
      "sparsity.safetensors); checkpoints go to --out/checkpoints.");
  train
      ->add_option("--config", t.config_file,
                   "JSON file of training settings (the fields of train_config.json); flags "
                   "override it")
      ->check(CLI::ExistingFile);
  train->add_option("--data", t.data,
                    "activation shards [tokens, d_in]: .npy, .npz, .safetensors files, "
                    "directories or glob patterns (streamed, shuffled)");
  train->add_option("--arch", t.arch, "architecture")
      ->check(CLI::IsMember(
          {"standard", "gated", "topk", "jumprelu", "batchtopk", "matryoshka_batchtopk"}));
  train
      ->add_option("--k", t.k,
                   "topk: latents per token; batchtopk, matryoshka_batchtopk: per token on "
                   "average over the batch (default 32)")
      ->check(CLI::PositiveNumber);
  auto* dsae =
      train->add_option("--d-sae", t.d_sae, "number of latents")->check(CLI::PositiveNumber);
  train->add_option("--expansion", t.expansion, "d_sae = expansion * d_in (default 8)")
      ->check(CLI::PositiveNumber)
      ->excludes(dsae);
  train->add_option("--batch", t.batch, "tokens per step (default 4096)")
      ->check(CLI::PositiveNumber);
  auto* steps = train->add_option("--steps", t.steps, "training steps (default 1000)")
                    ->check(CLI::PositiveNumber);
  train->add_option("--tokens", t.tokens, "training tokens (steps = tokens / batch)")
      ->check(CLI::PositiveNumber)
      ->excludes(steps);
  train->add_option("--lr", t.lr, "peak learning rate (default 3e-4)")->check(CLI::PositiveNumber);
  train->add_option("--l1", t.l1, "standard / gated: L1 coefficient (default 5)")
      ->check(CLI::NonNegativeNumber);
  train->add_option("--aux", t.aux, "topk, batchtopk, matryoshka: AuxK coefficient (default 1/32)")
      ->check(CLI::NonNegativeNumber);
  train
      ->add_option("--l0-coefficient", t.l0,
                   "jumprelu: L0 coefficient (default 1; warmed up by --l1-warmup)")
      ->check(CLI::NonNegativeNumber);
  train
      ->add_option("--jumprelu-bandwidth", t.jumprelu_bandwidth,
                   "jumprelu: width of the threshold's straight-through window (default 0.05)")
      ->check(CLI::PositiveNumber);
  train
      ->add_option("--jumprelu-mode", t.jumprelu_mode,
                   "jumprelu: L0 penalty, step (count of active latents, default) or tanh "
                   "(sum of tanh(scale * f * ||W_dec row||))")
      ->check(CLI::IsMember({"step", "tanh"}));
  train
      ->add_option("--jumprelu-tanh-scale", t.jumprelu_tanh_scale,
                   "jumprelu: scale inside tanh in tanh mode (default 4)")
      ->check(CLI::PositiveNumber);
  train->add_option("--jumprelu-init-threshold", t.jumprelu_init_threshold,
                    "jumprelu: initial threshold of every latent (default 0.01)");
  train
      ->add_option("--pre-act-loss-coefficient", t.pre_act,
                   "jumprelu: coefficient of the pre-activation loss pulling dead latents "
                   "towards their threshold (default 0: off)")
      ->check(CLI::NonNegativeNumber);
  train
      ->add_option("--topk-threshold-lr", t.topk_threshold_lr,
                   "batchtopk, matryoshka_batchtopk: rate of the moving average that becomes the "
                   "saved JumpReLU threshold (default 0.01)")
      ->check(CLI::Range(1e-12, 1.0));
  train
      ->add_option("--matryoshka-widths", t.matryoshka_widths,
                   "matryoshka_batchtopk: nested prefix widths, comma-separated, strictly "
                   "increasing, the last equal to d_sae (e.g. 256,1024,4096)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  train->add_option("--seed", t.seed, "random seed (default 0)");
  train->add_option("--threads", t.threads, "threads (0: all; same threads = same bits)")
      ->check(CLI::NonNegativeNumber);
  train
      ->add_option("--precision", t.precision,
                   "encoder GEMM of topk, batchtopk, matryoshka_batchtopk: fp32 (default) or "
                   "bf16 (mixed precision, needs oneDNN)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  train->add_option("--out", t.out, "run folder")->required();
  train->add_flag("--resume", t.resume, "continue the run in --out from its latest checkpoint");
  train->add_option("--lr-scheduler", t.lr_scheduler, "learning-rate shape after warm-up")
      ->check(CLI::IsMember({"constant", "cosine", "linear"}));
  train->add_option("--lr-warmup", t.lr_warmup, "learning-rate warm-up steps")
      ->check(CLI::NonNegativeNumber);
  train->add_option("--lr-decay", t.lr_decay, "final linear decay steps")
      ->check(CLI::NonNegativeNumber);
  train->add_option("--l1-warmup", t.l1_warmup, "sparsity-coefficient warm-up steps")
      ->check(CLI::NonNegativeNumber);
  train->add_option("--dead-window", t.dead_window, "steps without firing = dead (default 1000)")
      ->check(CLI::PositiveNumber);
  train->add_option("--b-dec-init", t.b_dec_init, "b_dec initialisation")
      ->check(CLI::IsMember({"zeros", "mean", "geometric_median"}));
  train
      ->add_option("--normalize", t.normalize,
                   "input normalisation (expected_average_only_in: train on s*x with "
                   "s = sqrt(d_in)/E||x||, folded back into the saved weights)")
      ->check(CLI::IsMember({"none", "expected_average_only_in"}));
  train->add_flag("--unit-norm-decoder", t.unit_norm,
                  "unit-norm decoder rows, gradient parallel to them removed (OpenAI recipe)");
  train->add_option("--holdout", t.holdout, "fraction of the data held out for evaluation")
      ->check(CLI::Range(0.0, 0.99));
  train->add_option("--tensor", t.tensor, "safetensors data: name of the activation tensor");
  train->add_option("--log-every", t.log_every, "steps between metrics lines (default 100)")
      ->check(CLI::PositiveNumber);
  train->add_option("--eval-every", t.eval_every, "steps between held-out evaluations")
      ->check(CLI::NonNegativeNumber);
  train->add_option("--checkpoint-every", t.checkpoint_every, "steps between checkpoints")
      ->check(CLI::NonNegativeNumber);
  train->add_option("--keep-checkpoints", t.keep, "checkpoints kept (default 3)")
      ->check(CLI::PositiveNumber);
  train->add_option("--synthetic-d-in", t.synth_d_in, "synthetic data: width (default 64)")
      ->check(CLI::PositiveNumber);
  train
      ->add_option("--synthetic-features", t.synth_features,
                   "synthetic data: true features (default 256)")
      ->check(CLI::PositiveNumber);
  train
      ->add_option("--synthetic-active", t.synth_active,
                   "synthetic data: mean features per token (default 5)")
      ->check(CLI::PositiveNumber);
  train->add_flag("--quiet", t.quiet, "no progress output");

  // ---- encode
  std::string enc_sae, enc_out;
  std::vector<std::string> enc_data;
  bool enc_dense = false;
  Index enc_batch = 4096;
  CLI::App* encode = app.add_subcommand(
      "encode",
      "Feature activations of activation files. Default output: safetensors with 'indices' and "
      "'values' ([N, k] for TopK; CSR with 'row_offsets' otherwise); --dense: a [N, d_sae] .npy");
  encode
      ->add_option("--sae", enc_sae,
                   "SAE: SAELens or sparsify folder, or Gemma Scope params.npz (see sae info)")
      ->required();
  encode->add_option("--data", enc_data, "activation files")->required()->check(CLI::ExistingFile);
  encode->add_option("--out", enc_out, "output file")->required();
  encode->add_flag("--dense", enc_dense, "write a dense [N, d_sae] float32 .npy");
  encode->add_option("--batch", enc_batch, "rows per chunk")->check(CLI::PositiveNumber);
  int enc_threads = 0;
  encode->add_option("--threads", enc_threads, "threads (0: all)")->check(CLI::NonNegativeNumber);
  std::string enc_precision = "fp32";
  encode
      ->add_option(
          "--precision", enc_precision,
          "fp32 (default) or bf16: the encoder product in bf16 with fp32 accumulation (oneDNN; AMX "
          "where the CPU has it)")
      ->check(CLI::IsMember({"fp32", "bf16"}));

  // ---- eval
  std::string ev_sae;
  std::vector<std::string> ev_data;
  Index ev_batch = 4096, ev_rows = 0;
  int ev_threads = 0;
  CLI::App* evalc = app.add_subcommand(
      "eval", "Reconstruction and sparsity metrics of an SAE on activation files, as JSON");
  evalc->add_option("--sae", ev_sae, "SAE folder or Gemma Scope params.npz")->required();
  evalc->add_option("--data", ev_data, "activation files")->required()->check(CLI::ExistingFile);
  evalc->add_option("--batch", ev_batch, "rows per chunk")->check(CLI::PositiveNumber);
  evalc->add_option("--max-rows", ev_rows, "use at most this many rows (0: all)")
      ->check(CLI::NonNegativeNumber);
  evalc->add_option("--threads", ev_threads, "threads (0: all)")->check(CLI::NonNegativeNumber);
  std::string ev_precision = "fp32";
  evalc
      ->add_option(
          "--precision", ev_precision,
          "fp32 (default) or bf16: the encoder product in bf16 with fp32 accumulation (oneDNN; AMX "
          "where the CPU has it)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  FeatureArgs ev_features;
  auto* ev_feat_opt =
      evalc->add_option("--features", ev_features.out,
                        "also write per-feature statistics (firing frequency, mean / max "
                        "activation, top rows, log10-density histogram) to this JSON file");
  evalc->add_option("--top-n", ev_features.top_n, "--features: top activations kept per feature")
      ->check(CLI::Range(Index(0), sae::eval::FeatureStatistics::kMaxTopN))
      ->needs(ev_feat_opt);
  evalc
      ->add_option("--token-ids", ev_features.token_ids,
                   "--features: integer .npy files with one token id per activation row, in "
                   "the order of --data")
      ->check(CLI::ExistingFile)
      ->needs(ev_feat_opt);

  // ---- info
  std::string info_path;
  CLI::App* info = app.add_subcommand(
      "info",
      "Shape, dtype and tensor names of a .npy / .npz / .safetensors file; for an SAE (SAELens "
      "or sparsify folder, Gemma Scope params.npz): format, architecture, shapes, dtype, "
      "normalisation and tensors");
  info->add_option("path", info_path, "file or SAE folder")->required();

  // ---- convert
  std::string conv_src, conv_dst, conv_to = "saelens", conv_dtype;
  bool conv_force = false;
  CLI::App* convert = app.add_subcommand(
      "convert",
      "Convert an SAE (SAELens, sparsify or Gemma Scope) into an SAELens folder, or a TopK SAE "
      "into a sparsify folder");
  convert->add_option("src", conv_src, "SAE folder or Gemma Scope params.npz")->required();
  convert->add_option("dst", conv_dst, "output folder")->required();
  convert->add_option("--to", conv_to, "output format (default saelens)")
      ->check(CLI::IsMember({"saelens", "sparsify"}));
  convert
      ->add_option("--dtype", conv_dtype,
                   "storage type of the weights (default: the source's, float32 if mixed)")
      ->check(CLI::IsMember({"float32", "float64", "float16", "bfloat16"}));
  convert->add_flag("--force", conv_force, "overwrite dst if it exists");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    const std::string where = app.get_subcommands().empty()
                                  ? std::string(kProg)
                                  : std::string(kProg) + " " + app.get_subcommands()[0]->get_name();
    std::fprintf(stderr, "%s: %s (see --help)\n", where.c_str(), oneLine(e.what()).c_str());
    return 2;
  }

  const std::string name = app.get_subcommands()[0]->get_name();
  try {
    if (name == "train") return cmdTrain(t, *train);
    if (name == "encode") {
      if (enc_threads > 0) sae::setThreads(enc_threads);
      return cmdEncode(enc_sae, enc_data, enc_out, enc_dense, enc_batch, wantsBf16(enc_precision));
    }
    if (name == "eval") {
      if (ev_threads > 0) sae::setThreads(ev_threads);
      return cmdEval(ev_sae, ev_data, ev_batch, ev_rows, ev_features, wantsBf16(ev_precision));
    }
    if (name == "convert") return cmdConvert(conv_src, conv_dst, conv_to, conv_dtype, conv_force);
    return cmdInfo(info_path);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s %s: %s\n", kProg, name.c_str(), oneLine(e.what()).c_str());
    return 1;
  }
}

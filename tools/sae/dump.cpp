// `sae dump`: a GPT-2 model's activations at one or more hook points, over text files or token
// ids, written as shards that `sae train --data` reads, with each row's token, position and
// source file.
//
// Layout of --out DIR:
//   dump.json                 what was dumped (written last: a folder without it is unfinished)
//   tokens.npy                int32 [rows]: the token at each row
//   positions.npy             int32 [rows]: its position in its window (0 is BOS with BOS on)
//   sources.npy               int32 [rows]: index of its input file in dump.json's "files"
//   <hook name>/shard-NNNNN.npy (float32 / float16) or .safetensors (bfloat16), [rows, width]
// Rows are in the same order in every file; a shard of every hook ends at the same row.
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <sae/io/npy.hpp>
#include <sae/io/safetensors.hpp>
#include <sae/lm/gpt2.hpp>
#include <sae/lm/tokenizer.hpp>

#include "common.hpp"
#include "lm_inputs.hpp"
#include "progress.hpp"

namespace sae_cli {

namespace {

namespace fs = std::filesystem;
using sae::lm::Gpt2Model;

constexpr const char* kAbout =
    "A GPT-2 model's activations at hook points (TransformerLens names) over text files or token "
    "ids, as shards `sae train --data` reads, with each row's token, position and source file";

struct DumpOptions {
  std::string model;
  std::vector<std::string> hooks;
  std::vector<std::string> text;
  std::string tokens;
  Index context = 0;
  bool prepend_bos = true;
  Index max_tokens = 0;
  Index shard_rows = 65536;
  Index batch = 8;
  std::string dtype = "float32";
  std::string precision = "fp32";
  int threads = 0;
  bool quiet = false;
  std::string out;
};

/// One input: a text file or the token file, and its token count (from the first pass).
struct Source {
  std::string path;
  Index tokens = 0;
};

/// The token ids of a source (a text file tokenised, or the 1-D integer .npy checked).
std::vector<std::int32_t> readIds(const Source& s, bool is_text, const sae::lm::Gpt2Tokenizer* tok,
                                  Index vocab) {
  return readTokenIds(s.path, is_text, tok, vocab);
}

/// Where the rows of one hook go: the current shard and the shards written so far.
class HookShards {
 public:
  HookShards(std::string dir, Index width, sae::io::DType dtype, Index shard_rows)
      : m_dir(std::move(dir)), m_width(width), m_dtype(dtype), m_shard_rows(shard_rows) {}

  /// Appends `rows` to the current shard (which has room for them).
  void append(const Eigen::Ref<const RowMatrix<float>>& rows) {
    if (m_dtype == sae::io::DType::BF16) {
      if (m_buffer.rows() != m_shard_rows) m_buffer.resize(m_shard_rows, m_width);
      m_buffer.middleRows(m_filled, rows.rows()) = rows;
    } else {
      if (!m_npy)
        m_npy = std::make_unique<sae::io::NpyStreamWriter>(path(".npy"), m_width, m_dtype);
      m_npy->append(rows);
    }
    m_filled += rows.rows();
  }

  /// Rows the current shard can still take.
  Index room() const { return m_shard_rows - m_filled; }

  /// Writes the current shard (if it has rows) into place.
  void finish() {
    if (m_filled == 0) return;
    if (m_dtype == sae::io::DType::BF16) {
      sae::io::SafetensorsWriter w;
      w.add("activations", m_buffer.topRows(m_filled), sae::io::DType::BF16);
      w.setMetadata("format", "sae-dump");
      const std::string p = path(".safetensors");
      w.write(p);
      m_files.push_back(fs::path(p).filename().string());
    } else {
      m_npy->commit();
      m_files.push_back(fs::path(path(".npy")).filename().string());
      m_npy.reset();
    }
    m_filled = 0;
  }

  const std::vector<std::string>& files() const { return m_files; }
  Index width() const { return m_width; }

 private:
  std::string path(const char* ext) const {
    char name[32];
    std::snprintf(name, sizeof name, "shard-%05zu", m_files.size());
    return m_dir + "/" + name + ext;
  }

  std::string m_dir;
  Index m_width;
  sae::io::DType m_dtype;
  Index m_shard_rows;
  Index m_filled = 0;
  std::unique_ptr<sae::io::NpyStreamWriter> m_npy;
  RowMatrix<float> m_buffer;
  std::vector<std::string> m_files;
};

/// A progress line on stderr: redrawn on a terminal, one line every 10 s otherwise.
class DumpProgress {
 public:
  DumpProgress(Index total, bool quiet) : m_total(total), m_quiet(quiet), m_tty(::isatty(2) != 0) {}

  void update(Index done, bool last = false) {
    if (m_quiet) return;
    const auto now = Clock::now();
    const double since = std::chrono::duration<double>(now - m_drawn).count();
    if (!last && since < (m_tty ? 0.25 : 10.0)) return;
    m_drawn = now;
    const double elapsed = std::chrono::duration<double>(now - m_start).count();
    const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
    const double left = rate > 0 ? static_cast<double>(m_total - done) / rate : -1.0;
    std::fprintf(
        stderr, "%s%s dump: %lld / %lld tokens (%.1f%%), %.0f tokens/s, %s %s%s", m_tty ? "\r" : "",
        kProg, static_cast<long long>(done), static_cast<long long>(m_total),
        m_total > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(m_total) : 100.0,
        rate, last ? "took" : "ETA", formatDuration(last ? elapsed : left).c_str(),
        m_tty ? (last ? "\n" : "  ") : "\n");
  }

 private:
  using Clock = std::chrono::steady_clock;
  Index m_total;
  bool m_quiet, m_tty;
  Clock::time_point m_start = Clock::now();
  Clock::time_point m_drawn = Clock::now() - std::chrono::hours(1);
};

int runDump(const DumpOptions& o, const CLI::App&) {
  if (o.text.empty() == o.tokens.empty())
    throw sae::ConfigError("give the input as --text FILE... or as --tokens ids.npy (one of them)");
  if (o.context < (o.prepend_bos ? 2 : 1))
    throw sae::ConfigError("--context must be at least " + std::to_string(o.prepend_bos ? 2 : 1) +
                           (o.prepend_bos ? " (BOS and one token)" : ""));
  if (o.shard_rows < 1) throw sae::ConfigError("--shard-rows must be at least 1");
  if (o.batch < 1) throw sae::ConfigError("--batch must be at least 1");
  if (o.max_tokens < 0) throw sae::ConfigError("--max-tokens must be >= 0 (0: all)");
  sae::io::DType dtype = sae::io::DType::F32;
  if (o.dtype == "float16") dtype = sae::io::DType::F16;
  if (o.dtype == "bfloat16") dtype = sae::io::DType::BF16;
  if (o.threads > 0) sae::setThreads(o.threads);

  // Everything that can be checked is checked before anything is written.
  if (fs::exists(o.out) && !(fs::is_directory(o.out) && fs::is_empty(o.out)))
    throw sae::IoError(o.out + ": the output folder exists and is not empty");
  sae::lm::Gpt2LoadOptions load;
  load.bf16 = o.precision == "bf16";
  Gpt2Model model = Gpt2Model::load(o.model, load);
  const sae::lm::Gpt2Config& cfg = model.config();
  if (o.context > cfg.n_positions)
    throw sae::ConfigError("--context " + std::to_string(o.context) +
                           " is longer than the model's n_positions " +
                           std::to_string(cfg.n_positions));
  std::vector<sae::lm::HookId> ids;
  for (const std::string& h : o.hooks) {
    ids.push_back(sae::lm::parseHookName(h, static_cast<int>(cfg.n_layer)));
    if (std::count(o.hooks.begin(), o.hooks.end(), h) > 1)
      throw sae::ConfigError("--hook " + h + " is given twice");
  }
  const bool is_text = !o.text.empty();
  std::unique_ptr<sae::lm::Gpt2Tokenizer> tok;
  if (is_text)
    tok = std::make_unique<sae::lm::Gpt2Tokenizer>(sae::lm::Gpt2Tokenizer::fromDirectory(o.model));
  // BOS: the tokenizer's <|endoftext|>, or config.json's bos_token_id for token input.
  const std::int64_t bos = tok ? tok->eotId() : cfg.bos_token_id;
  if (o.prepend_bos && (bos < 0 || bos >= cfg.vocab_size))
    throw sae::ConfigError(
        bos < 0 ? o.model + "/config.json has no bos_token_id: give --no-prepend-bos"
                : "the BOS id " + std::to_string(bos) + " is outside the model's vocabulary");

  // Count the tokens (and check every file: readable, valid UTF-8, ids in range).
  std::vector<Source> sources;
  for (const std::string& p : is_text ? o.text : std::vector<std::string>{o.tokens})
    sources.push_back({p, 0});
  const Index body = o.context - (o.prepend_bos ? 1 : 0);  // tokens of a window after BOS
  Index total = 0;
  for (Source& s : sources) {
    s.tokens = static_cast<Index>(readIds(s, is_text, tok.get(), cfg.vocab_size).size());
    total += s.tokens;
  }
  if (total == 0)
    throw sae::ConfigError("no tokens: every input file is empty (" +
                           std::to_string(sources.size()) + " files)");
  const Index goal = o.max_tokens > 0 ? std::min(o.max_tokens, total) : total;

  fs::create_directories(o.out);
  std::vector<std::unique_ptr<HookShards>> shards;
  for (std::size_t h = 0; h < ids.size(); ++h) {
    const std::string dir = o.out + "/" + o.hooks[h];
    fs::create_directories(dir);
    shards.push_back(std::make_unique<HookShards>(dir, sae::lm::hookWidth(ids[h], cfg.n_embd),
                                                  dtype, o.shard_rows));
  }
  sae::io::NpyInt32StreamWriter tokens_out(o.out + "/tokens.npy");
  sae::io::NpyInt32StreamWriter positions_out(o.out + "/positions.npy");
  sae::io::NpyInt32StreamWriter sources_out(o.out + "/sources.npy");

  // A batch of windows of one length; the rows kept of each are its tokens after BOS.
  sae::lm::TokenMatrix batch;
  std::vector<std::int32_t> row_source, row_position, row_token;
  std::vector<Index> keep_rows;  // rows of the forward's output that are dumped, in order
  Index done = 0;
  DumpProgress progress(goal, o.quiet);

  sae::lm::HookList hooks;
  for (std::size_t h = 0; h < ids.size(); ++h) {
    hooks.addReader(o.hooks[h], [&, h](const sae::lm::HookActivation& a) {
      // Rows are copied shard by shard; every hook's shards end at the same row.
      HookShards& out = *shards[h];
      std::size_t i = 0;
      while (i < keep_rows.size()) {
        // A run of consecutive rows that fits in the current shard.
        std::size_t j = i + 1;
        while (j < keep_rows.size() && keep_rows[j] == keep_rows[j - 1] + 1 &&
               static_cast<Index>(j - i) < out.room())
          ++j;
        out.append(a.value.middleRows(keep_rows[i], static_cast<Index>(j - i)));
        if (out.room() == 0) out.finish();
        i = j;
      }
    });
  }

  auto flush = [&](Index windows, Index len) {
    if (windows == 0) return;
    const Index rows = static_cast<Index>(keep_rows.size());
    model.forward(batch.data(), windows, len, hooks, nullptr);
    tokens_out.append(row_token.data(), rows);
    positions_out.append(row_position.data(), rows);
    sources_out.append(row_source.data(), rows);
    done += rows;
    keep_rows.clear();
    row_token.clear();
    row_position.clear();
    row_source.clear();
    progress.update(done);
  };

  // Windows of one length from any files go in one batch; a file's shorter last window waits
  // for others of its length or runs alone.
  std::vector<Index> file_rows(sources.size(), 0), file_windows(sources.size(), 0);
  Index pending = 0, pending_len = 0;
  auto queued = [&] { return done + static_cast<Index>(keep_rows.size()); };
  for (std::size_t f = 0; f < sources.size() && queued() < goal; ++f) {
    const std::vector<std::int32_t> ids_f = readIds(sources[f], is_text, tok.get(), cfg.vocab_size);
    const Index count = static_cast<Index>(ids_f.size());
    for (Index start = 0; start < count && queued() < goal; start += body) {
      const Index n = std::min(body, count - start);
      const Index want = std::min(n, goal - queued());
      const Index len = n + (o.prepend_bos ? 1 : 0);
      if (pending > 0 && (len != pending_len || pending == o.batch)) {
        flush(pending, pending_len);
        pending = 0;
      }
      if (batch.cols() != len || batch.rows() < o.batch) batch.resize(o.batch, len);
      Index c = 0;
      if (o.prepend_bos) batch(pending, c++) = static_cast<std::int32_t>(bos);
      for (Index t = 0; t < n; ++t)
        batch(pending, c++) = ids_f[static_cast<std::size_t>(start + t)];
      const Index offset = o.prepend_bos ? 1 : 0;
      for (Index t = 0; t < want; ++t) {
        keep_rows.push_back(pending * len + offset + t);
        row_token.push_back(ids_f[static_cast<std::size_t>(start + t)]);
        row_position.push_back(static_cast<std::int32_t>(offset + t));
        row_source.push_back(static_cast<std::int32_t>(f));
      }
      ++pending;
      pending_len = len;
      file_rows[f] += want;
      ++file_windows[f];
    }
  }
  flush(pending, pending_len);
  ojson files = ojson::array();
  for (std::size_t f = 0; f < sources.size(); ++f)
    files.push_back({{"path", sources[f].path},
                     {"tokens", sources[f].tokens},
                     {"windows", file_windows[f]},
                     {"rows", file_rows[f]}});
  for (auto& s : shards) s->finish();
  tokens_out.commit();
  positions_out.commit();
  sources_out.commit();
  progress.update(done, true);

  ojson meta;
  meta["format"] = "sae-dump";
  meta["version"] = 1;
  meta["model"] = o.model;
  meta["model_config"] = {{"n_embd", cfg.n_embd},         {"n_layer", cfg.n_layer},
                          {"n_head", cfg.n_head},         {"n_positions", cfg.n_positions},
                          {"vocab_size", cfg.vocab_size}, {"tl_processing", model.tlProcessing()}};
  meta["input"] = is_text ? "text" : "tokens";
  meta["context"] = o.context;
  meta["prepend_bos"] = o.prepend_bos;
  meta["bos_rows"] = false;
  meta["dtype"] = o.dtype;
  meta["precision"] = o.precision;
  meta["rows"] = done;
  ojson hook_list = ojson::array();
  for (std::size_t h = 0; h < ids.size(); ++h)
    hook_list.push_back({{"name", o.hooks[h]},
                         {"width", shards[h]->width()},
                         {"folder", o.hooks[h]},
                         {"shards", shards[h]->files()}});
  meta["hooks"] = hook_list;
  meta["files"] = files;
  meta["row_files"] = {
      {"tokens", "tokens.npy"}, {"positions", "positions.npy"}, {"sources", "sources.npy"}};
  sae::io::writeTextFile(o.out + "/dump.json", meta.dump(2) + "\n");

  ojson summary;
  summary["out"] = o.out;
  summary["rows"] = done;
  summary["hooks"] = o.hooks;
  summary["shards"] = shards.empty() ? 0 : shards.front()->files().size();
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

}  // namespace

Command registerDump(CLI::App& app) {
  auto [cmd, sub, o] = newCommand<DumpOptions>(app, "dump", kAbout, runDump);
  sub.add_option("--model", o.model,
                 "GPT-2 model folder (config.json, model.safetensors, vocab.json + merges.txt)")
      ->required()
      ->check(CLI::ExistingDirectory);
  sub.add_option("--hook", o.hooks,
                 "hook point, TransformerLens's name (blocks.L.hook_resid_pre, ...); repeat it "
                 "to dump several in one pass, a subfolder each")
      ->required();
  sub.add_option("--text", o.text, "UTF-8 text files, each cut into windows of its own")
      ->check(CLI::ExistingFile);
  sub.add_option("--tokens", o.tokens, "token ids instead of text: a 1-D integer .npy")
      ->check(CLI::ExistingFile);
  sub.add_option("--context", o.context,
                 "tokens per window, BOS included (at most the model's n_positions)")
      ->required();
  sub.add_flag("--prepend-bos,!--no-prepend-bos", o.prepend_bos,
               "start each window with <|endoftext|> (50256), as SAELens feeds GPT-2; its row is "
               "not dumped (default: on)");
  sub.add_option("--max-tokens", o.max_tokens, "stop after this many rows (0: all)");
  sub.add_option("--shard-rows", o.shard_rows, "rows per shard file")->capture_default_str();
  sub.add_option("--batch", o.batch, "windows per forward")->capture_default_str();
  sub.add_option("--dtype", o.dtype,
                 "stored activations: float32 / float16 (.npy) or bfloat16 (.safetensors)")
      ->check(CLI::IsMember({"float32", "float16", "bfloat16"}))
      ->capture_default_str();
  sub.add_option("--precision", o.precision, "the model's products: fp32, or bf16 (oneDNN)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  sub.add_option("--threads", o.threads, "threads (0: OpenMP's default)");
  sub.add_flag("--quiet", o.quiet, "no progress line");
  sub.add_option("--out", o.out, "output folder (new, or empty)")->required();
  return cmd;
}

}  // namespace sae_cli

// The benchmark suite: one table of training-step and encode throughput for every architecture,
// beside the PyTorch peer (benchmarks/peer/torch_sae_step.py) run on the same configurations.
//
//   bench_suite                       # full run (about 10-15 min on an idle 2-core machine)
//   bench_suite --quick               # smoke run, 1-2 min: small config + the big TopK rows
//   bench_suite --configs big --modes train --archs topk --threads 2 --json out.json
//
// What it does, in order:
//   1. Measures the fp32 GEMM peak at each thread count: the encoder's product M=4096, K=768,
//      N=24576 (row-major batch times column-major W_enc), the larger of Eigen's GEMM and
//      kernels::gemm (what the models call: oneDNN's fp32 matmul when built with it).
//   2. For each row (config x mode x architecture x threads): runs our model in a forked child
//      process (so the peak RSS is that configuration's own, and a crash or a timeout in one
//      row does not end the table), then the PyTorch peer for the same row via popen.
//   3. Prints one aligned table (and, with --json FILE, writes the same rows as JSON).
//
// Modes: `train` = a full step (backward() = forward + loss + gradients, clipGradNorm, Adam)
// from SAELens's initialisation; `sparse` = the same step for standard / gated with the encoder
// bias (b_enc / b_gate) set by bisection so the mean L0 is about --sparse-l0 (what a trained
// standard or gated SAE looks like); `encode` = inference, encode() alone; `encode-bf16` = the
// same with the encoder product in bf16 (oneDNN builds only; the peer row is torch's fp32).
//
// Useful FLOPs (DESIGN.md section 5, 2 FLOPs per multiply-add; B batch, d d_in, n d_sae):
// dense step (standard, gated) 12 B d n; TopK step 2 B d n + 8 B k d; sparse-state step
// 2 B d n + 8 B L0 d (L0 measured on the step); encode 2 B d n. %peak is GFLOP/s over the GEMM
// peak at the same thread count (measured in step 1 and, in a full run, again at the end: the
// larger); peer rows are scored with the same FLOPs.
//
// Exit status: 0, or 3 when one of our rows failed (the table is printed anyway), 1 on a bad
// option or an unwritable --json file. --no-fork runs the rows in this process, for a debugger.
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <sae/sae.hpp>

#ifndef SAE_PEER_SCRIPT_DEFAULT
#define SAE_PEER_SCRIPT_DEFAULT "benchmarks/peer/torch_sae_step.py"
#endif

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using sae::Index;

double secondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// ------------------------------------------------------------------------------- options, jobs

struct Shape {
  Index d_in = 0, d_sae = 0, batch = 0, k = 0;
  std::string label() const {
    return std::to_string(d_in) + "/" + std::to_string(d_sae) + "/" + std::to_string(batch) + "/" +
           std::to_string(k);
  }
  // A "big" configuration gets fewer steps by default.
  bool big() const { return double(batch) * double(d_in) * double(d_sae) > 1e10; }
};

struct Options {
  bool quick = false;
  std::vector<std::string> configs;
  std::vector<std::string> modes{"train", "sparse", "encode", "encode-bf16"};
  std::vector<std::string> archs{"topk", "standard", "gated"};
  std::vector<int> threads;
  int steps = 0;    // 0: defaults per row
  int warmup = -1;  // -1: defaults per row
  int peer_steps = 0;
  int peer_warmup = -1;
  int gemm_reps = 0;
  bool no_peer = false;
  std::string peer_script = SAE_PEER_SCRIPT_DEFAULT;
  std::string python = "/usr/bin/python3";
  std::string json_path;
  double sparse_l0 = 64;
  double sparse_lr = 1e-6;
  double lr = 4e-4;
  int timeout = 1800;
};

struct Job {
  std::string config;  // label
  Shape shape;
  std::string mode;  // train, sparse, encode
  std::string arch;  // topk, standard, gated
  int threads = 1;
  int warmup = 1, steps = 3;
};

Shape parseShape(const std::string& s) {
  if (s == "big") return {768, 24576, 4096, 32};
  if (s == "small") return {512, 4096, 1024, 32};
  Shape sh;
  long long v[4];
  char tail = 0;
  if (std::sscanf(s.c_str(), "%lld/%lld/%lld/%lld%c", &v[0], &v[1], &v[2], &v[3], &tail) != 4 ||
      v[0] <= 0 || v[1] <= 0 || v[2] <= 0 || v[3] <= 0 || v[3] > v[1])
    throw CLI::ValidationError("--configs",
                               "'" + s + "' is not big, small or d_in/d_sae/batch/k (k <= d_sae)");
  sh.d_in = Index(v[0]);
  sh.d_sae = Index(v[1]);
  sh.batch = Index(v[2]);
  sh.k = Index(v[3]);
  return sh;
}

// encode (fp32) and encode-bf16 (the encoder product in bf16 on oneDNN): inference rows.
bool isEncode(const std::string& mode) { return mode == "encode" || mode == "encode-bf16"; }

// Useful FLOPs of one step (or one encode call) per DESIGN.md section 5.
double usefulFlops(const Job& j, double l0) {
  const double B = double(j.shape.batch), d = double(j.shape.d_in), n = double(j.shape.d_sae);
  if (isEncode(j.mode)) return 2 * B * d * n;
  if (j.mode == "sparse") return 2 * B * d * n + 8 * B * l0 * d;
  if (j.arch == "topk") return 2 * B * d * n + 8 * B * double(j.shape.k) * d;
  return 12 * B * d * n;
}

// --------------------------------------------------------------------- child-process isolation

long readVmHWMKiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  return -1;
}

// Runs `work` in a forked child and returns its JSON, plus "peak_rss_mib" (the child's
// ru_maxrss from wait4) and "error" when it failed, crashed or timed out. The parent never
// starts an OpenMP region, so the child's OpenMP runtime starts fresh.
bool g_no_fork = false;  // --no-fork: run rows in this process (for a debugger or profiler)

json runInChild(const std::function<json()>& work, int timeout_s) {
  if (g_no_fork) {
    json out = work();
    out["peak_rss_mib"] = double(readVmHWMKiB()) / 1024.0;  // cumulative in this mode
    return out;
  }
  std::fflush(nullptr);
  int fd[2];
  if (pipe(fd) != 0) return {{"error", std::string("pipe: ") + std::strerror(errno)}};
  const pid_t pid = fork();
  if (pid < 0) {
    close(fd[0]);
    close(fd[1]);
    return {{"error", std::string("fork: ") + std::strerror(errno)}};
  }
  if (pid == 0) {
    close(fd[0]);
    if (timeout_s > 0) alarm(static_cast<unsigned>(timeout_s));
    json out;
    int rc = 0;
    try {
      out = work();
    } catch (const std::exception& e) {
      out = json{{"error", e.what()}};
      rc = 1;
    }
    out["vmhwm_mib"] = double(readVmHWMKiB()) / 1024.0;
    const std::string text = out.dump(-1, ' ', false, json::error_handler_t::replace);
    std::size_t done = 0;
    while (done < text.size()) {
      const ssize_t w = write(fd[1], text.data() + done, text.size() - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      done += static_cast<std::size_t>(w);
    }
    close(fd[1]);
    _exit(rc);
  }
  close(fd[1]);
  std::string text;
  char buf[4096];
  for (;;) {
    const ssize_t r = read(fd[0], buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    text.append(buf, static_cast<std::size_t>(r));
  }
  close(fd[0]);
  int status = 0;
  struct rusage ru {};
  while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
  }
  json res = json::parse(text, nullptr, false);
  if (res.is_discarded() || !res.is_object()) res = json::object();
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    res["error"] = sig == SIGALRM ? "timed out after " + std::to_string(timeout_s) + " s"
                                  : std::string("killed by signal ") + std::to_string(sig) + " (" +
                                        strsignal(sig) + ")";
  } else if (!res.contains("error") && WEXITSTATUS(status) != 0) {
    res["error"] = "exit status " + std::to_string(WEXITSTATUS(status));
  }
  res["peak_rss_mib"] = double(ru.ru_maxrss) / 1024.0;  // KiB on Linux
  return res;
}

// ------------------------------------------------------------------------- our measurements

void fillNormal(sae::RowMatrix<float>& m, std::uint64_t seed) {
  sae::Rng rng(seed);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = float(rng.normal());
}

json gemmChild(int threads, int reps) {
  sae::setThreads(threads);
  const Index M = 4096, K = 768, N = 24576;
  sae::RowMatrix<float> a(M, K);
  fillNormal(a, 1);
  std::vector<float> w_store(static_cast<std::size_t>(K * N));
  sae::Rng rng(2);
  for (float& v : w_store) v = float(rng.uniform(-0.05, 0.05));
  Eigen::Map<const sae::ColMatrix<float>> w(w_store.data(), K, N);  // as ParameterSet::colMajor
  sae::RowMatrix<float> c(M, N);
  auto time = [&](auto&& product) {
    std::vector<double> t;
    for (int r = 0; r < reps + 1; ++r) {
      const auto t0 = Clock::now();
      product();
      if (r > 0) t.push_back(secondsSince(t0));
    }
    return 2.0 * double(M) * double(K) * double(N) / median(t) * 1e-9;
  };
  // Eigen's own GEMM, and kernels::gemm (what the models call: oneDNN fp32 when built with it).
  const double eigen = time([&] { c.noalias() = a * w; });
  const double routed = time([&] { sae::kernels::gemm(c, a, w); });
  return {{"threads", sae::maxThreads()},
          {"gflops", std::max(eigen, routed)},
          {"gflops_eigen", eigen},
          {"gflops_models", routed},
          {"models_impl", sae::kernels::gemmImplementation(c, a, w)},
          {"reps", reps}};
}

sae::SaeConfig modelConfig(const Shape& s) {
  sae::SaeConfig cfg;
  cfg.d_in = s.d_in;
  cfg.d_sae = s.d_sae;
  cfg.k = s.k;
  cfg.rescale_acts_by_decoder_norm = true;  // the trainer's default for TopK
  cfg.l1_coefficient = 5.0;                 // the peer's default; the value does not change work
  return cfg;
}

// Sets the encoder bias `name` to the constant c for which the mean L0 of `sample` is about
// `target` (bisection; L0 falls as c falls). Returns c; *l0 gets the L0 reached.
template <typename Model>
double bisectBias(Model& model, const char* name, const sae::RowMatrix<float>& sample,
                  double target, double* l0) {
  auto bias = model.parameters().flat(name);
  typename Model::Codes codes;
  auto l0At = [&](double c) {
    bias.setConstant(float(c));
    model.encode(sample, codes);
    return codes.l0();
  };
  double hi = 0, lo = -0.05;
  for (int i = 0; i < 40 && l0At(lo) > target; ++i) {
    hi = lo;
    lo *= 2;
  }
  double c = lo;
  for (int i = 0; i < 30; ++i) {
    c = 0.5 * (lo + hi);
    const double v = l0At(c);
    if (std::abs(v - target) <= 0.01 * target) break;
    (v > target ? hi : lo) = c;
  }
  *l0 = l0At(c);
  return c;
}

template <typename Model>
json trainChild(const Job& j, const Options& o) {
  sae::setThreads(j.threads);
  Model model(modelConfig(j.shape), 1);
  sae::RowMatrix<float> xs[2] = {sae::RowMatrix<float>(j.shape.batch, j.shape.d_in),
                                 sae::RowMatrix<float>(j.shape.batch, j.shape.d_in)};
  fillNormal(xs[0], 11);
  fillNormal(xs[1], 12);
  json r;
  sae::AdamOptions adam_opts;
  adam_opts.lr = o.lr;
  if (j.mode == "sparse") {
    const char* bias = j.arch == "gated" ? "b_gate" : "b_enc";
    const sae::RowMatrix<float> sample = xs[0].topRows(std::min<Index>(j.shape.batch, 512));
    double l0 = 0;
    const auto t0 = Clock::now();
    r["bias"] = bisectBias(model, bias, sample, o.sparse_l0, &l0);
    r["bias_name"] = bias;
    r["l0_sample"] = l0;
    r["bisect_s"] = secondsSince(t0);
    // A tiny step keeps the state sparse over the timed steps (the work does not depend on it).
    adam_opts.lr = o.sparse_lr;
  }
  auto grads = model.makeGradients();
  sae::Adam<float> adam(model.parameters(), adam_opts);
  typename Model::Workspace ws;
  sae::LatentMask dead = sae::LatentMask::Zero(j.shape.d_sae);  // none dead: AuxK off
  sae::TrainOptions opts;
  opts.dead_mask = &dead;
  std::vector<double> t_step, t_bwd, t_clip, t_adam;
  for (int s = 0; s < j.warmup + j.steps; ++s) {
    const auto& x = xs[s % 2];
    const auto t0 = Clock::now();
    model.backward(x, grads, opts, ws);
    const auto t1 = Clock::now();
    const double clip = sae::clipCoefficient(grads, 1.0);
    const auto t2 = Clock::now();
    adam.step(model.parameters(), grads, adam.options().lr, clip);  // clipping folded in
    const auto t3 = Clock::now();
    if (s < j.warmup) continue;
    t_bwd.push_back(std::chrono::duration<double>(t1 - t0).count());
    t_clip.push_back(std::chrono::duration<double>(t2 - t1).count());
    t_adam.push_back(std::chrono::duration<double>(t3 - t2).count());
    t_step.push_back(std::chrono::duration<double>(t3 - t0).count());
  }
  r["l0"] = ws.codes.l0();
  // The forward pass alone (loss(): encode, decode, loss terms), once, to split the step.
  const auto t0 = Clock::now();
  model.loss(xs[0], opts, ws);
  const double fwd = secondsSince(t0);
  const double med = median(t_step);
  const double bwd_total = median(t_bwd);
  r["threads_used"] = sae::maxThreads();
  r["ms_per_step"] = med * 1e3;
  r["ms_min"] = *std::min_element(t_step.begin(), t_step.end()) * 1e3;
  r["ms_max"] = *std::max_element(t_step.begin(), t_step.end()) * 1e3;
  r["tokens_per_s"] = double(j.shape.batch) / med;
  r["phase_ms"] = {{"forward", fwd * 1e3},
                   {"backward", std::max(0.0, bwd_total - fwd) * 1e3},
                   {"clip", median(t_clip) * 1e3},
                   {"adam", median(t_adam) * 1e3}};
  return r;
}

template <typename Model>
json encodeChild(const Job& j) {
  sae::setThreads(j.threads);
  Model model(modelConfig(j.shape), 1);
  sae::RowMatrix<float> x(j.shape.batch, j.shape.d_in);
  fillNormal(x, 11);
  typename Model::Codes codes;
  typename Model::Workspace ws;  // kept across calls, as an inference engine would
  ws.bf16_encoder = j.mode == "encode-bf16";
  std::vector<double> t;
  for (int s = 0; s < j.warmup + j.steps; ++s) {
    const auto t0 = Clock::now();
    model.encode(x, codes, ws);
    if (s >= j.warmup) t.push_back(secondsSince(t0));
  }
  const double med = median(t);
  return {{"threads_used", sae::maxThreads()},
          {"ms_per_step", med * 1e3},
          {"ms_min", *std::min_element(t.begin(), t.end()) * 1e3},
          {"ms_max", *std::max_element(t.begin(), t.end()) * 1e3},
          {"tokens_per_s", double(j.shape.batch) / med},
          {"l0", codes.l0()}};
}

json oursChild(const Job& j, const Options& o) {
  if (isEncode(j.mode)) {
    if (j.arch == "topk") return encodeChild<sae::TopKSAE<float>>(j);
    if (j.arch == "gated") return encodeChild<sae::GatedSAE<float>>(j);
    return encodeChild<sae::StandardSAE<float>>(j);
  }
  if (j.arch == "topk") return trainChild<sae::TopKSAE<float>>(j, o);
  if (j.arch == "gated") return trainChild<sae::GatedSAE<float>>(j, o);
  return trainChild<sae::StandardSAE<float>>(j, o);
}

// ----------------------------------------------------------------------------------- the peer

std::string shellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// The peer script has no encode mode: this times SAELens's encode math (TopK: the GEMM and
// torch.topk, no dense scatter) under torch.no_grad(), with the script's thread setup.
const char* const kTorchEncode = R"PY(
import json, os, resource, statistics, sys, time
arch = sys.argv[1]
D, N, B, K, T, W, S = (int(v) for v in sys.argv[2:9])
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(T)
import torch
torch.set_num_threads(T)
g = torch.Generator().manual_seed(0)
W_dec = torch.rand(N, D, generator=g) * 2 - 1
W_dec /= W_dec.norm(dim=1, keepdim=True)
W_enc = W_dec.t().contiguous()
b_dec, b, b_mag, r_mag = torch.zeros(D), torch.zeros(N), torch.zeros(N), torch.zeros(N)
x = torch.randn(B, D)
def encode():
    sae_in = x - b_dec
    if arch == "standard":
        return torch.relu(sae_in @ W_enc + b)
    if arch == "topk":
        v, i = torch.topk(sae_in @ W_enc + b, K, dim=-1, sorted=False)
        return v.relu(), i
    active = ((sae_in @ W_enc + b) > 0).to(x.dtype)
    return active * torch.relu(sae_in @ (W_enc * r_mag.exp()) + b_mag)
times = []
with torch.no_grad():
    for s in range(W + S):
        t0 = time.perf_counter()
        out = encode()
        dt = time.perf_counter() - t0
        del out
        if s >= W:
            times.append(dt)
med = statistics.median(times)
print("RESULT " + json.dumps({"arch": arch, "threads": T, "steps": S, "ms_per_step_median": med * 1e3,
      "tokens_per_s": B / med, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
      "torch": torch.__version__, "num_threads": torch.get_num_threads()}), flush=True)
)PY";

// Runs a shell command, returns the JSON of its `RESULT {json}` line (or {"error": ...}).
json runResultCommand(const std::string& cmd) {
  std::fflush(nullptr);
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {{"error", std::string("popen: ") + std::strerror(errno)}};
  std::string line, last, result;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p)) {
    line += buf;
    if (line.empty() || line.back() != '\n') continue;
    line.pop_back();
    if (line.rfind("RESULT ", 0) == 0) result = line.substr(7);
    if (!line.empty()) last = line;
    line.clear();
  }
  const int status = pclose(p);
  json r = json::parse(result, nullptr, false);
  if (result.empty() || r.is_discarded() || !r.is_object()) {
    std::string why = WIFEXITED(status) && WEXITSTATUS(status) == 124
                          ? "timed out"
                          : "no RESULT line (status " + std::to_string(status) + ")";
    return {{"error", why + (last.empty() ? "" : ": " + last)}};
  }
  return r;
}

std::string timeoutPrefix(const Options& o) {
  if (o.timeout > 0 && access("/usr/bin/timeout", X_OK) == 0)
    return "/usr/bin/timeout -k 10 " + std::to_string(o.timeout) + " ";
  return "";
}

json runPeerTrain(const Options& o, const Job& j, const std::string& peer_arch, int warmup,
                  int steps) {
  std::ostringstream cmd;
  cmd << timeoutPrefix(o) << shellQuote(o.python) << " " << shellQuote(o.peer_script) << " --arch "
      << peer_arch << " --d-in " << j.shape.d_in << " --d-sae " << j.shape.d_sae << " --batch "
      << j.shape.batch << " --k " << j.shape.k << " --threads " << j.threads << " --warmup "
      << warmup << " --steps " << steps;
  // Our gated SAE trains W_dec and b_dec through the auxiliary term too (SAELens v6 main).
  if (peer_arch == "gated") cmd << " --gated-aux-nodetach";
  cmd << " 2>&1";
  return runResultCommand(cmd.str());
}

json runPeerEncode(const Options& o, const Job& j, int warmup, int steps) {
  std::ostringstream cmd;
  cmd << timeoutPrefix(o) << shellQuote(o.python) << " -c " << shellQuote(kTorchEncode) << " "
      << j.arch << " " << j.shape.d_in << " " << j.shape.d_sae << " " << j.shape.batch << " "
      << j.shape.k << " " << j.threads << " " << warmup << " " << steps << " 2>&1";
  return runResultCommand(cmd.str());
}

bool torchAvailable(const Options& o, std::string* why) {
  if (access(o.python.c_str(), X_OK) != 0) {
    *why = o.python + " not found";
    return false;
  }
  const std::string cmd = shellQuote(o.python) + " -c 'import torch' >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    *why = "python3-torch is not installed (apt-get install -y python3-torch)";
    return false;
  }
  if (access(o.peer_script.c_str(), R_OK) != 0) {
    *why = "peer script " + o.peer_script + " not found (--peer-script PATH)";
    return false;
  }
  return true;
}

// ------------------------------------------------------------------------------------ the table

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string thousands(double v) {
  const long long n = static_cast<long long>(v + 0.5);
  std::string s = std::to_string(n);
  for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<std::size_t>(i), ",");
  return s;
}

// Ours and peer rows are both "result rows": one line of the table each.
struct Row {
  Job job;
  std::string impl;       // "sae" or "torch <arch>"
  std::string peer_arch;  // empty for ours
  bool reused = false;    // peer figure of the dense run, shown again for a sparse row
  json res;
  double flops = 0;
  double gflops = 0, pct = 0, scale = 0, ratio = 0;
};

double num(const json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : 0.0;
}

std::string str(const json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}

std::string loadAvg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

std::string cpuModel() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

void printTable(const std::vector<Row>& rows) {
  const std::vector<std::string> head{"config",   "mode",    "arch",    "thr",     "impl",
                                      "tokens/s", "ms/step", "GFLOP/s", "%peak",   "RSS MiB",
                                      "L0",       "f/b/o %", "1->2t",   "sae/peer"};
  std::vector<std::vector<std::string>> cells;
  std::string last_key;
  for (const Row& r : rows) {
    const std::string key = r.job.config + r.job.mode + r.job.arch + std::to_string(r.job.threads);
    const bool first = key != last_key;
    last_key = key;
    std::vector<std::string> c(head.size());
    if (first) {
      c[0] = r.job.config;
      c[1] = r.job.mode == "sparse" ? "sparse" : r.job.mode;
      c[2] = r.job.arch;
      c[3] = std::to_string(r.job.threads);
    }
    c[4] = r.impl + (r.reused ? (r.job.mode == "sparse" ? " (dense run)" : " (fp32 run)") : "");
    if (r.res.contains("error")) {
      c[5] = "FAILED: " + r.res["error"].get<std::string>();
      cells.push_back(c);
      continue;
    }
    c[5] = thousands(num(r.res, "tokens_per_s"));
    c[6] = fmt("%.1f", num(r.res, "ms_per_step"));
    c[7] = fmt("%.1f", r.gflops);
    c[8] = r.pct > 0 ? fmt("%.0f%%", r.pct) : "";
    c[9] = thousands(num(r.res, "peak_rss_mib"));
    c[10] = r.res.contains("l0") ? fmt("%.1f", num(r.res, "l0")) : "";
    if (r.res.contains("phase_ms")) {
      const json& p = r.res["phase_ms"];
      const double f = num(p, "forward"), b = num(p, "backward"),
                   o = num(p, "clip") + num(p, "adam") + num(p, "renorm");
      const double t = f + b + o;
      if (t > 0)
        c[11] = fmt("%.0f", 100 * f / t) + "/" + fmt("%.0f", 100 * b / t) + "/" +
                fmt("%.0f", 100 * o / t);
    }
    c[12] = r.scale > 0 ? fmt("%.2fx", r.scale) : "";
    c[13] = r.ratio > 0 ? fmt("%.2fx", r.ratio) : "";
    cells.push_back(c);
  }
  std::vector<std::size_t> w(head.size());
  for (std::size_t i = 0; i < head.size(); ++i) w[i] = head[i].size();
  for (const auto& c : cells)
    for (std::size_t i = 0; i < c.size(); ++i)
      if (!(i == 5 && c[i].rfind("FAILED", 0) == 0)) w[i] = std::max(w[i], c[i].size());
  // Text columns left-aligned, numbers right-aligned.
  auto left = [](std::size_t i) { return i <= 2 || i == 4; };
  auto line = [&](const std::vector<std::string>& c) {
    std::string s;
    for (std::size_t i = 0; i < c.size(); ++i) {
      if (i == 5 && c[i].rfind("FAILED", 0) == 0) {
        s += "  " + c[i];
        break;
      }
      const std::size_t pad = w[i] - std::min(w[i], c[i].size());
      s += i ? "  " : "";
      s += left(i) ? c[i] + std::string(pad, ' ') : std::string(pad, ' ') + c[i];
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    std::printf("%s\n", s.c_str());
  };
  line(head);
  std::size_t total = 0;
  for (std::size_t x : w) total += x + 2;
  std::printf("%s\n", std::string(total - 2, '-').c_str());
  for (const auto& c : cells) line(c);
}

json rowJson(const Row& r) {
  json j = r.res;
  j["config"] = r.job.config;
  j["d_in"] = r.job.shape.d_in;
  j["d_sae"] = r.job.shape.d_sae;
  j["batch"] = r.job.shape.batch;
  j["k"] = r.job.shape.k;
  j["mode"] = r.job.mode;
  j["arch"] = r.job.arch;
  j["threads"] = r.job.threads;
  j["impl"] = r.peer_arch.empty() ? "sae" : "torch";
  if (!r.peer_arch.empty()) j["peer_arch"] = r.peer_arch;
  if (r.reused) j["peer_reused_dense_run"] = true;
  j["useful_gflop_per_step"] = r.flops * 1e-9;
  j["useful_gflops"] = r.gflops;
  j["percent_of_gemm_peak"] = r.pct;
  if (r.scale > 0) j["speedup_1_to_2_threads"] = r.scale;
  if (r.ratio > 0) j["sae_over_peer"] = r.ratio;
  j["warmup"] = r.job.warmup;
  j["timed_steps"] = r.job.steps;
  return j;
}

// ------------------------------------------------------------------------------------- main

int run(Options o) {
  if (o.configs.empty())
    o.configs = o.quick ? std::vector<std::string>{"small", "big"}
                        : std::vector<std::string>{"big", "small"};
  if (o.threads.empty()) o.threads = o.quick ? std::vector<int>{2} : std::vector<int>{1, 2};
  std::sort(o.threads.begin(), o.threads.end());
  o.threads.erase(std::unique(o.threads.begin(), o.threads.end()), o.threads.end());
  const int gemm_reps = o.gemm_reps > 0 ? o.gemm_reps : (o.quick ? 2 : 3);

  // Jobs, in table order. --quick keeps the big config to TopK (train and encode).
  std::vector<Job> jobs;
  for (const std::string& name : o.configs) {
    const Shape sh = parseShape(name);
    for (const std::string& mode :
         std::vector<std::string>{"train", "sparse", "encode", "encode-bf16"}) {
      if (std::find(o.modes.begin(), o.modes.end(), mode) == o.modes.end()) continue;
      if (mode == "encode-bf16" && !sae::kernels::bf16Available()) continue;
      for (const std::string& arch : o.archs) {
        if (mode == "sparse" && arch == "topk") continue;  // TopK is sparse anyway
        if (o.quick && sh.big() && arch != "topk") continue;
        for (int t : o.threads) {
          Job j;
          j.config = sh.label();
          j.shape = sh;
          j.mode = mode;
          j.arch = arch;
          j.threads = t;
          const bool enc = isEncode(j.mode);
          if (o.quick) {
            j.warmup = 1;
            j.steps = sh.big() ? 2 : (enc ? 5 : 3);
          } else if (sh.big()) {
            j.warmup = 1;
            j.steps = enc || arch == "topk" ? 5 : 3;
          } else {
            j.warmup = 2;
            j.steps = enc ? 20 : 10;
          }
          if (o.steps > 0) j.steps = o.steps;
          if (o.warmup >= 0) j.warmup = o.warmup;
          jobs.push_back(j);
        }
      }
    }
  }

  std::string no_peer_why = "--no-peer";
  const bool peer = !o.no_peer && torchAvailable(o, &no_peer_why);
  const std::string load_start = loadAvg();
  const auto t_start = Clock::now();
  std::fprintf(stderr, "bench_suite: %zu rows, threads", jobs.size());
  for (int t : o.threads) std::fprintf(stderr, " %d", t);
  std::fprintf(stderr, "; peer: %s\n", peer ? o.peer_script.c_str() : no_peer_why.c_str());

  // 1. GEMM peak per thread count (again at the end of a full run: the larger is the peak).
  std::map<int, json> gemm;
  auto measureGemm = [&](const char* when) {
    for (int t : o.threads) {
      std::fprintf(stderr, "[gemm, %s] M=4096 K=768 N=24576, %d thread(s)... ", when, t);
      json g = runInChild([&] { return gemmChild(t, gemm_reps); }, o.timeout);
      std::fprintf(stderr, "%.1f GFLOP/s\n", num(g, "gflops"));
      gemm[t][when] = g;
      gemm[t]["gflops"] = std::max(num(gemm[t], "gflops"), num(g, "gflops"));
    }
  };
  measureGemm("start");

  // 2. Rows: ours, then the peer(s) of the same row (interleaved).
  std::vector<Row> rows;
  std::map<std::string, json> peer_cache;  // dense peer runs, reused by the sparse rows
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    const Job& j = jobs[i];
    std::fprintf(stderr, "[%zu/%zu] %s %s %s %dt: sae ... ", i + 1, jobs.size(), j.config.c_str(),
                 j.mode.c_str(), j.arch.c_str(), j.threads);
    Row ours;
    ours.job = j;
    ours.impl = "sae";
    ours.res = runInChild([&] { return oursChild(j, o); }, o.timeout);
    if (ours.res.contains("error"))
      std::fprintf(stderr, "FAILED (%s)", ours.res["error"].get<std::string>().c_str());
    else
      std::fprintf(stderr, "%.1f ms", num(ours.res, "ms_per_step"));
    rows.push_back(ours);
    if (peer) {
      std::vector<std::string> peer_archs;
      if (isEncode(j.mode))
        peer_archs = {"encode"};  // the fp32 peer for bf16 rows too: what a user runs today
      else if (j.arch == "topk")
        // --quick keeps only the stronger (sparsify) peer at the big config.
        peer_archs = o.quick && j.shape.big() ? std::vector<std::string>{"topk_sparse"}
                                              : std::vector<std::string>{"topk", "topk_sparse"};
      else
        peer_archs = {j.arch};
      for (const std::string& pa : peer_archs) {
        // The peer is slower: fewer steps by default (--steps / --warmup apply to both).
        int pw = o.quick || j.shape.big() ? 1 : 2;
        int ps =
            o.quick ? (j.shape.big() ? 1 : 3) : (j.shape.big() ? (isEncode(j.mode) ? 5 : 2) : 5);
        if (o.warmup >= 0) pw = o.warmup;
        if (o.steps > 0) ps = o.steps;
        if (o.peer_warmup >= 0) pw = o.peer_warmup;
        if (o.peer_steps > 0) ps = o.peer_steps;
        Row pr;
        pr.job = j;
        pr.job.warmup = pw;
        pr.job.steps = ps;
        pr.peer_arch = pa;
        pr.impl = pa == "encode" ? "torch encode*" : "torch " + pa;
        const std::string key =
            j.config + "|" + pa + "|" + j.arch + "|" + std::to_string(j.threads);
        if ((j.mode == "sparse" || j.mode == "encode-bf16") && peer_cache.count(key)) {
          pr.res = peer_cache[key];
          pr.reused = true;
        } else {
          std::fprintf(stderr, ", %s ... ", pr.impl.c_str());
          pr.res = pa == "encode" ? runPeerEncode(o, j, pw, ps) : runPeerTrain(o, j, pa, pw, ps);
          if (pr.res.contains("ms_per_step_median")) {
            pr.res["ms_per_step"] = pr.res["ms_per_step_median"];
            // tokens/s from the median step, as for ours (the script's own figure is the mean).
            pr.res["tokens_per_s_script"] = num(pr.res, "tokens_per_s");
            pr.res["tokens_per_s"] = double(j.shape.batch) / (num(pr.res, "ms_per_step") * 1e-3);
          }
          if (pr.res.contains("peak_rss_mb")) pr.res["peak_rss_mib"] = pr.res["peak_rss_mb"];
          if (pr.res.contains("phase_ms_median")) {
            const json& p = pr.res["phase_ms_median"];
            pr.res["phase_ms"] = {{"forward", num(p, "fwd+loss")},
                                  {"backward", num(p, "backward")},
                                  {"adam", num(p, "adam+zero_grad")},
                                  {"renorm", num(p, "renorm")}};
          }
          if (pr.res.contains("error"))
            std::fprintf(stderr, "FAILED (%s)", pr.res["error"].get<std::string>().c_str());
          else
            std::fprintf(stderr, "%.1f ms", num(pr.res, "ms_per_step"));
          if (j.mode == "train" || j.mode == "encode") peer_cache[key] = pr.res;
        }
        rows.push_back(pr);
      }
    }
    std::fprintf(stderr, "\n");
  }

  if (!o.quick) measureGemm("end");

  // Derived columns: useful GFLOP/s, %peak, 1 -> 2 thread scaling, ratio to ours.
  for (Row& r : rows) {
    if (r.res.contains("error")) continue;
    // Peer rows are scored with our row's FLOPs (same L0 for the sparse state).
    double l0 = num(r.res, "l0");
    if (!r.peer_arch.empty())
      for (const Row& o2 : rows)
        if (o2.peer_arch.empty() && o2.job.config == r.job.config && o2.job.mode == r.job.mode &&
            o2.job.arch == r.job.arch && o2.job.threads == r.job.threads)
          l0 = num(o2.res, "l0");
    r.flops = usefulFlops(r.job, l0);
    const double ms = num(r.res, "ms_per_step");
    if (ms > 0) r.gflops = r.flops / (ms * 1e-3) * 1e-9;
    const double peak = gemm.count(r.job.threads) ? num(gemm[r.job.threads], "gflops") : 0;
    if (peak > 0) r.pct = 100 * r.gflops / peak;
  }
  for (Row& r : rows) {
    if (r.res.contains("error")) continue;
    for (const Row& q : rows) {
      if (q.res.contains("error") || q.job.config != r.job.config || q.job.mode != r.job.mode ||
          q.job.arch != r.job.arch || q.peer_arch != r.peer_arch)
        continue;
      if (r.job.threads > 1 && q.job.threads == 1)
        r.scale = num(r.res, "tokens_per_s") / num(q.res, "tokens_per_s");
    }
    if (!r.peer_arch.empty()) {
      for (const Row& q : rows)
        if (q.peer_arch.empty() && !q.res.contains("error") && q.job.config == r.job.config &&
            q.job.mode == r.job.mode && q.job.arch == r.job.arch && q.job.threads == r.job.threads)
          r.ratio = num(q.res, "tokens_per_s") / num(r.res, "tokens_per_s");
    }
  }

  // 3. The table.
  const double wall = secondsSince(t_start);
  std::printf("sae benchmark suite: %s, %d cores online; load average %s at start, %s at end\n",
              cpuModel().c_str(), int(sysconf(_SC_NPROCESSORS_ONLN)), load_start.c_str(),
              loadAvg().c_str());
  std::printf(
      "fp32 GEMM peak (M=4096 K=768 N=24576, median of %d%s; the larger of Eigen and the models' "
      "kernels::gemm, %s), GFLOP/s:",
      gemm_reps, o.quick ? "" : ", at start / end",
      gemm.empty() ? "" : str(gemm.begin()->second["start"], "models_impl").c_str());
  for (auto& [t, g] : gemm) {
    std::printf("  %d thread%s %.1f", t, t > 1 ? "s" : "", num(g["start"], "gflops"));
    if (g.contains("end")) std::printf(" / %.1f", num(g["end"], "gflops"));
    std::printf(" (Eigen %.1f)", num(g["start"], "gflops_eigen"));
  }
  std::printf("\n\n");
  printTable(rows);
  std::printf(
      "\nconfig = d_in/d_sae/batch/k. tokens/s = batch / median step time. GFLOP/s = useful FLOPs"
      " (DESIGN.md s.5,\n2 per multiply-add: dense 12Bdn, TopK 2Bdn+8Bkd, sparse state "
      "2Bdn+8B*L0*d,"
      " encode 2Bdn) / median step; %%peak of\nthe (larger) GEMM peak above at the same thread "
      "count."
      " RSS = peak RSS of the process running that row (torch: includes\nthe interpreter and"
      " torch). f/b/o = forward / backward / optimizer share of the step (sae: clip + Adam;"
      " torch: Adam +\nrenorm). 1->2t = tokens/s at 2 threads over 1. sae/peer = our tokens/s over"
      " the torch row's (> 1: sae faster).\n");
  std::printf(
      "train: full step from SAELens initialisation (L0 of standard/gated is then dense). sparse:"
      " b_enc (standard) / b_gate\n(gated) bisected so L0 ~ %.0f, Adam lr %.0e to keep it there;"
      " torch's time does not depend on sparsity, its dense run\nis the peer. torch gated runs"
      " with --gated-aux-nodetach (W_dec trained through the aux term, as ours). encode-bf16:"
      " encode() with\nthe encoder product in bf16 (oneDNN, AMX where present), against the"
      " same fp32 torch row; %%peak still of the fp32 peak.\n",
      o.sparse_l0, o.sparse_lr);
  if (peer)
    std::printf(
        "* torch encode: inline snippet (the peer script has no encode mode): SAELens encode math"
        " under torch.no_grad(),\n  TopK = GEMM + torch.topk (no dense scatter), gated = its two"
        " GEMMs.\n");
  else
    std::printf("peer not run: %s\n", no_peer_why.c_str());
  std::printf(
      "wall time %.0f s; shared machine: compare ratios within one run, not absolute"
      " numbers across runs.\n",
      wall);

  if (!o.json_path.empty()) {
    json out;
    out["machine"] = {{"cpu", cpuModel()},
                      {"cores_online", sysconf(_SC_NPROCESSORS_ONLN)},
                      {"loadavg_start", load_start},
                      {"loadavg_end", loadAvg()}};
    out["gemm_peak"] = json::array();
    for (auto& [t, g] : gemm) {
      json g2 = g;
      g2["threads"] = t;
      g2["gflops_peak_used"] = g2["gflops"];
      g2.erase("gflops");
      g2["m"] = 4096;
      g2["k"] = 768;
      g2["n"] = 24576;
      out["gemm_peak"].push_back(g2);
    }
    out["peer"] = peer ? json(o.peer_script) : json(nullptr);
    if (!peer) out["peer_missing_reason"] = no_peer_why;
    out["sparse_l0_target"] = o.sparse_l0;
    out["wall_s"] = wall;
    out["rows"] = json::array();
    for (const Row& r : rows) out["rows"].push_back(rowJson(r));
    std::ofstream f(o.json_path);
    f << out.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "bench_suite: cannot write %s\n", o.json_path.c_str());
      return 1;
    }
    std::fprintf(stderr, "bench_suite: wrote %s\n", o.json_path.c_str());
  }
  bool failed = false;
  for (const Row& r : rows) failed = failed || (r.peer_arch.empty() && r.res.contains("error"));
  return failed ? 3 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "SAE benchmark suite: training-step and encode throughput of every architecture, with "
      "the PyTorch peer side by side, as one table."};
  app.add_flag("--quick", o.quick,
               "smoke run (1-2 min): threads 2, small config, big config TopK only, few steps");
  app.add_option("--configs", o.configs,
                 "big (768/24576/4096/32), small (512/4096/1024/32) or d_in/d_sae/batch/k; "
                 "default: big,small")
      ->delimiter(',');
  app.add_option("--modes", o.modes, "train, sparse, encode, encode-bf16")
      ->delimiter(',')
      ->check(CLI::IsMember({"train", "sparse", "encode", "encode-bf16"}))
      ->capture_default_str();
  app.add_option("--archs", o.archs, "topk, standard, gated")
      ->delimiter(',')
      ->check(CLI::IsMember({"topk", "standard", "gated"}))
      ->capture_default_str();
  app.add_option("--threads", o.threads, "thread counts; default 1,2 (--quick: 2)")
      ->delimiter(',')
      ->check(CLI::Range(1, 1024));
  app.add_option("--steps", o.steps,
                 "timed steps per row, ours and the peer's (default: ours 3-5 big, 10-20 small)")
      ->check(CLI::PositiveNumber);
  app.add_option("--warmup", o.warmup, "untimed steps first (default 1 big, 2 small)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--peer-steps", o.peer_steps, "timed steps of the peer (default 2 big, 5 small)")
      ->check(CLI::PositiveNumber);
  app.add_option("--peer-warmup", o.peer_warmup, "peer warm-up steps (default 1 big, 2 small)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--gemm-reps", o.gemm_reps, "timed GEMMs per thread count (default 3)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--no-peer", o.no_peer, "do not run the PyTorch peer");
  app.add_option("--peer-script", o.peer_script, "the peer, torch_sae_step.py")
      ->capture_default_str();
  app.add_option("--python", o.python, "interpreter with torch")->capture_default_str();
  app.add_option("--json", o.json_path, "also write the table as JSON to FILE");
  app.add_option("--sparse-l0", o.sparse_l0, "target mean L0 of the sparse-state rows")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--timeout", o.timeout, "seconds per row before it is killed (0: none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--no-fork", g_no_fork,
               "run every row in this process (for a debugger or profiler; RSS is cumulative)");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_suite: %s\n", e.what());
    return 1;
  }
}

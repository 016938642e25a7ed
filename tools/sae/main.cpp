// The `sae` command-line program: train, encode, eval, info, convert, tokenize.
//
//   sae train --out DIR                         # TopK SAE on built-in synthetic data
//   sae train --data acts.npy --arch topk --k 32 --expansion 8 --steps 2000 --out DIR
//   sae train --data acts.npy --arch jumprelu --l0-coefficient 2 --jumprelu-mode tanh --out DIR
//   sae train --data acts.npy --arch matryoshka_batchtopk --matryoshka-widths 256,1024,4096
//             --k 32 --d-sae 4096 --out DIR       # saved as jumprelu
//   sae train ... --out DIR --resume            # continue an interrupted run (same flags, or
//                                               # none; a larger --steps extends a finished run)
//   mpirun -np 2 sae train ... --out DIR        # data parallel over MPI (built with sae::mpi)
//   sae encode --sae DIR --data acts.npy --out codes.safetensors [--dense]
//   sae eval --sae DIR --data acts.npy [--features stats.json [--top-n 20] [--token-ids ids.npy]]
//   sae report RUN [--out FILE]                  # HTML run report (curves, densities, config)
//   sae info PATH                               # .npy / .npz / .safetensors / SAE folder
//   sae convert SRC DST [--to saelens|sparsify] [--dtype float32|float64|float16|bfloat16]
//   sae tokenize --model DIR --text FILE... [--prepend-bos] --out ids.npy   # GPT-2 token ids
//   sae generate --model DIR --prompt TEXT [--sae RUN (--steer F:C | --clamp F=V | --ablate F)...]
//   sae attribute --sae RUN --model DIR --prompt TEXT [--target TOKEN | --target-id ID]
//
// SAEs are read from SAELens folders, sparsify folders and Gemma Scope params.npz files
// (sae::io::loadSae); convert writes SAELens or (TopK only) sparsify folders.
//
// Exit status: 0 on success; 1 for a bad input or failure, with a one-line message on stderr;
// 2 for a command line that does not parse; 130 / 143 when training was stopped by SIGINT /
// SIGTERM (after writing a checkpoint).
//
// Each subcommand lives in its own file (train.cpp, encode.cpp, eval.cpp, info.cpp,
// convert.cpp, report.cpp, dashboard.cpp, tokenize.cpp, dump.cpp,
// generate.cpp, attribute.cpp): an options struct and a register function returning its
// Command. tokenize, dump, generate and attribute need the language-model part (sae::lm, CMake
// option SAE_LM).
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "common.hpp"

int main(int argc, char** argv) {
  using namespace sae_cli;
  CLI::App app{"sae: train, run and inspect sparse autoencoders (SAELens-compatible files)"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "help for every subcommand");
  std::vector<Command> commands = {registerTrain(app),    registerEncode(app),  registerEval(app),
                                   registerInfo(app),     registerConvert(app), registerReport(app),
                                   registerDashboard(app)};
#if SAE_CLI_HAS_LM
  commands.push_back(registerTokenize(app));
  commands.push_back(registerDump(app));
  commands.push_back(registerGenerate(app));
  commands.push_back(registerAttribute(app));
#endif
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
  const CLI::App* chosen = app.get_subcommands()[0];
  try {
    for (const Command& c : commands)
      if (c.app == chosen) return c.run();
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s %s: %s\n", kProg, chosen->get_name().c_str(),
                 oneLine(e.what()).c_str());
    return 1;
  }
}

/// @file sae.hpp
/// @brief Umbrella header: everything a user of the library needs.
#pragma once

#include <sae/core/config.hpp>
#include <sae/core/error.hpp>
#include <sae/core/parameters.hpp>
#include <sae/core/rng.hpp>
#include <sae/core/types.hpp>
#include <sae/eval/density_window.hpp>
#include <sae/eval/feature_stats.hpp>
#include <sae/eval/metrics.hpp>
#include <sae/eval/synthetic.hpp>
#include <sae/io/activation_stream.hpp>
#include <sae/io/npz.hpp>
#include <sae/io/sae_formats.hpp>
#include <sae/kernels/sparse.hpp>
#include <sae/kernels/topk.hpp>
#include <sae/models/batchtopk.hpp>
#include <sae/models/codes.hpp>
#include <sae/models/config.hpp>
#include <sae/models/gated.hpp>
#include <sae/models/jumprelu.hpp>
#include <sae/models/loss_terms.hpp>
#include <sae/models/matryoshka.hpp>
#include <sae/models/normalization.hpp>
#include <sae/models/sparse_autoencoder.hpp>
#include <sae/models/standard.hpp>
#include <sae/models/topk.hpp>
#include <sae/optim/adam.hpp>
#include <sae/optim/clip.hpp>
#include <sae/optim/schedule.hpp>
#include <sae/runtime/codes.hpp>
#include <sae/runtime/sae.hpp>
#include <sae/steer/steering.hpp>
#include <sae/train/callbacks.hpp>
#include <sae/train/dead_latents.hpp>
#include <sae/train/step.hpp>

#!/usr/bin/env bash
# Makes sure the Debian packages that building and testing sae needs are installed.
#
# Sourced by demo.sh and test.sh; can also be run on its own (./scripts/deps.sh). When a package
# is missing it installs it if running as root, and otherwise prints the apt-get line to run and
# exits 1. On a system without dpkg it only warns: CMake then reports what it cannot find.
set -euo pipefail

# The compiler (build-essential, or at least g++) comes first; then the build tools and libraries.
# libpcre2-dev and pkgconf are for sae::lm (include/sae/lm/), found through pkg-config.
SAE_DEB_PACKAGES=(cmake libeigen3-dev nlohmann-json3-dev catch2 libcli11-dev libdnnl-dev
  libpcre2-dev pkgconf)

sae_deb_installed() {
  # shellcheck disable=SC2016  # ${db:Status-Status} is a dpkg-query field, not a shell expansion
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

sae_check_deps() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "deps.sh: no dpkg-query, not a Debian system: make sure a C++17 compiler, CMake >= 3.16," \
      "Eigen 3.4, nlohmann/json 3, Catch2 2.13, CLI11 and PCRE2 (for sae::lm) are installed" >&2
    return 0
  fi
  local missing=() pkg
  if ! sae_deb_installed build-essential && ! sae_deb_installed g++; then
    missing+=(build-essential)
  fi
  for pkg in "${SAE_DEB_PACKAGES[@]}"; do
    sae_deb_installed "$pkg" || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  echo "deps.sh: missing Debian packages: ${missing[*]}" >&2
  if [[ "$(id -u)" -eq 0 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update && apt-get install -y "${missing[@]}"
  else
    echo "Install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

sae_check_deps
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  echo "deps.sh: all build dependencies are installed"
fi

#!/usr/bin/env bash
# Install the Debian packages that lstm-lm needs to build, test and benchmark.
# Usage: scripts/install_deps.sh [--with-python]
#   --with-python  also installs python3-matplotlib, python3-numpy and
#                  python3-torch, used by the plotting, interop and
#                  PyTorch comparison scripts (never by the trainer).
set -euo pipefail

packages=(
  build-essential cmake ninja-build git pkg-config
  libeigen3-dev libcli11-dev libspdlog-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libopenblas-dev libopenblas0-openmp
  clang libclang-rt-dev
)
if [[ "${1:-}" == "--with-python" ]]; then
  packages+=(python3 python3-matplotlib python3-numpy python3-torch)
fi

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"

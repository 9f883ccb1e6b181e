#!/usr/bin/env bash
# Build Horovod 0.28.1 against the installed torch, once, and install it into the given venv.
#
#   scripts/build_horovod.sh .venv/bin/python
#
# Why a build script: Horovod's last release does not compile against PyTorch >= 2.1 as shipped
# (its CMake files ask for C++14, PyTorch's headers need C++17: horovod/horovod#3996, fixed only on
# its unreleased master), and CMake 4 rejects the Gloo it bundles. So this script takes the
# release's source from PyPI, raises the two CMAKE_CXX_STANDARD lines from 14 to 17, and builds a
# wheel with the system CMake 3.x: PyTorch + Gloo (CPU collectives), no MPI, TensorFlow or MXNet.
# The [spark] extra is not installed: its petastorm pins pyarrow < 11 and breaks under numpy 2,
# and horovod.spark.run does not need it.
#
# The wheel is cached (by Horovod version, torch version, machine and GPU operations) under
# ${LAKEHOUSE_WHEEL_CACHE:-~/.cache/lakehouse/wheels}, so only the first install compiles (~15 min
# on 2 cores). GPU machines: export HOROVOD_GPU_OPERATIONS=NCCL (and HOROVOD_NCCL_HOME, or
# HOROVOD_NCCL_INCLUDE/HOROVOD_NCCL_LIB, where NCCL is not in the CUDA toolkit) before `make install`.
set -euo pipefail

PY=${1:?usage: scripts/build_horovod.sh PATH/TO/VENV/bin/python}
VERSION=0.28.1
GPU_OPS=${HOROVOD_GPU_OPERATIONS:-none}

fail() {
  echo "error: Horovod $VERSION: $*" >&2
  exit 1
}

torch_version=$("$PY" -c 'import torch; print(torch.__version__)') || fail "torch is not installed in $PY's environment"
if "$PY" - "$VERSION" "$torch_version" <<'EOF' 2>/dev/null; then
import sys, horovod, horovod.torch, torch
sys.exit(0 if horovod.__version__ == sys.argv[1] and torch.__version__ == sys.argv[2] else 1)
EOF
  echo "Horovod $VERSION for torch $torch_version: already installed"
  exit 0
fi

cache_root=${LAKEHOUSE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lakehouse/wheels}
wheel_dir="$cache_root/horovod-$VERSION-torch-${torch_version}-$(uname -m)-gpu-${GPU_OPS,,}"
wheel=$(ls "$wheel_dir"/horovod-*.whl 2>/dev/null | head -n 1 || true)

if [ -z "$wheel" ]; then
  command -v cmake >/dev/null || fail "cmake 3.13-3.x is needed to build it (apt-get install cmake)"
  command -v g++ >/dev/null || fail "a C++17 compiler is needed to build it (apt-get install g++)"
  cmake_version=$(cmake --version | head -n 1 | awk '{print $3}')
  case "$cmake_version" in
    3.1[3-9]*|3.[2-9][0-9]*) ;;
    *) fail "needs CMake 3.13-3.x to build (its bundled Gloo is rejected by CMake 4); found cmake $cmake_version.
       Install CMake 3.x (e.g. 'pip install \"cmake<4\"' into another environment) and put it first on PATH." ;;
  esac

  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "Building Horovod $VERSION for torch $torch_version (GPU operations: $GPU_OPS); this takes a while, once"
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "horovod==$VERSION" -d "$work" \
    || fail "could not download its source from PyPI"
  tar -xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
  src="$work/horovod-$VERSION"
  for file in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
    grep -q 'set(CMAKE_CXX_STANDARD 14)' "$file" || fail "unexpected source: no C++14 setting in ${file#$src/}"
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$file"
  done

  export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1
  export HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
  export MAKEFLAGS="-j$(nproc)"
  log="$work/build.log"
  if ! "$PY" -m pip wheel --no-build-isolation --no-deps -w "$work/wheel" "$src" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    fail "the build failed (the last 40 lines of its log are above)"
  fi
  mkdir -p "$wheel_dir"
  cp "$work"/wheel/horovod-*.whl "$wheel_dir/"
  wheel=$(ls "$wheel_dir"/horovod-*.whl | head -n 1)
  echo "Built $(basename "$wheel") into $wheel_dir"
fi

# Its runtime dependencies are small and unpinned by Horovod; the [spark] extra is left out on purpose.
"$PY" -m pip install --quiet "$wheel" || fail "could not install $wheel"
"$PY" -c 'import horovod.torch as hvd; assert hvd.gloo_built(), "built without Gloo"' \
  || fail "the installed wheel does not load (see above)"
echo "Horovod $VERSION installed (torch $torch_version, Gloo)"

#!/usr/bin/env bash
# Builds llama.cpp's llama-perplexity (b10587, CPU backend only) from the source tarball in
# ../shared/peers, outside the repository, so tests/llama_cpp.rs can check that GGUF files
# wick writes load in llama.cpp and give the same perplexity. llama.cpp is third-party code:
# it is extracted and built in a scratch folder, never copied into the project.
#
#   bash scripts/build-llama-cpu.sh [OUT_DIR]
#
# Tarball: $WICK_LLAMA_TARBALL, else $WICK_SHARED/peers/..., else ../shared/peers/... beside the
# checkout. OUT_DIR defaults to ${WICK_CACHE_DIR:-$HOME/.cache/wick}/llama.cpp-cpu; the binary
# lands in OUT_DIR/bin/llama-perplexity and its path is printed last. A stamp of the tarball's
# sha256 makes a rerun with the same tarball a no-op. Installs cmake with apt-get when missing.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

tarball="${WICK_LLAMA_TARBALL:-}"
if [ -z "$tarball" ]; then
  shared="${WICK_SHARED:-$repo/../shared}"
  tarball="$shared/peers/llama.cpp-b10587-src.tar.xz"
fi
if [ ! -f "$tarball" ]; then
  echo "build-llama-cpu: no llama.cpp source tarball at $tarball (set WICK_LLAMA_TARBALL or WICK_SHARED)" >&2
  exit 1
fi

out="${1:-${WICK_CACHE_DIR:-$HOME/.cache/wick}/llama.cpp-cpu}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
case "$out/" in
  "$repo"/*) echo "build-llama-cpu: $out is inside the repository; build llama.cpp outside it" >&2; exit 1 ;;
esac

bin="$out/bin/llama-perplexity"
stamp="$out/tarball.sha256"
sum="$(sha256sum "$tarball" | cut -d' ' -f1)"
if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then
  echo "$bin"
  exit 0
fi

if ! command -v cmake >/dev/null 2>&1; then
  echo "build-llama-cpu: installing cmake" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq cmake >/dev/null
fi

src="$out/src"
rm -rf "$src" "$out/build" "$stamp"
mkdir -p "$src"
tar -xJf "$tarball" -C "$src"
# The tarball carries only the tools the peers need; configure llama-perplexity alone.
printf 'find_package(Threads REQUIRED)\nllama_add_compile_flags()\nadd_subdirectory(perplexity)\n' \
  > "$src/llama.cpp/tools/CMakeLists.txt"

# GGML_NATIVE=OFF: a cached binary must run on whichever x86-64 machine CI lands on next.
start=$(date +%s)
cmake -S "$src/llama.cpp" -B "$out/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_NATIVE=OFF -DGGML_CCACHE=OFF \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_CURL=OFF >"$out/build.log" 2>&1 \
  || { tail -n 40 "$out/build.log" >&2; exit 1; }
cmake --build "$out/build" --target llama-perplexity -j "$(nproc)" >>"$out/build.log" 2>&1 \
  || { tail -n 40 "$out/build.log" >&2; exit 1; }
mkdir -p "$out/bin"
cp "$out/build/bin/llama-perplexity" "$bin"
rm -rf "$src"
echo "$sum" >"$stamp"
echo "build-llama-cpu: built in $(( $(date +%s) - start )) s" >&2
echo "$bin"

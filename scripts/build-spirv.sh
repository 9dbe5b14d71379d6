#!/usr/bin/env bash
# Compiles every native Vulkan kernel (vulkan_overrides/<family>.comp, GLSL 4.50) to the
# SPIR-V wick embeds (vulkan_overrides/<family>.spv). Run after editing a .comp and commit
# both; tests/native.rs fails when a committed .spv differs from what glslc produces.
# The flags here and in tests/native.rs must agree.
set -euo pipefail
cd "$(dirname "$0")/.."
for src in vulkan_overrides/*.comp; do
  glslc -fshader-stage=compute --target-env=vulkan1.0 -O "$src" -o "${src%.comp}.spv"
  echo "built ${src%.comp}.spv"
done

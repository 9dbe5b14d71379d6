#!/usr/bin/env bash
# Compiles every native Vulkan kernel (vulkan_overrides/<family>.comp, GLSL) to the SPIR-V
# wick embeds. Run after editing a .comp and commit both; tests/native.rs fails when a
# committed .spv differs from what glslc produces.
#
# A source may declare, in lines of its own:
#   // wick-glslc: <flags>            extra glslc flags for every module of the file
#                                     (default target: --target-env=vulkan1.0)
#   // wick-spirv: <name> <flags>     one module vulkan_overrides/<family>.<name>.spv built
#                                     with these extra flags (typically -DNAME defines)
# Without wick-spirv lines the file builds one module, <family>.spv.
# tests/native.rs parses the same lines; keep the two in step.
set -euo pipefail
cd "$(dirname "$0")/.."
for src in vulkan_overrides/*.comp; do
  family="${src%.comp}"
  common="$(sed -n 's|^// wick-glslc:[[:space:]]*||p' "$src")"
  case "$common" in *--target-env=*) ;; *) common="--target-env=vulkan1.0 $common" ;; esac
  variants="$(sed -n 's|^// wick-spirv:[[:space:]]*||p' "$src")"
  if [ -z "$variants" ]; then
    # shellcheck disable=SC2086
    glslc -fshader-stage=compute $common -O "$src" -o "$family.spv"
    echo "built $family.spv"
    continue
  fi
  while read -r name flags; do
    # shellcheck disable=SC2086
    glslc -fshader-stage=compute $common $flags -O "$src" -o "$family.$name.spv"
    echo "built $family.$name.spv"
  done <<< "$variants"
done

#!/bin/sh
# deps.sh — make sure the Debian packages alloy builds against are installed.
# Checks for each header first, so a machine that has them does nothing; a
# missing one is installed with apt-get (through sudo when not root).
set -e
need=""
[ -f /usr/include/yaml.h ]    || need="$need libyaml-dev"
[ -f /usr/include/jansson.h ] || need="$need libjansson-dev"
[ -f /usr/include/x86_64-linux-gnu/cblas.h ] || [ -f /usr/include/cblas.h ] || \
  [ -f /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] || [ -f /usr/include/aarch64-linux-gnu/cblas.h ] || \
  need="$need libopenblas-dev"
command -v cc >/dev/null 2>&1 || need="$need gcc"
[ -z "$need" ] && exit 0
echo "deps: installing$need" >&2
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends $need >/dev/null 2>&1 || {
  $SUDO apt-get update >/dev/null 2>&1
  $SUDO apt-get install -y --no-install-recommends $need
}

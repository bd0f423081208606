#!/bin/sh
# deps.sh — find (and if needed install) the libraries alloy builds against,
# then write BUILD/config.mk with the flags the Makefile uses.
#
#   sh scripts/deps.sh [BUILD]        (the Makefile runs it; CC may be set)
#
# A dependency counts as present only when a small program that calls it
# compiles without warnings *and links*: a header alone proves nothing (the
# reference BLAS ships a cblas.h but no OpenBLAS). Each library is tried
# through pkg-config first, then with the plain Debian flags. What fails is
# installed from Debian with apt-get (through sudo when not root) and tried
# again. OpenBLAS is preferred for `alloy eval`; when it cannot be installed
# (no root, no network) the reference CBLAS is used instead, with a warning:
# results are the same, eval is slower. LAPACK (the SVD of `alloy lora
# extract`) is taken from OpenBLAS when it carries the LAPACK symbols (Debian's
# libopenblas does), else from the reference liblapack (liblapack-dev).
set -e
BUILD=${1:-build}
CC=${CC:-cc}
mkdir -p "$BUILD"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# link_ok SOURCE FLAGS...: 0 when SOURCE compiles (implicit declarations are errors) and links.
link_ok() {
  src=$1; shift
  printf '%s\n' "$src" > "$TMP/t.c"
  $CC -std=c11 -Werror=implicit-function-declaration "$TMP/t.c" -o "$TMP/t" "$@" >/dev/null 2>&1
}

YAML_SRC='#include <yaml.h>
int main(void) { yaml_parser_t p; if (!yaml_parser_initialize(&p)) return 1; yaml_parser_delete(&p); return 0; }'
JANSSON_SRC='#include <jansson.h>
int main(void) { json_t *j = json_object(); json_decref(j); return 0; }'
OPENBLAS_SRC='#include <cblas.h>
int main(void) { float a = 1, b = 1, c = 0; openblas_set_num_threads(1);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, 1, 1, 1.0f, &a, 1, &b, 1, 0.0f, &c, 1); return c != 1; }'
CBLAS_SRC='#include <cblas.h>
int main(void) { float a = 1, b = 1, c = 0;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, 1, 1, 1.0f, &a, 1, &b, 1, 0.0f, &c, 1); return c != 1; }'

LAPACK_SRC='void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s, float *u,
  const int *ldu, float *vt, const int *ldvt, float *work, const int *lwork, int *iwork, int *info);
int main(void) { float a = 2, s = 0, u = 0, vt = 0, w[64]; int one = 1, lw = 64, iw[8], info = 0;
  sgesdd_("S", &one, &one, &a, &one, &s, &u, &one, &vt, &one, w, &lw, iw, &info); return info != 0 || s != 2; }'

pc() { pkg-config "$@" 2>/dev/null; }

# Each find_* sets its *_CFLAGS/*_LIBS and returns 0 when the library links.
find_yaml() {
  YAML_CFLAGS=$(pc --cflags yaml-0.1) || YAML_CFLAGS=""
  YAML_LIBS=$(pc --libs yaml-0.1) || YAML_LIBS="-lyaml"
  link_ok "$YAML_SRC" $YAML_CFLAGS $YAML_LIBS
}
find_jansson() {
  JANSSON_CFLAGS=$(pc --cflags jansson) || JANSSON_CFLAGS=""
  JANSSON_LIBS=$(pc --libs jansson) || JANSSON_LIBS="-ljansson"
  link_ok "$JANSSON_SRC" $JANSSON_CFLAGS $JANSSON_LIBS
}
find_openblas() {
  BLAS_DEF="-DALLOY_HAVE_OPENBLAS"
  for inc in "$(pc --cflags openblas)" "-I/usr/include/x86_64-linux-gnu/openblas-pthread" \
             "-I/usr/include/aarch64-linux-gnu/openblas-pthread"; do
    BLAS_CFLAGS=$inc
    BLAS_LIBS=$(pc --libs openblas) || BLAS_LIBS="-lopenblas"
    link_ok "$OPENBLAS_SRC" $BLAS_CFLAGS $BLAS_LIBS -lm && return 0
  done
  return 1
}
find_cblas() { # the reference CBLAS (Debian's libblas3 carries the cblas_* symbols)
  BLAS_DEF=""
  BLAS_CFLAGS=$(pc --cflags cblas) || BLAS_CFLAGS=""
  for libs in "$(pc --libs cblas)" "-lcblas" "-lblas"; do
    BLAS_LIBS=$libs
    [ -n "$libs" ] && link_ok "$CBLAS_SRC" $BLAS_CFLAGS $BLAS_LIBS -lm && return 0
  done
  return 1
}

find_lapack() { # after find_openblas / find_cblas: empty when BLAS_LIBS already carries sgesdd_
  for libs in "" "$(pc --libs lapack)" "-llapack"; do
    LAPACK_LIBS=$libs
    link_ok "$LAPACK_SRC" $LAPACK_LIBS $BLAS_LIBS -lm && return 0
  done
  return 1
}

need=""
command -v "$CC" >/dev/null 2>&1 || need="$need gcc"
command -v pkg-config >/dev/null 2>&1 || need="$need pkgconf"
find_yaml || need="$need libyaml-dev"
find_jansson || need="$need libjansson-dev"
find_openblas || need="$need libopenblas-dev"
{ find_openblas || find_cblas; } && find_lapack || need="$need liblapack-dev"

if [ -n "$need" ]; then
  echo "deps: installing$need" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends $need >/dev/null 2>&1 || {
    $SUDO apt-get update >/dev/null 2>&1 || true
    $SUDO apt-get install -y --no-install-recommends $need >&2 || echo "deps: apt-get failed for$need" >&2
  }
fi

fail=""
find_yaml || fail="$fail libyaml-dev"
find_jansson || fail="$fail libjansson-dev"
if ! find_openblas; then
  if find_cblas; then
    echo "deps: warning: OpenBLAS does not link; using the reference CBLAS ($BLAS_LIBS): alloy eval is slower" >&2
  else
    fail="$fail libopenblas-dev"
  fi
fi
find_lapack || fail="$fail liblapack-dev"
if [ -n "$fail" ]; then
  echo "deps: error: cannot compile and link against:$fail (install them: apt-get install$fail)" >&2
  exit 1
fi

cat > "$BUILD/config.mk" <<EOF
# Written by scripts/deps.sh: flags of the libraries that compiled and linked on this machine.
DEP_CFLAGS = $YAML_CFLAGS $JANSSON_CFLAGS $BLAS_CFLAGS $BLAS_DEF
DEP_LIBS = $YAML_LIBS $JANSSON_LIBS $LAPACK_LIBS $BLAS_LIBS
EOF
sed 's/  */ /g' "$BUILD/config.mk" > "$TMP/c" && cat "$TMP/c" > "$BUILD/config.mk"

# alloy — build, test and tooling. Plain GNU make, C11, POSIX threads.
#
#   make            build build/alloy (CLI) and build/liballoy.a (installs missing Debian deps first)
#   make demo       build, then merge and evaluate the bundled tiny models
#   make check      build and run the whole test suite (prints "N passed, M failed")
#   make asan       run the test suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make tsan       run the test suite under ThreadSanitizer
#   make fuzz       build the libFuzzer targets (clang) and run each for FUZZ_SECONDS
#   make bench      run the throughput / memory benchmark (bench/README.md)
#   make install    install alloy and the mergekit-yaml alias into $(PREFIX)/bin

PREFIX  ?= /usr/local
BUILD   ?= build
CC      ?= cc
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
WARN     = -Wall -Wextra -Wshadow -Wno-unused-parameter -Wno-missing-field-initializers
ARCH    := $(shell uname -m)
ifeq ($(ARCH),x86_64)
  ARCHDEF = -DALLOY_HAVE_AVX2
endif
# WERROR=1 (CI) turns every warning into an error.
ifeq ($(WERROR),1)
  WARN += -Werror
endif
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(ARCHDEF) $(WARN) -Iinclude -Isrc $(DEP_CFLAGS) $(CFLAGS) $(EXTRA_CFLAGS)
LIBS    = $(DEP_LIBS) -lpthread -lm

LIB_SRC  := $(shell find src -name '*.c' | sort)
CLI_SRC  := $(wildcard cli/*.c)
TEST_SRC := $(wildcard tests/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
DEPS_STAMP := $(BUILD)/config.mk

.PHONY: all deps demo check test asan tsan fuzz bench install clean lint

all: $(BUILD)/alloy $(BUILD)/alloy_tests

# Link-test the libraries, install the missing Debian packages once, and record their flags
# (scripts/deps.sh writes $(BUILD)/config.mk; make re-reads it).
$(DEPS_STAMP): scripts/deps.sh
	@CC="$(CC)" sh scripts/deps.sh $(BUILD)
-include $(DEPS_STAMP)

deps: $(DEPS_STAMP)

$(BUILD)/%.o: %.c $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

# The merge kernels: -O3 vectorizes the elementwise loops; -fno-trapping-math only lets the compiler
# if-convert float selects (results are bit-identical; no -ffast-math, so sums keep their order).
$(BUILD)/src/methods/%.o $(BUILD)/src/merge/%.o $(BUILD)/src/core/%.o $(BUILD)/src/kernels/%.o: OPT = -O3 -fno-trapping-math

$(BUILD)/liballoy.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/alloy: $(CLI_OBJ) $(BUILD)/liballoy.a
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $(CLI_OBJ) $(LIB_OBJ) $(LIBS)

$(BUILD)/alloy_tests: $(TEST_OBJ) $(BUILD)/liballoy.a
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $(TEST_OBJ) $(LIB_OBJ) $(LIBS)

# Merge and evaluate the bundled models: the two-command promise of the README.
demo: all
	sh scripts/demo.sh $(BUILD)/alloy

# The README's test command. ALLOY_TEST_FILTER=substring runs a subset.
check: all
	ALLOY_BIN=$(BUILD)/alloy $(BUILD)/alloy_tests $(ALLOY_TEST_FILTER)

test: check

# Sanitizer builds use their own build folders so they never mix objects.
asan:
	$(MAKE) BUILD=build-asan OPT=-O1 EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
	    LDFLAGS="-fsanitize=address,undefined" check

tsan:
	$(MAKE) BUILD=build-tsan OPT=-O1 EXTRA_CFLAGS="-fsanitize=thread" check

FUZZ_SECONDS ?= 30
fuzz:
	sh fuzz/run.sh $(FUZZ_SECONDS)

bench: all
	sh bench/run.sh $(BUILD)/alloy

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include
	install -m 755 $(BUILD)/alloy $(DESTDIR)$(PREFIX)/bin/alloy
	ln -sf alloy $(DESTDIR)$(PREFIX)/bin/mergekit-yaml
	install -m 644 $(BUILD)/liballoy.a $(DESTDIR)$(PREFIX)/lib/liballoy.a
	install -m 644 include/alloy.h $(DESTDIR)$(PREFIX)/include/alloy.h

clean:
	rm -rf build build-asan build-tsan build-fuzz

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d)

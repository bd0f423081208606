# alloy — build, test and tooling. Plain GNU make, C11, POSIX threads.
#
#   make            build build/alloy (CLI), build/liballoy.a and build/liballoy.so (installs missing Debian deps first)
#   make lib        build build/liballoy.a and build/liballoy.so only
#   make demo       build, then merge and evaluate the bundled tiny models
#   make check      build and run the whole test suite (prints "N passed, M failed")
#   make asan       run the test suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make tsan       run the test suite under ThreadSanitizer
#   make fuzz       build the libFuzzer targets (clang) and run each for FUZZ_SECONDS
#   make bench      run the throughput / memory benchmark (bench/README.md)
#   make install    install alloy, the mergekit-yaml, mergekit-multi, mergekit-moe and mergekit-extract-lora aliases, liballoy.{a,so}, alloy.h and alloy.pc under $(PREFIX)
#
# The shared library is linked from its own position-independent objects ($(BUILD)/pic/), so the
# CLI and liballoy.a keep the non-PIC merge kernels. `make check` installs into $(BUILD)/inst and
# builds examples/library against that copy through pkg-config, statically and shared.

# Compile on every core unless the caller chose a job count.
ifeq ($(filter -j%,$(MAKEFLAGS)),)
  MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2)
endif

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
PIC_OBJ  := $(LIB_SRC:%.c=$(BUILD)/pic/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
DEPS_STAMP := $(BUILD)/config.mk

.PHONY: all lib deps demo check test asan tsan fuzz bench install clean lint

VERSION  := $(shell sed -n 's/^\#define ALLOY_VERSION "\(.*\)"/\1/p' include/alloy.h)
SOMAJOR  := $(firstword $(subst ., ,$(VERSION)))
SO_FILE  := liballoy.so.$(VERSION)
LIBS_OUT := $(BUILD)/liballoy.a $(BUILD)/$(SO_FILE)

# `make` builds the CLI, the static library and the test runner; the shared library (its own -fPIC
# objects) is built by `make lib`, `make install` and `make check`, which need it.
all: $(BUILD)/alloy $(BUILD)/alloy_tests $(BUILD)/liballoy.a
lib: $(LIBS_OUT)

# Link-test the libraries, install the missing Debian packages once, and record their flags
# (scripts/deps.sh writes $(BUILD)/config.mk; make re-reads it).
$(DEPS_STAMP): scripts/deps.sh
	@CC="$(CC)" sh scripts/deps.sh $(BUILD)
-include $(DEPS_STAMP)

deps: $(DEPS_STAMP)

$(BUILD)/%.o: %.c $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(OBJ_FLAGS) -MMD -MP -c $< -o $@

# The same sources compiled position-independent, for liballoy.so only.
$(BUILD)/pic/%.o: %.c $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(OBJ_FLAGS) -fPIC -MMD -MP -c $< -o $@

# The merge kernels: -O3 vectorizes the elementwise loops; -fno-trapping-math only lets the compiler
# if-convert float selects (results are bit-identical; no -ffast-math, so sums keep their order).
KERNEL_DIRS = src/methods src/engine src/plan src/core src/kernels src/sources src/sinks
$(foreach d,$(KERNEL_DIRS),$(BUILD)/$(d)/%.o $(BUILD)/pic/$(d)/%.o): OPT = -O3 -fno-trapping-math
# The (de)quantizers must match ggml bit for bit: no a*b+c contracted into an FMA (docs/gguf.md §0).
$(BUILD)/src/quant/%.o $(BUILD)/pic/src/quant/%.o: OPT = -O3 -ffp-contract=off

$(BUILD)/liballoy.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# Exports the alloy_* symbols only (src/liballoy.map); the soname carries the major version.
$(BUILD)/$(SO_FILE): $(PIC_OBJ) src/liballoy.map
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -shared -Wl,-soname,liballoy.so.$(SOMAJOR) -Wl,--version-script=src/liballoy.map \
	    -o $@ $(PIC_OBJ) $(LIBS)

$(BUILD)/alloy: $(CLI_OBJ) $(BUILD)/liballoy.a
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $(CLI_OBJ) $(LIB_OBJ) $(LIBS)

$(BUILD)/alloy_tests: $(TEST_OBJ) $(BUILD)/liballoy.a
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $(TEST_OBJ) $(LIB_OBJ) $(LIBS)

# Merge and evaluate the bundled models: the two-command promise of the README.
demo: all
	sh scripts/demo.sh $(BUILD)/alloy

# install_to(DIR, PREFIX): installs the binaries, libraries, header and alloy.pc under DIR, the .pc
# naming PREFIX (DIR is DESTDIR + PREFIX for a staged install).
define install_to
	install -d $(1)/bin $(1)/lib/pkgconfig $(1)/include
	install -m 755 $(BUILD)/alloy $(1)/bin/alloy
	ln -sf alloy $(1)/bin/mergekit-yaml
	ln -sf alloy $(1)/bin/mergekit-extract-lora
	ln -sf alloy $(1)/bin/mergekit-multi
	ln -sf alloy $(1)/bin/mergekit-moe
	install -m 644 $(BUILD)/liballoy.a $(1)/lib/liballoy.a
	install -m 755 $(BUILD)/$(SO_FILE) $(1)/lib/$(SO_FILE)
	ln -sf $(SO_FILE) $(1)/lib/liballoy.so.$(SOMAJOR)
	ln -sf liballoy.so.$(SOMAJOR) $(1)/lib/liballoy.so
	install -m 644 include/alloy.h $(1)/include/alloy.h
	sed -e 's|@PREFIX@|$(2)|' -e 's|@VERSION@|$(VERSION)|' -e 's|@LIBS_PRIVATE@|$(strip $(LIBS))|' \
	    alloy.pc.in > $(1)/lib/pkgconfig/alloy.pc
endef

# examples/library built against an installed copy, as a user would: pkg-config, static and shared.
INST     = $(abspath $(BUILD)/inst)
EX_DIR   = $(BUILD)/examples
EX_CC    = PKG_CONFIG_PATH=$(INST)/lib/pkgconfig $(CC) -std=c11 -Wall -Wextra -pedantic \
           $(if $(filter 1,$(WERROR)),-Werror) $(CFLAGS) $(EXTRA_CFLAGS) $(LDFLAGS)
$(EX_DIR)/merge_and_eval_shared: examples/library/merge_and_eval.c $(BUILD)/alloy $(LIBS_OUT) alloy.pc.in
	$(call install_to,$(INST),$(INST))
	@mkdir -p $(EX_DIR)
	$(EX_CC) $< `PKG_CONFIG_PATH=$(INST)/lib/pkgconfig pkg-config --cflags --libs alloy` \
	    -Wl,-rpath,$(INST)/lib -o $(EX_DIR)/merge_and_eval_shared
	$(EX_CC) $< `PKG_CONFIG_PATH=$(INST)/lib/pkgconfig pkg-config --cflags --static --libs alloy | \
	    sed 's/-lalloy/-Wl,-Bstatic -lalloy -Wl,-Bdynamic/'` -o $(EX_DIR)/merge_and_eval_static

# The README's test command. ALLOY_TEST_FILTER=substring runs a subset.
check: all $(EX_DIR)/merge_and_eval_shared
	ALLOY_BIN=$(BUILD)/alloy ALLOY_EXAMPLES=$(EX_DIR) $(BUILD)/alloy_tests $(ALLOY_TEST_FILTER)

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

$(BUILD)/bench_quant: bench/quant.c $(BUILD)/liballoy.a
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ bench/quant.c $(BUILD)/liballoy.a $(LIBS)

bench: all $(BUILD)/bench_quant
	$(BUILD)/bench_quant
	sh bench/quant_vs_llama.sh $(BUILD)/alloy
	sh bench/run.sh $(BUILD)/alloy

install: $(BUILD)/alloy $(LIBS_OUT)
	$(call install_to,$(DESTDIR)$(PREFIX),$(PREFIX))

clean:
	rm -rf build build-asan build-tsan build-fuzz

-include $(LIB_OBJ:.o=.d) $(PIC_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d)

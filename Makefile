# libmoe - the build.
#
#   make                 library (static + shared), the `moe` CLI, the tests
#   make check           install what is missing, then every suite (unit, sanitizers,
#                        fuzz, multi-rank): what CI runs
#   make test            build, prepare the Python reference env, run the unit tests
#   make test-asan       the whole test suite under ASan + UBSan
#   make demo            build and run `moe demo`
#   make bench           build the benchmark programs bench/bench-*.c into $(BUILD)
#   make fuzz            run each fuzz target for FUZZ_SECONDS under ASan + UBSan
#   make install         PREFIX=/usr/local: lib, header, pkg-config file
#   make help            this text
#
# Optional parts are detected and announced: CUDA (nvcc), MPI (mpicc), NCCL.
# Opt out with NO_CUDA=1, NO_MPI=1, NO_NCCL=1.

# `make` alone builds everything: sections below define other rules first.
.DEFAULT_GOAL := all

PREFIX    ?= /usr/local
BUILD     ?= build
CC        ?= cc
# OPT: optimization (make OPT=-O0 -g); SAN: sanitizer flags (make test-asan sets
# them). The flags the build needs are appended with `override`, so a CFLAGS
# or LDLIBS given on the command line adds to them instead of dropping them.
OPT       ?= -O2 -march=native
SAN       ?=
override CFLAGS += $(OPT) $(SAN) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fPIC -pthread \
             -Iinclude -Isrc/core -fno-strict-aliasing
override LDLIBS += $(SAN) -lm -lpthread
PYTHON    ?= python3
VENV      ?= .venv
FUZZ_SECONDS ?= 60

VERSION   := $(shell sed -n 's/^#define MOE_VERSION_MAJOR \([0-9]*\)/\1/p' include/moe.h).$(shell sed -n 's/^#define MOE_VERSION_MINOR \([0-9]*\)/\1/p' include/moe.h).$(shell sed -n 's/^#define MOE_VERSION_PATCH \([0-9]*\)/\1/p' include/moe.h)

LIB_SRC   := $(sort $(wildcard src/core/*.c src/router/*.c src/kernel/*.c src/cpu/*.c \
                               src/quant/*.c src/io/*.c src/ep/*.c))
TOOL_SRC  := $(sort $(wildcard tools/*.c))
TEST_SRC  := $(sort $(wildcard tests/*.c))

# ---- optional: CUDA
NVCC      ?= $(shell command -v nvcc 2>/dev/null)
ifeq ($(NO_CUDA),)
ifneq ($(NVCC),)
HAVE_CUDA := 1
endif
endif
ifeq ($(HAVE_CUDA),1)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_SRC  := $(sort $(wildcard src/cuda/*.cu))
CUDA_GENCODE ?= -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_90,code=compute_90
NVCCFLAGS ?= -O3 -std=c++17 $(CUDA_GENCODE) -Xcompiler -fPIC,-Wall,-Wextra,-Werror \
             -Iinclude -Isrc/core -Isrc/cuda --expt-relaxed-constexpr
override CFLAGS += -DMOE_HAVE_CUDA -I$(CUDA_HOME)/include
override LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lstdc++
CUDA_OBJ  := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
endif

# ---- optional: MPI and NCCL (parallel experts, src/ep/). src/ep/mpi-*.c need
# mpi.h and build only when mpicc is found; src/ep/nccl-*.c need CUDA and
# nccl.h. Each feature is one define, checked in src/ep/comm.c only.
MPICC     ?= $(shell command -v mpicc 2>/dev/null)
ifeq ($(NO_MPI),)
ifneq ($(MPICC),)
HAVE_MPI  := 1
endif
endif
ifeq ($(HAVE_MPI),1)
MPI_CFLAGS := $(shell $(MPICC) --showme:compile)
override CFLAGS += -DMOE_HAVE_MPI
override LDLIBS += $(shell $(MPICC) --showme:link)
$(BUILD)/src/ep/mpi-%.o: CFLAGS += $(MPI_CFLAGS)
$(BUILD)/tools/cmd-ep.o: CFLAGS += $(MPI_CFLAGS)
else
LIB_SRC   := $(filter-out src/ep/mpi-%.c,$(LIB_SRC))
endif
# NCCL_HOME names an NCCL outside the system paths (e.g. the nvidia-nccl
# wheel's directory); NCCL_LIB overrides the link flag (-l:libnccl.so.2 where
# there is no libnccl.so).
NCCL_HOME ?=
NCCL_LIB  ?= -lnccl
ifeq ($(NO_NCCL):$(HAVE_CUDA),:1)
NCCL_H    := $(firstword $(wildcard $(if $(NCCL_HOME),$(NCCL_HOME)/include/nccl.h) \
               $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h /usr/local/include/nccl.h))
ifneq ($(NCCL_H),)
HAVE_NCCL := 1
endif
endif
ifeq ($(HAVE_NCCL),1)
override CFLAGS += -DMOE_HAVE_NCCL
ifneq ($(NCCL_HOME),)
override CFLAGS += -I$(NCCL_HOME)/include
override LDLIBS += -L$(NCCL_HOME)/lib -Wl,-rpath,$(NCCL_HOME)/lib
endif
override LDLIBS += $(NCCL_LIB)
else
LIB_SRC   := $(filter-out src/ep/nccl-%.c,$(LIB_SRC))
endif
MPI_TEST_SRC := $(sort $(wildcard tests/mpi/*.c))
MPI_TESTS    := $(MPI_TEST_SRC:tests/mpi/%.c=$(BUILD)/tests/mpi/%)

.PHONY: announce-ep mpi-tests
announce: announce-ep
announce-ep:
	@echo "libmoe parallel experts: $(if $(HAVE_MPI),MPI ✓ ($(MPICC)),MPI ✗)$(if $(HAVE_NCCL), NCCL ✓, NCCL ✗)"

# The NCCL transport on two GPUs (tests/nccl/; not run by the CPU CI).
NCCL_TESTS := $(patsubst tests/nccl/%.c,$(BUILD)/tests/nccl/%,$(wildcard tests/nccl/*.c))
.PHONY: nccl-tests
nccl-tests: $(if $(HAVE_NCCL),$(NCCL_TESTS))
$(BUILD)/tests/nccl/%: tests/nccl/%.c $(BUILD)/libmoe.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libmoe.a $(LDLIBS)

# Multi-rank test programs, run by scripts/ep-test.sh under mpirun.
mpi-tests: $(MPI_TESTS)
$(BUILD)/tests/mpi/%: tests/mpi/%.c tests/mpi/mpi-test.h $(BUILD)/libmoe.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(MPI_CFLAGS) -Itests -o $@ $< $(BUILD)/libmoe.a $(LDLIBS)

LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o) $(CUDA_OBJ)
TEST_OBJ  := $(TEST_SRC:%.c=$(BUILD)/%.o)

.PHONY: all lib check test test-asan demo fuzz install clean help announce pyenv testdata

all: announce $(BUILD)/libmoe.a $(BUILD)/libmoe.so $(BUILD)/moe $(BUILD)/moe-test

announce:
	@echo "libmoe $(VERSION): CPU ✓$(if $(HAVE_CUDA), CUDA ✓ ($(NVCC)), CUDA ✗)"

lib: $(BUILD)/libmoe.a $(BUILD)/libmoe.so

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libmoe.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libmoe.so: $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libmoe.so.$(firstword $(subst ., ,$(VERSION))) -o $@ $^ $(LDLIBS)

$(BUILD)/moe: $(TOOL_SRC:%.c=$(BUILD)/%.o) $(BUILD)/libmoe.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/moe-test: $(TEST_OBJ) $(BUILD)/libmoe.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# ---- benchmarks: `make bench` builds one program per bench/bench-*.c.
.PHONY: bench
bench: $(patsubst bench/%.c,$(BUILD)/%,$(sort $(wildcard bench/bench-*.c)))

$(BUILD)/bench-%: bench/bench-%.c $(BUILD)/libmoe.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# ---- Python reference environment: independent implementations (ml_dtypes,
# gguf, safetensors, numpy) that the tests compare against. Installed into a
# local virtual environment; nothing global.
$(VENV)/.stamp: tests/python/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	@touch $@

pyenv: $(VENV)/.stamp

# Golden data from the independent implementations, read by the C tests.
testdata: $(VENV)/.stamp
	@mkdir -p $(BUILD)/testdata
	@for s in tests/python/gen_*.py; do \
	    [ -e "$$s" ] || continue; \
	    echo "  GEN $$s"; $(VENV)/bin/python $$s $(BUILD)/testdata || exit 1; \
	done

check:
	bash scripts/test-all.sh

test: all testdata
	MOE_TEST_DATA=$(BUILD)/testdata $(BUILD)/moe-test

# The whole suite again under AddressSanitizer and UndefinedBehaviorSanitizer.
test-asan: testdata
	$(MAKE) BUILD=build-asan OPT="-O1 -g -march=native" NO_CUDA=1 \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	    build-asan/moe-test
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    MOE_TEST_DATA=$(BUILD)/testdata build-asan/moe-test

demo: $(BUILD)/moe
	$(BUILD)/moe demo

install: $(BUILD)/libmoe.a $(BUILD)/libmoe.so
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 644 include/moe.h $(DESTDIR)$(PREFIX)/include/moe.h
	install -m 644 $(BUILD)/libmoe.a $(DESTDIR)$(PREFIX)/lib/libmoe.a
	install -m 755 $(BUILD)/libmoe.so $(DESTDIR)$(PREFIX)/lib/libmoe.so.$(VERSION)
	ln -sf libmoe.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libmoe.so.$(firstword $(subst ., ,$(VERSION)))
	ln -sf libmoe.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libmoe.so
	[ -x $(BUILD)/moe ] && install -m 755 $(BUILD)/moe $(DESTDIR)$(PREFIX)/bin/moe || true
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' \
	    -e 's|@LIBS@|$(LDLIBS)|' moe.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/moe.pc

clean:
	rm -rf $(BUILD) build-asan build-fuzz

help:
	@sed -n '1,/^$$/p' Makefile | sed 's/^# \{0,1\}//'

-include $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(TOOL_SRC:%.c=$(BUILD)/%.d)

# ---- fuzzing (fuzz/, issue 4). `make fuzz` builds each fuzz/fuzz-*.c target
# with clang -fsanitize=fuzzer,address,undefined into build-fuzz/ and runs it
# for FUZZ_SECONDS, seeded with fuzz/corpus/, the valid test data and
# tests/data/bad/. `make fuzz-replay` runs the same targets with the
# standalone driver fuzz/fuzz-main.c (any compiler, no libFuzzer) over the
# seeds: the quick CI check. Crashers land in build-fuzz/crashes/; each one
# becomes a file in tests/data/bad/ once fixed. libFuzzer's runtime comes with
# Debian's clang (package libclang-rt-<v>-dev or libclang-common-<v>-dev).
FUZZ_CC      ?= clang
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_CFLAGS  := -g -O1 -std=c11 -D_GNU_SOURCE -pthread -Iinclude -Isrc/core -Isrc/io -Ifuzz $(FUZZ_SAN)
FUZZ_LIBSRC  := $(filter-out src/ep/mpi-%.c src/ep/nccl-%.c,$(sort $(wildcard src/core/*.c src/router/*.c \
                  src/kernel/*.c src/cpu/*.c src/quant/*.c src/io/*.c src/ep/*.c)))
FUZZ_TARGETS := $(patsubst fuzz/fuzz-%.c,%,$(filter-out fuzz/fuzz-main.c,$(wildcard fuzz/fuzz-*.c)))
FUZZ_OPTS    ?= -rss_limit_mb=2560 -malloc_limit_mb=512 -timeout=25 -max_len=262144

build-fuzz/lf/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@
build-fuzz/rp/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@
build-fuzz/libmoe-lf.a: $(FUZZ_LIBSRC:%.c=build-fuzz/lf/%.o)
	@rm -f $@; ar rcs $@ $^
build-fuzz/libmoe-rp.a: $(FUZZ_LIBSRC:%.c=build-fuzz/rp/%.o)
	@rm -f $@; ar rcs $@ $^
build-fuzz/fuzz-%: fuzz/fuzz-%.c fuzz/fuzz.h build-fuzz/libmoe-lf.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< build-fuzz/libmoe-lf.a -lm
build-fuzz/replay-%: fuzz/fuzz-%.c fuzz/fuzz-main.c fuzz/fuzz.h build-fuzz/libmoe-rp.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< fuzz/fuzz-main.c build-fuzz/libmoe-rp.a -lm

fuzz-seeds: testdata
	@rm -rf build-fuzz/seeds
	$(PYTHON) fuzz/make_seeds.py build-fuzz/seeds $(BUILD)/testdata tests/data/bad

fuzz: fuzz-seeds $(FUZZ_TARGETS:%=build-fuzz/fuzz-%)
	@mkdir -p build-fuzz/crashes; pass=0; fail=0; \
	for t in $(FUZZ_TARGETS); do \
	    mkdir -p build-fuzz/corpus/$$t fuzz/corpus/$$t; \
	    echo "  FUZZ $$t ($(FUZZ_SECONDS) s)"; \
	    build-fuzz/fuzz-$$t $(FUZZ_OPTS) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        -artifact_prefix=build-fuzz/crashes/$$t- -dict=fuzz/moe.dict \
	        build-fuzz/corpus/$$t fuzz/corpus/$$t build-fuzz/seeds/$$t > build-fuzz/$$t.log 2>&1; \
	    rc=$$?; grep -E "stat::number_of_executed_units|stat::peak_rss_mb|ERROR|SUMMARY" build-fuzz/$$t.log; \
	    if [ $$rc -eq 0 ] && [ -z "$$(ls build-fuzz/crashes/$$t-* 2>/dev/null)" ]; then pass=$$((pass + 1)); \
	    else fail=$$((fail + 1)); echo "  FUZZ $$t: FINDING (exit $$rc), see build-fuzz/$$t.log and build-fuzz/crashes/"; fi; \
	done; \
	echo "fuzz: $$pass passed, $$fail failed"; [ $$fail -eq 0 ]

fuzz-replay: fuzz-seeds $(FUZZ_TARGETS:%=build-fuzz/replay-%)
	@for t in $(FUZZ_TARGETS); do \
	    build-fuzz/replay-$$t fuzz/corpus/$$t build-fuzz/seeds/$$t tests/data/bad || exit 1; \
	done

.PHONY: fuzz-seeds fuzz-replay
-include $(FUZZ_LIBSRC:%.c=build-fuzz/lf/%.d) $(FUZZ_LIBSRC:%.c=build-fuzz/rp/%.d)

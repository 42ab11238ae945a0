# Makefile for livekpi (PGXS)
#
#   make && make install      build and install the extension and livekpi-tail
#   make test                 install dependencies, build, install, run every test
#   make demo                 throwaway cluster with demo data and a live simulator
#   make bench                SPEC section 9 benchmarks, rewrites BENCHMARKS.md

EXTENSION = livekpi
MODULE_big = livekpi
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))

# The install script is assembled from sql/parts/ so that each concern keeps
# its own SQL file; the parts are concatenated in name order.
SQL_PARTS = $(sort $(wildcard sql/parts/*.sql))
DATA_built = livekpi--1.1.sql
# Upgrade scripts: one per released version step (test/t/007_upgrade.pl walks them).
DATA = sql/livekpi--1.0--1.1.sql

PG_CONFIG ?= pg_config
PG_CPPFLAGS = -I$(srcdir)/src
PG_CFLAGS = -Werror -Wall -Wmissing-prototypes -Wpointer-arith -Wendif-labels \
	-Wformat-security -Wno-format-truncation -Wno-stringop-truncation
SHLIB_LINK = -lwebsockets

REGRESS = setup booking_rules expense_rules views mapping key_types partitions \
	dml_forms decoder operations extreme_values
REGRESS_OPTS = --temp-config=$(srcdir)/test/livekpi.conf --temp-config=$(srcdir)/test/regress.conf \
	--temp-instance=./tmp_regress
ISOLATION = writers_concurrent rebuild_vs_writers track_vs_writers
ISOLATION_OPTS = --inputdir=$(srcdir)/test --temp-config=$(srcdir)/test/livekpi.conf \
	--temp-config=$(srcdir)/test/isolation.conf \
	--temp-instance=./tmp_iso
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl
PROVE_FLAGS = --timer

EXTRA_CLEAN = livekpi--1.1.sql results output_iso tmp_regress tmp_iso tmp_check

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# --- push worker begin
# livekpi-tail (SPEC section 8), built and installed with the extension, and
# the libFuzzer target of the client-message parser (src/protocol.c).
LIVEKPI_TAIL = src/tail/livekpi-tail
LIVEKPI_FUZZ = test/fuzz/fuzz_protocol
all: $(LIVEKPI_TAIL)
$(LIVEKPI_TAIL): src/tail/livekpi_tail.c
	$(CC) -O2 -g -Wall -Wextra -Wno-unused-parameter -Werror -o $@ $< -lwebsockets
install: install-livekpi-tail
.PHONY: install-livekpi-tail uninstall-livekpi-tail fuzz
install-livekpi-tail: $(LIVEKPI_TAIL)
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) $(LIVEKPI_TAIL) '$(DESTDIR)$(bindir)/livekpi-tail'
uninstall: uninstall-livekpi-tail
uninstall-livekpi-tail:
	rm -f '$(DESTDIR)$(bindir)/livekpi-tail'
$(LIVEKPI_FUZZ): test/fuzz/fuzz_protocol.c src/protocol.c src/protocol.h
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		-I$(srcdir)/src -o $@ test/fuzz/fuzz_protocol.c src/protocol.c
fuzz: $(LIVEKPI_FUZZ)
	./test/fuzz/run-brief.sh $${FUZZ_SECONDS:-300}
EXTRA_CLEAN += $(LIVEKPI_TAIL) $(LIVEKPI_FUZZ)
# --- push worker end

livekpi--1.1.sql: $(SQL_PARTS)
	cat $^ > $@

# The dashboard and livekpi.js, served by the push worker from
# $(datadir)/livekpi/www; www/build.sh copies the pinned chart library in.
WWW_FILES = index.html app.js livekpi.js style.css sw.js
.PHONY: www install-www
www:
	./www/build.sh
install: install-www
install-www: www
	$(MKDIR_P) '$(DESTDIR)$(datadir)/livekpi/www/vendor'
	$(INSTALL_DATA) $(addprefix www/,$(WWW_FILES)) '$(DESTDIR)$(datadir)/livekpi/www/'
	$(INSTALL_DATA) www/vendor/* '$(DESTDIR)$(datadir)/livekpi/www/vendor/'

.PHONY: test demo bench deps

deps:
	./test/install-deps.sh

# Everything runs as root on CI; initdb refuses root, so the suites run as
# the postgres user in a scratch copy of the tree (see test/run-tests.sh).
export PG_CONFIG

test: deps
	$(MAKE) all
	$(MAKE) install
	./test/run-tests.sh

demo:
	./test/install-deps.sh
	$(MAKE) all
	$(MAKE) install
	./bench/demo.sh

bench:
	./test/install-deps.sh
	$(MAKE) all
	$(MAKE) install
	./bench/run.sh

# The three halves of PGXS's installcheck, so that test/run-tests.sh can
# report each on its own.
.PHONY: installcheck-regress-only installcheck-isolation-only installcheck-tap-only
installcheck-regress-only: submake $(REGRESS_PREP)
	$(pg_regress_installcheck) $(REGRESS_OPTS) $(REGRESS)
installcheck-isolation-only: submake $(REGRESS_PREP)
	$(pg_isolation_regress_installcheck) $(ISOLATION_OPTS) $(ISOLATION)
installcheck-tap-only:
	$(prove_installcheck)

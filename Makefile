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
DATA_built = livekpi--1.1.sql livekpi--1.0--1.1.sql
# The 1.0 install script as released and the upgrade scripts from it
# (test/t/007_upgrade.pl installs 1.0, updates, and compares with 1.1).
DATA = sql/livekpi--1.0.sql

PG_CONFIG ?= pg_config
PG_CPPFLAGS = -I$(srcdir)/src
PG_CFLAGS = -Werror -Wall -Wmissing-prototypes -Wpointer-arith -Wendif-labels \
	-Wformat-security -Wno-format-truncation -Wno-stringop-truncation \
	$(LIVEKPI_SANITIZE_CFLAGS)
SHLIB_LINK = -lwebsockets $(LIVEKPI_SANITIZE_LDFLAGS)

REGRESS = setup booking_rules expense_rules views mapping key_types partitions \
	dml_forms decoder integrity capture_state timezones track_errors properties tokens kpi_table_triggers operations \
	extreme_values
REGRESS_OPTS = --temp-config=$(srcdir)/test/livekpi.conf --temp-config=$(srcdir)/test/regress.conf \
	--temp-instance=./tmp_regress
ISOLATION = writers_concurrent rebuild_vs_writers track_vs_writers
ISOLATION_OPTS = --inputdir=$(srcdir)/test --temp-config=$(srcdir)/test/livekpi.conf \
	--temp-config=$(srcdir)/test/isolation.conf \
	--temp-instance=./tmp_iso
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl
PROVE_FLAGS = --timer

EXTRA_CLEAN = livekpi--1.1.sql livekpi--1.0--1.1.sql results output_iso tmp_regress tmp_iso tmp_check

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# --- push worker begin
# livekpi-tail (SPEC section 8), built and installed with the extension, and
# the libFuzzer target of the client-message parser (src/protocol.c).
LIVEKPI_TAIL = src/tail/livekpi-tail
LIVEKPI_FUZZ = test/fuzz/fuzz_protocol
LIVEKPI_FUZZ_HTTP = test/fuzz/fuzz_http
all: $(LIVEKPI_TAIL)
$(LIVEKPI_TAIL): src/tail/livekpi_tail.c
	$(CC) -O2 -g -Wall -Wextra -Wno-unused-parameter -Werror -o $@ $< -lwebsockets
install: install-livekpi-tail
.PHONY: install-livekpi-tail uninstall-livekpi-tail fuzz
# Debian's bindir (/usr/lib/postgresql/N/bin) is not on PATH: an install
# into the system (no DESTDIR, that bindir) also links livekpi-tail into
# TAIL_LINK_DIR.  Private copies (another prefix) and package builds
# (DESTDIR set) get no link.
TAIL_LINK_DIR ?= /usr/local/bin
tail_link = $(if $(DESTDIR),,$(filter /usr/lib/postgresql/%,$(bindir)))
install-livekpi-tail: $(LIVEKPI_TAIL)
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) $(LIVEKPI_TAIL) '$(DESTDIR)$(bindir)/livekpi-tail'
ifneq ($(tail_link),)
	$(MKDIR_P) '$(TAIL_LINK_DIR)'
	ln -sf '$(bindir)/livekpi-tail' '$(TAIL_LINK_DIR)/livekpi-tail'
endif
uninstall: uninstall-livekpi-tail
uninstall-livekpi-tail:
	rm -f '$(DESTDIR)$(bindir)/livekpi-tail'
ifneq ($(tail_link),)
	if [ "$$(readlink '$(TAIL_LINK_DIR)/livekpi-tail')" = '$(bindir)/livekpi-tail' ]; then \
		rm -f '$(TAIL_LINK_DIR)/livekpi-tail'; fi
endif
$(LIVEKPI_FUZZ): test/fuzz/fuzz_protocol.c src/protocol.c src/protocol.h
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		-I$(srcdir)/src -o $@ test/fuzz/fuzz_protocol.c src/protocol.c
fuzz: $(LIVEKPI_FUZZ) $(LIVEKPI_FUZZ_HTTP)
	./test/fuzz/run-brief.sh $${FUZZ_SECONDS:-300}
# the HTTP request rules (src/http_rules.c), fuzzed beside the parser
$(LIVEKPI_FUZZ_HTTP): test/fuzz/fuzz_http.c src/http_rules.c src/http_rules.h
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		-I$(srcdir)/src -o $@ test/fuzz/fuzz_http.c src/http_rules.c
# unit tests of the libc-only parts (the push worker's client queue)
LIVEKPI_UNIT = test/unit/test_push_queue
$(LIVEKPI_UNIT): test/unit/test_push_queue.c src/push_queue.c src/push_queue.h src/protocol.c
	$(CC) -g -O1 -Wall -Wextra -Wno-unused-parameter -Werror -fsanitize=address,undefined \
		-fno-sanitize-recover=all -I$(srcdir)/src -o $@ test/unit/test_push_queue.c \
		src/push_queue.c src/protocol.c
.PHONY: unit
unit: $(LIVEKPI_UNIT)
	./$(LIVEKPI_UNIT)
EXTRA_CLEAN += $(LIVEKPI_TAIL) $(LIVEKPI_FUZZ) $(LIVEKPI_FUZZ_HTTP) $(LIVEKPI_UNIT)
# PGXS tracks no header dependencies: a changed shared-memory struct must
# rebuild every object that sees it
$(OBJS): $(wildcard src/*.h)
# --- push worker end

# The change-record decoder's libFuzzer target (src/change.c, with
# test/fuzz/pg_shim.c standing in for the server) and the SipHash-2-4
# reference-vector test; test/fuzz/run-brief.sh builds and runs both.
FUZZ_CHANGE = test/fuzz/fuzz_change
TEST_SIPHASH = test/fuzz/test_siphash
FUZZ_SAN = -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all
$(FUZZ_CHANGE): test/fuzz/fuzz_change.c test/fuzz/pg_shim.c test/fuzz/pg_shim.h \
		src/change.c src/change.h src/siphash.c src/siphash.h
	clang $(FUZZ_SAN) -fsanitize=fuzzer -Wno-ignored-attributes \
		-I$(srcdir)/src -I$(srcdir)/test/fuzz -I$(includedir_server) -o $@ \
		test/fuzz/fuzz_change.c test/fuzz/pg_shim.c src/change.c src/siphash.c
$(TEST_SIPHASH): test/fuzz/test_siphash.c src/siphash.c src/siphash.h
	clang $(FUZZ_SAN) -Wall -Werror -I$(srcdir)/src -o $@ test/fuzz/test_siphash.c src/siphash.c
fuzz: $(FUZZ_CHANGE) $(TEST_SIPHASH)
EXTRA_CLEAN += $(FUZZ_CHANGE) $(TEST_SIPHASH)

livekpi--1.1.sql: $(SQL_PARTS)
	cat $^ > $@

# The upgrade script names the functions it (re)creates; their definitions
# come from sql/parts, so that each is written once.
livekpi--1.0--1.1.sql: sql/livekpi--1.0--1.1.sql.in sql/expand-upgrade.pl $(SQL_PARTS)
	perl $(srcdir)/sql/expand-upgrade.pl $< $(SQL_PARTS) > $@.tmp && mv $@.tmp $@

# The dashboard and livekpi.js, served by the push worker from
# $(datadir)/livekpi/www.  The chart library (uPlot, MIT) is committed in
# www/vendor/, so install needs no network; www/vendor-refresh.sh updates it
# from node_modules after a version change in package.json.
# livekpi.js is split into modules with one job each in www/lib/ (see
# docs/livekpi-js.md); every file the page loads must be listed here.
WWW_FILES = index.html app.js model.js livekpi.js style.css sw.js
WWW_LIB = protocol.js store.js backoff.js connection.js share.js persist.js kpimath.js
WWW_VENDOR = uPlot.esm.js uPlot.min.css uPlot.LICENSE
.PHONY: install-www uninstall-www
install: install-www
install-www:
	$(MKDIR_P) '$(DESTDIR)$(datadir)/livekpi/www/vendor' '$(DESTDIR)$(datadir)/livekpi/www/lib'
	$(INSTALL_DATA) $(addprefix www/,$(WWW_FILES)) '$(DESTDIR)$(datadir)/livekpi/www/'
	$(INSTALL_DATA) $(addprefix www/lib/,$(WWW_LIB)) '$(DESTDIR)$(datadir)/livekpi/www/lib/'
	$(INSTALL_DATA) $(addprefix www/vendor/,$(WWW_VENDOR)) '$(DESTDIR)$(datadir)/livekpi/www/vendor/'
uninstall: uninstall-www
uninstall-www:
	rm -rf '$(DESTDIR)$(datadir)/livekpi/www'

.PHONY: test demo bench deps test-sanitize

deps:
	./test/install-deps.sh

# Everything runs as root on CI; initdb refuses root, so the suites run as
# the postgres user in a scratch copy of the tree (see test/run-tests.sh).
export PG_CONFIG

test: deps
	$(MAKE) all
	$(MAKE) install
	./test/run-tests.sh

# The longer target (docs/testing.md): livekpi.so built with UBSan runs the
# regress, isolation and TAP suites; any report fails it.  Leaves a normal
# build installed.
test-sanitize: deps
	./test/run-sanitized.sh

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

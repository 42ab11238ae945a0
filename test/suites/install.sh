#!/usr/bin/env bash
# test/suites/install.sh WORK: make install needs no network and puts
# livekpi-tail where a user can type it (issue 11 items 1 and 8).
#
#  * a copy of the tree without node_modules, with npm and node on PATH
#    replaced by commands that fail, installs into a DESTDIR: the chart
#    library and its licence come from the committed www/vendor/;
#  * every file of WWW_FILES, WWW_LIB and WWW_VENDOR is installed, and every
#    page file of www/ (www/lib/ included) is listed there;
#  * with Debian's bindir (/usr/lib/postgresql/N/bin) and no DESTDIR, the
#    install links livekpi-tail into TAIL_LINK_DIR (a dry run: this suite
#    never writes to the system); with a DESTDIR or another bindir, no link.
set -euo pipefail
work=${1:?usage: test/suites/install.sh WORK}
. "$work/test/lib.sh"

tmp=$(mktemp -d /tmp/livekpi-install-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() {
	echo "install suite: FAIL: $*" >&2
	exit 1
}

rsync -a --exclude .git --exclude node_modules --exclude 'www/vendor/*.VERSION' "$work/" "$tmp/src/"
mkdir -p "$tmp/nonet"
for cmd in npm npx node; do
	printf '#!/bin/sh\necho "%s was run" >&2\nexit 97\n' "$cmd" > "$tmp/nonet/$cmd"
	chmod +x "$tmp/nonet/$cmd"
done

echo "install suite: make install without node_modules, npm or node"
PATH="$tmp/nonet:$PATH" make -C "$tmp/src" -s PG_CONFIG="$PG_CONFIG" DESTDIR="$tmp/dest" install \
	>"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "make install failed offline"; }
grep -q "was run" "$tmp/install.log" && { cat "$tmp/install.log"; fail "make install ran npm or node"; }

www="$tmp/dest$($PG_CONFIG --sharedir)/livekpi/www"
files=$(make -C "$tmp/src" -s PG_CONFIG="$PG_CONFIG" --eval 'print-www: ; @echo $(WWW_FILES) $(addprefix lib/,$(WWW_LIB)) $(addprefix vendor/,$(WWW_VENDOR))' print-www)
[ -n "$files" ] || fail "WWW_FILES is empty"
for f in $files; do
	[ -s "$www/$f" ] || fail "$f is not installed in $www"
done
grep -q "MIT License" "$www/vendor/uPlot.LICENSE" || fail "uPlot's licence is not installed"
for f in "$work"/www/*.js "$work"/www/*.html "$work"/www/*.css "$work"/www/lib/*.js; do
	[ -e "$f" ] || continue
	rel=${f#"$work"/www/}
	case " $files " in *" $rel "*) ;; *) fail "www/$rel is not in WWW_FILES (it would not be served)" ;; esac
done
[ -x "$tmp/dest$($PG_CONFIG --bindir)/livekpi-tail" ] || fail "livekpi-tail is not installed in bindir"
[ -e "$tmp/dest/usr/local/bin/livekpi-tail" ] && fail "a DESTDIR install linked into /usr/local/bin"

echo "install suite: the livekpi-tail link (dry runs)"
deb=/usr/lib/postgresql/15/bin
out=$(make -C "$tmp/src" -n PG_CONFIG="$PG_CONFIG" bindir="$deb" TAIL_LINK_DIR="$tmp/links" install-livekpi-tail)
grep -qF "ln -sf '$deb/livekpi-tail' '$tmp/links/livekpi-tail'" <<<"$out" ||
	{ echo "$out"; fail "no link into TAIL_LINK_DIR for Debian's bindir"; }
out=$(make -C "$tmp/src" -n PG_CONFIG="$PG_CONFIG" bindir="$deb" DESTDIR="$tmp/pkg" install-livekpi-tail)
grep -q "ln -s" <<<"$out" && { echo "$out"; fail "a DESTDIR (package) build would link"; }
out=$(make -C "$tmp/src" -n PG_CONFIG="$PG_CONFIG" bindir="$tmp/private/bin" install-livekpi-tail)
grep -q "ln -s" <<<"$out" && { echo "$out"; fail "a private prefix ($tmp/private/bin) would link"; }
echo "install suite: ok"

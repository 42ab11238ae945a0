#!/usr/bin/env bash
# Installs what building, testing, the demo and the benchmarks need, from
# Debian's packages and the npm lock file only.  Fast when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential postgresql-15 postgresql-server-dev-15 postgresql-client-15
	postgresql-contrib libwebsockets-dev libipc-run-perl python3-websockets
	chromium nodejs npm rsync clang libclang-rt-14-dev jq openssl iproute2)

missing=()
for p in "${packages[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# nodejs may come from outside Debian's packages on some machines: a working
# node and npm are as good as the package.
if command -v node >/dev/null && command -v npm >/dev/null; then
	missing=("${missing[@]/nodejs/}")
	missing=("${missing[@]/npm/}")
fi
missing=($(printf '%s\n' "${missing[@]}" | sed '/^$/d'))
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "install-deps: missing packages: ${missing[*]} (run as root to install them)" >&2
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# JavaScript dependencies (chart library, playwright-core), pinned by the lock
# file; skipped when node_modules was installed from this very lock file.
if [ -f package-lock.json ]; then
	want=$(sha256sum package-lock.json | cut -d' ' -f1)
	have=$(cat node_modules/.livekpi-lock-sha256 2>/dev/null || true)
	if [ "$want" != "$have" ]; then
		npm ci --no-audit --no-fund --loglevel=error
		echo "$want" > node_modules/.livekpi-lock-sha256
	fi
fi

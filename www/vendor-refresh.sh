#!/bin/sh
# Refreshes the vendored chart library in www/vendor/ from node_modules/uplot
# (the version pinned in package.json and package-lock.json).  Building and
# installing never run this: www/vendor/ is committed so that they need no
# network.  To move to another uPlot version:
#   edit package.json, npm install, www/vendor-refresh.sh, commit www/vendor/
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ ! -f node_modules/uplot/dist/uPlot.esm.js ]; then
	echo "www/vendor-refresh.sh: node_modules/uplot is missing (npm ci first)" >&2
	exit 1
fi
mkdir -p www/vendor
cp node_modules/uplot/dist/uPlot.esm.js www/vendor/uPlot.esm.js
cp node_modules/uplot/dist/uPlot.min.css www/vendor/uPlot.min.css
cp node_modules/uplot/LICENSE www/vendor/uPlot.LICENSE
version=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' node_modules/uplot/package.json | head -n 1)
echo "$version" > www/vendor/uPlot.VERSION
echo "www/vendor-refresh.sh: uPlot $version copied to www/vendor/"

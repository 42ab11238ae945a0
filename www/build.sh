#!/bin/sh
# Copies the chart library (pinned in package-lock.json) into www/vendor/ so
# that the dashboard works without internet.  Run from anywhere; installs the
# npm dependencies from the lock file first when they are missing.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ ! -f node_modules/uplot/dist/uPlot.esm.js ]; then
	command -v npm >/dev/null 2>&1 || { echo "www/build.sh: npm is needed (apt-get install npm)" >&2; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
fi
mkdir -p www/vendor
cp node_modules/uplot/dist/uPlot.esm.js www/vendor/uPlot.esm.js
cp node_modules/uplot/dist/uPlot.min.css www/vendor/uPlot.min.css
cp node_modules/uplot/LICENSE www/vendor/uPlot.LICENSE
echo "www/build.sh: uPlot $(node -p "require('./node_modules/uplot/package.json').version" 2>/dev/null || echo '?') copied to www/vendor/"

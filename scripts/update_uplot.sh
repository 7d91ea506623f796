#!/usr/bin/env bash
# Re-vendor uPlot (the dashboard's chart library) from the npm registry at a pinned version:
#   scripts/update_uplot.sh 1.6.32
# npm pack checks the tarball against the registry's integrity hash; nothing is built. Review
# `git diff api/ui/static/vendor/uplot`, run the browser tests (tests/system/test_ui_*.py), commit.
set -euo pipefail
version=${1:?usage: scripts/update_uplot.sh VERSION}
dest="$(cd "$(dirname "$0")/.." && pwd)/api/ui/static/vendor/uplot"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "uplot@$version" >/dev/null
integrity=$(npm view "uplot@$version" dist.integrity)
tar xzf "uplot-$version.tgz"
cp package/dist/uPlot.iife.min.js package/dist/uPlot.min.css "$dest/"
cp package/LICENSE "$dest/LICENSE"
{
  echo "uplot $version (npm registry, https://registry.npmjs.org/uplot/-/uplot-$version.tgz)"
  echo "tarball integrity $integrity"
  echo "files: dist/uPlot.iife.min.js, dist/uPlot.min.css, LICENSE (MIT), unmodified; update with scripts/update_uplot.sh"
  (cd "$dest" && sha256sum uPlot.iife.min.js uPlot.min.css LICENSE)
} > "$dest/VERSION"
echo "vendored uplot $version into $dest"

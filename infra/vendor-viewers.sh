#!/usr/bin/env bash
# Refresh the gallery's vendored image viewers from the npm registry (pinned versions, npm's
# integrity check): OpenSeadragon (deep zoom, compare) and Pannellum (360° panoramas). They are
# committed under catalogue/web/static/vendor/ rather than installed at setup: studios run the
# gallery offline, a pip install of the project then carries them (package data), and neither the
# tests nor `make setup` need node. Run this only to move to another version, and commit the result.
set -euo pipefail
OSD=openseadragon@6.1.1
PANNELLUM=pannellum@2.5.7
dest="$(cd "$(dirname "$0")/.." && pwd)/catalogue/web/static/vendor"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$OSD" "$PANNELLUM" >/dev/null)
rm -rf "$dest" && mkdir -p "$dest/openseadragon" "$dest/pannellum"
tar xzf "$work"/openseadragon-*.tgz -C "$work" package/build/openseadragon package/LICENSE.txt
cp "$work/package/build/openseadragon/openseadragon.min.js" "$dest/openseadragon/"
cp -r "$work/package/build/openseadragon/images" "$dest/openseadragon/"
cp "$work/package/LICENSE.txt" "$dest/openseadragon/LICENSE.txt"
rm -rf "$work/package"
tar xzf "$work"/pannellum-*.tgz -C "$work" package/build package/COPYING
cp "$work/package/build/pannellum.js" "$work/package/build/pannellum.css" "$dest/pannellum/"
cp "$work/package/COPYING" "$dest/pannellum/COPYING"
printf '%s\n%s\n' "$OSD" "$PANNELLUM" > "$dest/VERSIONS"
echo "vendored $OSD and $PANNELLUM into $dest"

#!/bin/sh
# Put Ember in the desktop's applications menu, for the current user. `make package` copies this script into
# the bundle (dist/Ember/); run it from there, wherever the folder was unpacked:  ./install-desktop-entry.sh
# Undo: rm ~/.local/share/applications/ember.desktop ~/.local/share/icons/hicolor/*/apps/ember.png
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
RESOURCES="$HERE/_internal/resources"
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
[ -x "$HERE/Ember" ] || { echo "run this from the Ember folder (no $HERE/Ember here)" >&2; exit 1; }
for size in 16 24 32 48 64 128 256 512; do
    mkdir -p "$DATA/icons/hicolor/${size}x${size}/apps"
    cp "$RESOURCES/icons/ember-$size.png" "$DATA/icons/hicolor/${size}x${size}/apps/ember.png"
done
mkdir -p "$DATA/applications"
sed -e "s|^Exec=.*|Exec=\"$HERE/Ember\"|" -e "s|^TryExec=.*|TryExec=$HERE/Ember|" \
    "$RESOURCES/ember.desktop" > "$DATA/applications/ember.desktop"
if command -v update-desktop-database >/dev/null 2>&1; then update-desktop-database "$DATA/applications" || true; fi
if command -v gtk-update-icon-cache >/dev/null 2>&1; then gtk-update-icon-cache -q -t "$DATA/icons/hicolor" || true; fi
echo "Ember is in the applications menu: $DATA/applications/ember.desktop"

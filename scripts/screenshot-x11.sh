#!/usr/bin/env bash
# A screenshot of the packaged app as a person sees it: a real X11 window (Xvfb, Qt's xcb platform from the
# bundle), a message typed with xdotool, the reply streamed in. Debian packages needed:
#   xvfb xdotool imagemagick libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 (Qt's xcb plugin wants the last three)
# Usage: scripts/screenshot-x11.sh [BUNDLE_DIR] [OUT.png] [MESSAGE]
set -euo pipefail
BUNDLE=${1:-dist/Ember}
OUT=${2:-out/ember-x11.png}
MESSAGE=${3:-Write a haiku about a campfire.}
DISPLAY_NUM=${DISPLAY_NUM:-:77}
DATA=$(mktemp -d)
mkdir -p "$(dirname "$OUT")"

Xvfb "$DISPLAY_NUM" -screen 0 1400x900x24 -nolisten tcp &
XVFB=$!
APP=
cleanup() {
    [ -n "$APP" ] && kill "$APP" 2>/dev/null || true
    kill "$XVFB" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT
export DISPLAY=$DISPLAY_NUM
unset QT_QPA_PLATFORM
sleep 1

"$BUNDLE/Ember" --data-dir "$DATA" &
APP=$!
# The title names the model once it is loaded.
WID=
for _ in $(seq 120); do
    WID=$(xdotool search --name "Ember — " 2>/dev/null | head -1 || true)
    [ -n "$WID" ] && break
    kill -0 "$APP" || { echo "Ember exited early" >&2; exit 1; }
    sleep 1
done
[ -n "$WID" ] || { echo "no Ember window with a model loaded after 120 s" >&2; exit 1; }
xdotool windowfocus --sync "$WID"
xdotool key --window "$WID" ctrl+l
xdotool type --delay 20 "$MESSAGE"
xdotool key Return
sleep "${REPLY_SECONDS:-20}"
import -window root "$OUT"
echo "$OUT"

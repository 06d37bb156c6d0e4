#!/usr/bin/env bash
# Fetch onnxruntime's C/C++ headers from Debian trixie's libonnxruntime-dev into DEST,
# using a private apt state folder: the system's apt sources are never touched.
# Usage: fetch_ort_headers.sh DEST   (prints the include folder on success)
set -euo pipefail
dest=$(mkdir -p "$1" && cd "$1" && pwd)
inc="$dest/usr/include/onnxruntime"
if [ -f "$inc/onnxruntime_cxx_api.h" ]; then echo "$inc"; exit 0; fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null || { echo "apt-get/dpkg not found" >&2; exit 1; }
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || { echo "$keyring not found (apt-get install debian-archive-keyring)" >&2; exit 1; }
state="$dest/apt"
mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc/preferences.d" "$state/etc/apt.conf.d"
echo "deb [signed-by=$keyring] http://deb.debian.org/debian trixie main" > "$state/etc/sources.list"
opts=(-o Dir::State::lists="$state/lists" -o Dir::Cache="$state/cache"
      -o Dir::Etc::sourcelist="$state/etc/sources.list" -o Dir::Etc::sourceparts=-
      -o Dir::Etc::preferencesparts="$state/etc/preferences.d" -o APT::Sandbox::User=root
      -o Debug::NoLocking=1)
apt-get -qq "${opts[@]}" update >&2
(cd "$state" && apt-get -qq "${opts[@]}" download libonnxruntime-dev >&2)
dpkg -x "$state"/libonnxruntime-dev_*.deb "$dest"
[ -f "$inc/onnxruntime_cxx_api.h" ] || { echo "libonnxruntime-dev had no headers at $inc" >&2; exit 1; }
echo "$inc"

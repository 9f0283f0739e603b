#!/usr/bin/env bash
# A throwaway Orthanc DICOM server with its DICOMweb plugin, answering HTTP on 127.0.0.1 only, for the DICOMweb tests;
# prints its DICOMweb root URL on stdout, everything else on stderr. Installs Debian's orthanc and orthanc-dicomweb when
# missing (as root). Storage, index, configuration, log and orthanc.pid go to FOLDER (default: a new temporary folder);
# the server runs until killed (kill "$(cat FOLDER/orthanc.pid)"). ORTHANC_LUA: a Lua script to load (e.g. a
# ReceivedInstanceFilter). The tests read the URL from SEGX_TEST_DICOMWEB_URL:
#   SEGX_TEST_DICOMWEB_URL="$(bash scripts/ci_orthanc.sh)" && export SEGX_TEST_DICOMWEB_URL
# SEGX_CI_STOP: a file to which the command stopping the server is appended (.ci/run runs it on exit).
set -euo pipefail
PYTHON=${PYTHON:-python3}

plugin_of() { ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/libOrthancDicomWeb.so* 2>/dev/null | head -1; }
if ! command -v Orthanc >/dev/null || [ -z "$(plugin_of)" ]; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >&2
fi
plugin=$(plugin_of) || { echo "ci_orthanc: no DICOMweb plugin (libOrthancDicomWeb.so) after installing orthanc-dicomweb" >&2; exit 1; }

data=${1:-$(mktemp -d /tmp/segx-orthanc-XXXXXX)}
mkdir -p "$data/storage" "$data/index"
read -r http_port dicom_port < <("$PYTHON" -c 'import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))')
lua=()
[ -n "${ORTHANC_LUA:-}" ] && lua=("$(realpath "$ORTHANC_LUA")")
# RemoteAccessAllowed false: Orthanc 1.10 listens on every interface and refuses HTTP requests from other hosts;
# the DICOM port accepts no C-ECHO, C-STORE, C-FIND, C-GET or C-MOVE from unknown modalities (none are configured)
"$PYTHON" - "$data" "$http_port" "$dicom_port" "$plugin" "${lua[@]}" >"$data/orthanc.json" <<'EOF'
import json, sys
data, http_port, dicom_port, plugin, *lua = sys.argv[1:]
print(json.dumps({
    "Name": "segx-ci", "StorageDirectory": f"{data}/storage", "IndexDirectory": f"{data}/index",
    "HttpPort": int(http_port), "DicomPort": int(dicom_port), "DicomAet": "SEGXCI",
    "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomAlwaysAllowEcho": False,
    "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False, "DicomAlwaysAllowGet": False,
    "DicomAlwaysAllowMove": False, "DicomCheckModalityHost": True, "Plugins": [plugin], "LuaScripts": lua,
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
}, indent=1))
EOF
setsid Orthanc "$data/orthanc.json" >"$data/orthanc.log" 2>&1 </dev/null &
echo $! >"$data/orthanc.pid"
url="http://127.0.0.1:$http_port/dicom-web"
for _ in $(seq 120); do
  if ! kill -0 "$(cat "$data/orthanc.pid")" 2>/dev/null; then
    echo "ci_orthanc: Orthanc exited; its log ($data/orthanc.log):" >&2
    tail -20 "$data/orthanc.log" >&2
    exit 1
  fi
  if curl -sf "$url/studies" >/dev/null; then
    echo "ci_orthanc: Orthanc $(curl -s "http://127.0.0.1:$http_port/system" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["Version"])') in $data (pid $(cat "$data/orthanc.pid"))" >&2
    [ -z "${SEGX_CI_STOP:-}" ] || echo "kill $(cat "$data/orthanc.pid") 2>/dev/null || true" >>"$SEGX_CI_STOP"
    echo "$url"
    exit 0
  fi
  sleep 0.5
done
echo "ci_orthanc: $url did not answer within 60 s; the log ($data/orthanc.log):" >&2
tail -20 "$data/orthanc.log" >&2
kill "$(cat "$data/orthanc.pid")"
exit 1

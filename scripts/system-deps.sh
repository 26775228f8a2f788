#!/usr/bin/env bash
# Installs with apt-get the system packages the test suite needs, only where missing.
set -euo pipefail

# command the suite runs -> Debian package that provides it
declare -A NEEDED=(
  [sqlite3]=sqlite3  # tests/test_operations.py: the documented online backup
  [curl]=curl        # tests/test_operations.py: the README's first steps
  [coap-client-notls]=libcoap3-bin  # Efento CoAP tests: libcoap's client
  [mosquitto]=mosquitto             # MQTT tests start their own brokers
  [mosquitto_pub]=mosquitto-clients # MQTT tests and bench: the C publisher
  [systemd-analyze]=systemd         # tests/test_deploy.py: verifies deploy/fieldbridge.service
  [systemd-sysusers]=systemd        # tests/test_deploy.py: deploy/fieldbridge.sysusers.conf
  [influxd]=influxdb                # InfluxDB sink tests start their own influxd (1.x)
  [redis-server]=redis-server       # Redis stream tests start their own redis-server
  [chromium]=chromium               # tests/web/console: Playwright drives Debian's Chromium
)

missing=()
for cmd in "${!NEEDED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEEDED[$cmd]}")
done

if ((${#missing[@]})); then
  echo "installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

#!/usr/bin/env bash
# Start one volumecap data center on 127.0.0.1 with the embedded defaults: a
# master on port 7100 and two servers on ports 7200 and 7201, with their
# state and logs under run/.  It loads the sample caps from conf/ and shows
# them being served.  "bash demo.sh stop" stops the three processes.
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
run=run
master=tcp:127.0.0.1:7100
source scripts/demo-common.sh

if [[ "${1:-start}" == "stop" ]]; then
    stop_processes server-2 server-1 master
    exit 0
fi

require_free_ports demo.sh 7100 7200 7201
install_volumecap

echo "Starting the master"
"$venv/bin/twistd" --pidfile "$run/master.pid" --logfile "$run/master.log" \
    volumecap-master --config conf/master.toml --data-dir "$run/master"
for _ in $(seq 100); do
    "$venv/bin/volumecap" --master "$master" status >/dev/null 2>&1 && break
    sleep 0.1
done

for index in 1 2; do
    port=$((7199 + index))
    echo "Starting server demo-$index on port $port"
    "$venv/bin/twistd" --pidfile "$run/server-$index.pid" --logfile "$run/server-$index.log" \
        volumecap-server --config conf/server.toml --master "$master" \
        --listen "tcp:$port:interface=127.0.0.1" --name "demo-$index" --state-dir "$run/server-$index"
done
for _ in $(seq 100); do
    joined=$("$venv/bin/volumecap" --master "$master" status --json | "$venv/bin/python" -c 'import json, sys; print(len(json.load(sys.stdin)["servers"]))')
    [[ "$joined" -ge 2 ]] && break
    sleep 0.1
done

echo
echo "Loading conf/caps-sample.csv"
"$venv/bin/volumecap" --master "$master" caps import conf/caps-sample.csv || true

cap=campaign-demo-daily
echo
echo "Defining $cap: 1000 a day in New York time"
"$venv/bin/volumecap" --master "$master" caps set "$cap" --interval day \
    --start 2026-01-01 --end 2030-01-01 --total 1000 --timezone America/New_York

echo
echo "Consuming 5 through each server"
for port in 7200 7201; do
    for _ in 1 2 3 4 5; do
        remaining=$("$venv/bin/volumecap" consume --server "tcp:127.0.0.1:$port" "$cap" 1)
    done
    echo "  server on port $port after 5 consumes: $remaining"
done
sleep 1.5  # servers report consumption every second

echo
"$venv/bin/volumecap" --master "$master" status
echo
"$venv/bin/volumecap" --master "$master" caps show "$cap"
echo
echo "The data center is running.  Try, for example:"
echo "  $venv/bin/volumecap caps list"
echo "  $venv/bin/volumecap consume --server tcp:127.0.0.1:7200 $cap 10"
echo "  $venv/bin/volumecap caps plan $cap --until 2027-01-01"
echo "Logs are in $run/.  Stop everything with: bash demo.sh stop"

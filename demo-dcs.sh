#!/usr/bin/env bash
# Start two volumecap data centers on 127.0.0.1 that share caps through the
# local RabbitMQ (127.0.0.1:5672, user guest).  Data center "east" has its
# master on port 7300 and a server on 7400, and "west" its master on 7310
# and a server on 7410.  The script defines a cap at east, shows it at
# west, and consumes at east until east has drawn part of west's share.
# "bash demo-dcs.sh stop" stops the four processes.
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
run=run/dcs
east=tcp:127.0.0.1:7300
west=tcp:127.0.0.1:7310
spec=/usr/share/amqp/specs/0-9-1-rabbit/amqp0-9-1.stripped.extended.xml

source scripts/demo-common.sh

if [[ "${1:-start}" == "stop" ]]; then
    stop_processes east-server west-server east west
    exit 0
fi

if [[ ! -f "$spec" ]]; then
    echo "Missing $spec; install it with: apt-get install amqp-specs" >&2
    exit 1
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    echo "RabbitMQ is not listening on 127.0.0.1:5672; start it with: rabbitmq-server -detached" >&2
    exit 1
fi
require_free_ports demo-dcs.sh 7300 7310 7400 7410
install_volumecap

# The password stays out of the URL and the process list.
export VOLUMECAP_AMQP_PASSWORD=guest
for dc in east west; do
    port=$([[ $dc == east ]] && echo 7300 || echo 7310)
    echo "Starting the master of $dc on port $port"
    "$venv/bin/twistd" --pidfile "$run/$dc.pid" --logfile "$run/$dc.log" \
        volumecap-master --dc "$dc" --dcs east,west --amqp amqp://guest@127.0.0.1:5672/ \
        --amqp-exchange volumecap-demo --listen "tcp:$port:interface=127.0.0.1" --data-dir "$run/$dc"
done
for dc in east west; do
    master=$([[ $dc == east ]] && echo "$east" || echo "$west")
    port=$([[ $dc == east ]] && echo 7400 || echo 7410)
    for _ in $(seq 100); do
        "$venv/bin/volumecap" --master "$master" status >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "Starting a server of $dc on port $port"
    "$venv/bin/twistd" --pidfile "$run/$dc-server.pid" --logfile "$run/$dc-server.log" \
        volumecap-server --master "$master" --listen "tcp:$port:interface=127.0.0.1" \
        --name "$dc-1" --state-dir "$run/$dc-server"
done
for _ in $(seq 100); do
    "$venv/bin/volumecap" --master "$east" status | grep -q "broker: connected" \
        && "$venv/bin/volumecap" --master "$west" status | grep -q "broker: connected" && break
    sleep 0.1
done

cap=campaign-shared
echo
echo "Defining $cap at east: 1000 a day, so each data center's share is 500"
"$venv/bin/volumecap" --master "$east" caps set "$cap" --interval day \
    --start 2026-01-01 --end 2030-01-01 --total 1000
for _ in $(seq 100); do
    "$venv/bin/volumecap" --master "$west" caps show "$cap" >/dev/null 2>&1 && break
    sleep 0.1
done
echo "west knows it too:"
"$venv/bin/volumecap" --master "$west" caps list

echo
echo "Consuming 700 at east, more than its share of 500"
"$venv/bin/python" - <<'PYTHON'
import sys
import time

from volumecap.client import BlockingClient
from volumecap.errors import UnavailableError

served = 0
deadline = time.monotonic() + 60
with BlockingClient("tcp:127.0.0.1:7400") as client:
    while served < 700:
        try:
            client.consume("campaign-shared", 10)
        except UnavailableError as error:
            # A top-up from west took longer than the server waits.
            if time.monotonic() > deadline:
                sys.exit(f"gave up after 60 s with {served} served: {error}; see run/dcs/*.log")
            continue
        served += 10
print(f"served {served} at east")
PYTHON
sleep 1.5  # figures travel between data centers every second

echo
"$venv/bin/volumecap" --master "$east" caps show "$cap"
echo
"$venv/bin/volumecap" --master "$east" status
echo
echo "Both data centers are running.  Logs are in $run/."
echo "Stop everything with: bash demo-dcs.sh stop"

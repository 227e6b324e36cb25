# Functions shared by demo.sh and demo-dcs.sh; they set $venv and $run
# before sourcing this file.

# Stop the processes whose pid files "$run/NAME.pid" name, in the order given,
# waiting up to 10 s for each to exit.
stop_processes() {
    local name pid
    for name in "$@"; do
        if [[ -f "$run/$name.pid" ]]; then
            pid=$(cat "$run/$name.pid")
            echo "Stopping $name (pid $pid)"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
    done
}

# Exit with a message if anything listens on one of the given ports.
require_free_ports() {
    local script=$1 port
    shift
    for port in "$@"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "Port $port on 127.0.0.1 is in use; stop what listens there (or run 'bash $script stop') and try again." >&2
            exit 1
        fi
    done
}

# Create $venv if needed and install volumecap into it, keeping pip's output
# in $run/pip.log unless installing fails.
install_volumecap() {
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "Creating $venv"
        python3 -m venv "$venv"
    fi
    mkdir -p "$run"
    echo "Installing volumecap into $venv (pip's output goes to $run/pip.log)"
    if ! { "$venv/bin/pip" install --upgrade pip && "$venv/bin/pip" install .; } >"$run/pip.log" 2>&1; then
        cat "$run/pip.log" >&2
        echo "Installing failed; pip's output is above." >&2
        exit 1
    fi
}

# Shared by scripts/bench: a throwaway PostgreSQL cluster on 127.0.0.1 with
# scram-sha-256 and TLS from a throwaway CA, as tests/support/src/postgres.rs
# starts one. Source it from the repository root.

# Starts a cluster in a folder of its own (the server's user must own it)
# with role `app` (password `app-initial-pw`); sets $pg_port, $pg_ca (the CA
# for --ca-file) and $pg_stop (the command that stops it).
start_postgres() {
    local dir bin run=()
    dir=$(mktemp -d)
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    [ -x "$bin/initdb" ] || { echo "PostgreSQL's server is missing (Debian package postgresql)" >&2; return 1; }
    pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    pg_ca="$dir/ca.pem"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
        -addext basicConstraints=critical,CA:TRUE -keyout "$dir/ca.key" -out "$pg_ca" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    openssl x509 -req -in "$dir/server.csr" -CA "$pg_ca" -CAkey "$dir/ca.key" -CAcreateserial -days 1 \
        -extfile <(echo subjectAltName=IP:127.0.0.1) -out "$dir/server.crt" 2>/dev/null
    echo postgres-superuser-pw >"$dir/pw"
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres: "$dir"
        run=(runuser -u postgres --)
    fi
    "${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 --pwfile="$dir/pw" \
        --no-sync --no-instructions >/dev/null
    cp "$dir/server.crt" "$dir/server.key" "$dir/data/"
    chmod 600 "$dir/data/server.key"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/data/server.crt" "$dir/data/server.key"
    printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nssl = on\n" \
        "$pg_port" "$dir" >>"$dir/data/postgresql.conf"
    echo "hostssl all all 127.0.0.1/32 scram-sha-256" >"$dir/data/pg_hba.conf"
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    pg_stop="${run[*]} $bin/pg_ctl -D $dir/data -m immediate stop"
    PGPASSWORD=postgres-superuser-pw psql "host=127.0.0.1 port=$pg_port user=postgres dbname=postgres" \
        -X -q -c "CREATE ROLE app LOGIN PASSWORD 'app-initial-pw'"
}

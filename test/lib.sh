# Shell helpers shared by the test runner, the demo and the benchmarks.
# Source it; it defines functions only.

PG_CONFIG=${PG_CONFIG:-pg_config}
PG_BINDIR=$($PG_CONFIG --bindir)
LIVEKPI_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Run a command as the postgres user when we are root (initdb refuses root),
# else as ourselves.
as_pg() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- env PATH="$PG_BINDIR:$PATH" "$@"
	else
		env PATH="$PG_BINDIR:$PATH" "$@"
	fi
}

# A free TCP port on loopback.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# cluster_start DIR PORT [extra postgresql.conf lines...]
# initdb (if needed) and start a throwaway cluster with livekpi preloaded,
# owned by the postgres user, listening on 127.0.0.1 and a socket in DIR.
cluster_start() {
	local dir=$1 port=$2
	shift 2
	mkdir -p "$dir"
	[ "$(id -u)" = 0 ] && chown postgres: "$dir"
	if [ ! -f "$dir/data/PG_VERSION" ]; then
		as_pg initdb -D "$dir/data" -U postgres --auth=trust --no-sync >/dev/null
		{
			cat "$LIVEKPI_TOP/test/livekpi.conf"
			echo "port = $port"
			echo "listen_addresses = '127.0.0.1'"
			echo "unix_socket_directories = '$dir'"
			echo "livekpi.database = 'postgres'"
			for line in "$@"; do echo "$line"; done
		} | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
	fi
	as_pg pg_ctl -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

cluster_stop() {
	local dir=$1
	as_pg pg_ctl -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
}

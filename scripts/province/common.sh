# Shared settings of the province scripts (a PostgreSQL server per city); sourced, not run.
set -euo pipefail
PROVINCE_DIR=${PROVINCE_DIR:-/var/tmp/gasworks-province}
PROVINCE_CITIES=(${PROVINCE_CITIES:-4101:郑州:6401 4103:洛阳:6402 4105:安阳:6403})  # code:name:port
PROVINCE_DBNAME=${PROVINCE_DBNAME:-gasworks}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -n | tail -n 1)/bin}

as_postgres() { runuser -u postgres -- env PATH="$PG_BIN:$PATH" "$@"; }
city_field() { echo "$1" | cut -d: -f"$2"; }   # city_field CITY 1|2|3: code, name, port
city_of() { for city in "${PROVINCE_CITIES[@]}"; do [ "$(city_field "$city" 1)" = "$1" ] && { echo "$city"; return 0; }; done; echo "no city $1 (cities: ${PROVINCE_CITIES[*]})" >&2; return 1; }
city_dir() { echo "$PROVINCE_DIR/city-$1"; }
start_city() { # start_city CODE: its server (initdb the first time), in a session of its own
  local city dir port; city=$(city_of "$1"); dir=$(city_dir "$1"); port=$(city_field "$city" 3)
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    mkdir -p "$dir"; chown postgres:postgres "$dir"
    as_postgres initdb -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log"
  fi
  as_postgres setsid pg_ctl -D "$dir/data" -l "$dir/postgres.log" -w -t 30 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
  as_postgres psql -X -q -h 127.0.0.1 -p "$port" -d postgres -tc "select 1 from pg_database where datname = '$PROVINCE_DBNAME'" | grep -q 1 \
    || as_postgres createdb -h 127.0.0.1 -p "$port" "$PROVINCE_DBNAME"
}
province_file() { # the province file for `gasworks province …`
  for city in "${PROVINCE_CITIES[@]}"; do
    local code; code=$(city_field "$city" 1)
    printf '[[cities]]\ncode = "%s"\nname = "%s"\ndatabase_url = "postgresql://postgres@127.0.0.1:%s/%s"\nchannels = ["wallet-%s"]\n\n' \
      "$code" "$(city_field "$city" 2)" "$(city_field "$city" 3)" "$PROVINCE_DBNAME" "$code"
  done
}

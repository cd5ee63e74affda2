# Sourced by benchmarks that need a local Garage cluster: `start_cluster N` starts N nodes on
# 127.0.0.1 under "$work/garageN" (replication N) and sets endpoint, admin, key_id, secret_key
# (a bucket "bench" the key may use); `requests` prints "PUT GET OTHER" so far. The caller sets
# GARAGE (the binary), work, compression_line and a pids array (killed at its exit).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_cluster N → sets endpoint, admin, key_id, secret; a bucket "bench" the key may use.
start_cluster() {
  local n=$1 i secret
  secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  local cfgs=() ids=()
  for ((i = 0; i < n; i++)); do
    local d="$work/garage$n/node$i" rpc s3 adm
    mkdir -p "$d/meta" "$d/data"
    rpc=$(free_port); s3=$(free_port); adm=$(free_port)
    cat > "$d/garage.toml" <<EOF
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "sqlite"
replication_factor = $n
$compression_line
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$adm"
EOF
    RUST_LOG=garage=warn "$GARAGE" -c "$d/garage.toml" server > "$d/log" 2>&1 &
    pids+=($!)
    cfgs+=("$d/garage.toml")
    if [ "$i" = 0 ]; then endpoint="http://127.0.0.1:$s3"; admin="http://127.0.0.1:$adm"; fi
  done
  g() { RUST_LOG=error "$GARAGE" -c "${cfgs[0]}" "$@"; }
  until g status >/dev/null 2>&1; do sleep 0.2; done
  for ((i = 0; i < n; i++)); do ids+=("$(RUST_LOG=error "$GARAGE" -c "${cfgs[$i]}" node id -q)"); done
  for ((i = 1; i < n; i++)); do until g node connect "${ids[$i]}" >/dev/null 2>&1; do sleep 0.2; done; done
  for id in "${ids[@]}"; do g layout assign -z dc1 -c 10G "${id%@*}" >/dev/null; done
  g layout apply --version 1 >/dev/null
  until g bucket create bench >/dev/null 2>&1; do sleep 0.2; done
  local out; out=$(g key create bench-key)
  key_id=$(awk -F': *' '/Key ID/ {print $2}' <<<"$out")
  secret_key=$(awk -F': *' '/Secret key/ {print $2}' <<<"$out")
  g bucket allow --read --write --owner bench --key bench-key >/dev/null
}

# requests → "PUT GET OTHER" so far, from Garage's Prometheus counters (first node only: with
# one endpoint every request enters there).
requests() {
  [ -n "$admin" ] || { echo "0 0 0"; return; }
  curl -s "$admin/metrics" | awk '
    /^api_s3_request_counter\{/ {
      n = $NF; ep = $0; sub(/.*api_endpoint="/, "", ep); sub(/".*/, "", ep)
      if (ep ~ /^(PutObject|UploadPart|CreateMultipartUpload|CompleteMultipartUpload)$/) put += n
      else if (ep ~ /^(GetObject|HeadObject)$/) get += n
      else other += n
    }
    END { printf "%d %d %d\n", put, get, other }'
}


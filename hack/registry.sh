# shellcheck shell=bash
# The local cluster's OCI registry: CNCF Distribution (`registry`, built from its Go module
# like the other tools), for what users do on a real cluster: push released images and the
# chart (`make release`), and let the kubelet pull them. Source it after hack/lib.sh,
# `use_state DIR` and hack/node.sh (node_up starts it with the real node).
#
#   address   $NODE_HOST_IP:$REGISTRY_PORT only (the node's bridge): the node's containerd,
#             BuildKit and helm run on this machine, and trainer pods push models to it
#             (output.oci: FTO-INPUT admits the port from the bridge); nothing outside the
#             machine can reach it.
#   TLS       a serving certificate from the cluster's CA ($PKI/registry.crt); containerd
#             trusts it through hosts.toml ($NODE_STATE/certs.d), BuildKit through its
#             config, clients through $PKI/ca.crt (FTO_REGISTRY_CA in the env file).
#   auth      htpasswd (bcrypt), one user with a random password kept in
#             $STATE/registry/credentials.env (0600), and a Docker-style auth file for
#             clients ($STATE/registry/auth.json, config.json's format, which buildctl
#             (DOCKER_CONFIG) and helm (--registry-config) read: FTO_REGISTRY_AUTH).
#   storage   $STATE/registry/data: gone with `cluster-down --purge`.

REGISTRY_USER=fto

registry_dir() { echo "$STATE/registry"; }
registry_addr() { echo "$NODE_HOST_IP:$REGISTRY_PORT"; }
registry_ready() {
  # Up and asking for credentials: /v2/ answers 401 without them.
  local code
  code="$(curl -sS --max-time 2 -o /dev/null -w '%{http_code}' --cacert "$PKI/ca.crt" \
    "https://$(registry_addr)/v2/" 2>/dev/null)" || return 1
  [[ "$code" == 401 ]]
}

registry_certs() {
  if [[ -f "$PKI/registry.crt" ]] && ! openssl x509 -noout -ext subjectAltName -in "$PKI/registry.crt" |
    grep -q "IP Address:$NODE_HOST_IP"; then
    rm -f "$PKI/registry.crt"
  fi
  [[ -f "$PKI/registry.crt" && -f "$PKI/registry.key" ]] && return 0
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/registry.key" -subj "/CN=fto-registry" \
    -out "$PKI/registry.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/registry.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile <(printf '%s\n' 'keyUsage=critical,digitalSignature,keyEncipherment' \
      'extendedKeyUsage=serverAuth' 'subjectAltName=IP:'"$NODE_HOST_IP"',IP:127.0.0.1,DNS:localhost') \
    -out "$PKI/registry.crt" 2>/dev/null
  rm -f "$PKI/registry.csr"
}

registry_credentials() {
  local dir auth mask
  dir="$(registry_dir)"
  mkdir -p "$dir/data"
  chmod 700 "$dir"
  mask="$(umask)"
  umask 077
  [[ -f "$dir/credentials.env" ]] ||
    printf 'REGISTRY_PASSWORD=%s\nREGISTRY_HTTP_SECRET=%s\n' "$(openssl rand -hex 16)" \
      "$(openssl rand -hex 16)" >"$dir/credentials.env"
  # shellcheck disable=SC1091
  source "$dir/credentials.env"
  printf '%s\n' "$REGISTRY_PASSWORD" | "$(fto_bin htpasswd)" "$REGISTRY_USER" >"$dir/htpasswd"
  auth="$(printf '%s:%s' "$REGISTRY_USER" "$REGISTRY_PASSWORD" | base64 -w0)"
  printf '{"auths": {"%s": {"auth": "%s"}}}\n' "$(registry_addr)" "$auth" >"$dir/auth.json"
  umask "$mask"
}

registry_config() {
  local dir mask
  dir="$(registry_dir)"
  mask="$(umask)"
  umask 077
  write_if_changed "$dir/config.yml" <<EOF
# Written by hack/cluster-up.sh (hack/registry.sh).
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $(registry_addr)
  secret: $REGISTRY_HTTP_SECRET
  tls:
    certificate: $PKI/registry.crt
    key: $PKI/registry.key
auth:
  htpasswd:
    realm: fto-registry
    path: $dir/htpasswd
EOF
  umask "$mask"
}

# registry_hosts_toml: the node's containerd trusts the registry through the cluster's CA
# (config_path in containerd.toml; no insecure registries). Called by node_write_configs.
registry_hosts_toml() {
  local dir
  dir="$NODE_STATE/certs.d/$(registry_addr)"
  mkdir -p "$dir"
  write_if_changed "$dir/hosts.toml" <<EOF
# Written by hack/cluster-up.sh (hack/registry.sh).
server = "https://$(registry_addr)"

[host."https://$(registry_addr)"]
  capabilities = ["pull", "resolve", "push"]
  ca = "$PKI/ca.crt"
EOF
}

start_registry() {
  registry_certs
  registry_credentials
  registry_config
  start_proc registry "$(fto_bin registry)" serve "$(registry_dir)/config.yml"
  wait_until registry "registry on https://$(registry_addr)" "$TIMEOUT" registry_ready
}

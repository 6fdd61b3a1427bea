#!/usr/bin/env bash
# ctest: parallel
# deploy/k8s: the Go checker (deploy/k8s/check) decodes every manifest
# strictly into its k8s.io/api type and evaluates the pod template against
# the restricted Pod Security Standard; the manifests pass, and the relay's
# configuration in the ConfigMap passes the relay's own parser. Then eight
# broken copies must fail, each for its own reason: a misspelt field, a
# container allowed to escalate privileges, a sidecar that is not native, a
# volume naming a Secret key that does not exist, a sidecar readinessProbe
# on /readyz, the ConfigMap mounted with subPath, -c naming no file of it
# and a probe on another port than the metrics one.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH
command -v go >/dev/null ||
    fail "no Go toolchain in PATH: Go 1.21 or newer is needed (it fetches the 1.22 toolchain go.mod asks for from the Go module proxy; Debian 12 golang-go 1.19 is too old)"
K8S="$OUTBOXD_SOURCE_DIR/deploy/k8s"
# Modules come from the Go proxy into the module cache, as go.sum pins them.
(cd "$K8S/check" && go build -o "$WORK/k8scheck" .) >"$WORK/go-build.log" 2>&1 ||
    fail "building the checker: $(tail -n 20 "$WORK/go-build.log")"

mkdir -p "$WORK/cm"
"$WORK/k8scheck" -extract "$WORK/cm" "$K8S" >"$WORK/ok.out" 2>&1 ||
    fail "manifests rejected: $(cat "$WORK/ok.out")"
log "$(cat "$WORK/ok.out")"

# The ConfigMap's outboxd.yaml passes the relay's own parser: `check` exits
# 2 for a configuration error and 1 when it only cannot reach the cluster's
# hosts (which do not exist here). The password file is the Secret's mount
# in the pod; point it at a local file.
printf 'placeholder\n' >"$WORK/payment-db"
sed -i "s|/etc/outboxd/secrets/payment-db|$WORK/payment-db|" "$WORK/cm/outboxd.yaml"
rc=0
timeout 120 "$OUTBOXD_BIN" check -c "$WORK/cm/outboxd.yaml" >"$WORK/cm.out" 2>&1 || rc=$?
[ $rc = 1 ] || fail "outboxd check on the ConfigMap's configuration: exit $rc: $(cat "$WORK/cm.out")"
log "ConfigMap outboxd.yaml parses; check then reports: $(grep -c . "$WORK/cm.out") line(s), e.g. $(head -n 1 "$WORK/cm.out" | cut -c 1-120)"

# mutate NAME SED_EXPR FILE EXPECTED_MESSAGE
mutate() {
    local name=$1 expr=$2 file=$3 want=$4
    rm -rf "$WORK/$name"
    cp -r "$K8S" "$WORK/$name"
    sed -i "$expr" "$WORK/$name/$file"
    cmp -s "$K8S/$file" "$WORK/$name/$file" && fail "$name: the mutation changed nothing"
    if "$WORK/k8scheck" "$WORK/$name" >"$WORK/$name.out" 2>&1; then
        fail "$name: accepted"
    fi
    grep -q -- "$want" "$WORK/$name.out" || fail "$name: expected '$want', got: $(cat "$WORK/$name.out")"
    log "$name rejected: $(grep -m1 -- "$want" "$WORK/$name.out")"
}
mutate typo 's/terminationGracePeriodSeconds:/terminationGracePeriodSecond:/' deployment.yaml \
    'unknown field'
mutate escalation '0,/allowPrivilegeEscalation: false/s//allowPrivilegeEscalation: true/' \
    deployment.yaml 'restricted Pod Security Standard'
mutate not_native '/restartPolicy: Always/d' deployment.yaml 'not a native sidecar'
mutate no_key 's/^  payment-db: /  other-db: /' secret.yaml 'has no key payment-db'
# The sidecar's readiness would gate the pod's (a Kafka outage would take
# the service out); a subPath mount never sees a ConfigMap update.
mutate sidecar_readiness '0,/^          resources:/s||          readinessProbe:\n            httpGet:\n              path: /readyz\n              port: metrics\n          resources:|' \
    deployment.yaml 'readinessProbe on /readyz would make the pod unready'
mutate subpath 's|^              mountPath: /etc/outboxd/config$|              mountPath: /etc/outboxd/config/outboxd.yaml\n              subPath: outboxd.yaml|' \
    deployment.yaml 'with subPath outboxd.yaml'
mutate probe_port '0,/port: metrics/s//port: 8080/' deployment.yaml 'probes port 8080, not the metrics port'
mutate config_path 's|"/etc/outboxd/config/outboxd.yaml"|"/etc/outboxd/outboxd.yaml"|' deployment.yaml \
    'is no file of a mounted ConfigMap'
log "PASS"

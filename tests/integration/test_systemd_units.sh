#!/usr/bin/env bash
# ctest: parallel
# deploy/systemd units: `systemd-analyze verify` finds nothing to say about
# outboxd.service and an instance of outboxd@.service (unknown keys, bad
# values, a missing binary are all printed, so any output fails), and
# `systemd-analyze security --offline=true` rates both under 2.0. No running
# systemd is needed. Also checks that a password_file under
# ${CREDENTIALS_DIRECTORY} (what LoadCredential= provides) is read.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

command -v systemd-analyze >/dev/null || fail "systemd-analyze missing (apt-get install systemd)"
UNITS="$OUTBOXD_SOURCE_DIR/deploy/systemd"
mkdir -p "$WORK/units"
# The units name the installed binary; verify checks that it is executable.
for f in outboxd.service outboxd@.service; do
    grep -q '^ExecStart=/usr/local/bin/outboxd run -c ' "$UNITS/$f" || fail "$f: unexpected ExecStart"
    sed "s|/usr/local/bin/outboxd|$OUTBOXD_BIN|" "$UNITS/$f" >"$WORK/units/$f"
done
ln -s outboxd@.service "$WORK/units/outboxd@payment.service"

for unit in outboxd.service outboxd@payment.service; do
    out=$(cd "$WORK/units" && systemd-analyze verify "./$unit" 2>&1) || fail "verify $unit: $out"
    [ -z "$out" ] || fail "verify $unit printed: $out"
    sec=$(cd "$WORK/units" && systemd-analyze security --offline=true "./$unit" 2>&1) ||
        fail "security $unit: $sec"
    score=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
    [ -n "$score" ] || fail "no exposure score for $unit: $sec"
    log "$unit: systemd-analyze verify clean, exposure $score"
    python3 -c "import sys; sys.exit(0 if float('$score') < 2.0 else 1)" ||
        fail "$unit exposure $score is not under 2.0: $(printf '%s\n' "$sec" | grep '✗')"
    for key in Type=notify WatchdogSec= DynamicUser=yes ProtectSystem=strict NoNewPrivileges=yes \
        PrivateTmp=yes 'CapabilityBoundingSet=$' 'SystemCallFilter=@system-service' \
        'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' LoadCredential=; do
        grep -q "^$key" "$WORK/units/${unit/payment/}" || fail "$unit lacks $key"
    done
done

# A unit file with a typo must fail this test's check (the check can fail).
cp "$WORK/units/outboxd.service" "$WORK/units/typo.service"
sed -i 's/^ProtectSystem=strict/ProtectSystem=strictest/' "$WORK/units/typo.service"
out=$(cd "$WORK/units" && systemd-analyze verify ./typo.service 2>&1 || true)
[ -n "$out" ] || fail "verify is silent about ProtectSystem=strictest"

# The credential path the units document: password_file under
# ${CREDENTIALS_DIRECTORY}, expanded from the environment systemd sets.
mkdir -p "$WORK/creds"
printf 's3cret-not-logged\n' >"$WORK/creds/payment-db"
chmod 600 "$WORK/creds/payment-db"
cat >"$WORK/cred.yaml" <<'YAML'
kafka:
  bootstrap_servers: 127.0.0.1:1
sources:
  - name: payment
    dsn: "host=127.0.0.1 port=1 dbname=payment user=outboxd"
    password_file: ${CREDENTIALS_DIRECTORY}/payment-db
    tables:
      - table: public.outbox
YAML
rc=0
env -u CREDENTIALS_DIRECTORY "$OUTBOXD_BIN" status -c "$WORK/cred.yaml" >"$WORK/cred.out" 2>&1 || rc=$?
[ $rc = 2 ] || fail "unset CREDENTIALS_DIRECTORY: exit $rc, expected 2"
grep -q "CREDENTIALS_DIRECTORY" "$WORK/cred.out" || fail "error does not name CREDENTIALS_DIRECTORY: $(cat "$WORK/cred.out")"
rc=0
CREDENTIALS_DIRECTORY="$WORK/creds" timeout 60 "$OUTBOXD_BIN" status -c "$WORK/cred.yaml" \
    >"$WORK/cred.out" 2>&1 || rc=$?
# Nothing listens on port 1: the password was read and the status ran (exit 1, unreachable).
[ $rc = 1 ] || fail "with the credential: exit $rc: $(cat "$WORK/cred.out")"
grep -q "UNREACHABLE" "$WORK/cred.out" || fail "status did not try the database: $(cat "$WORK/cred.out")"
if grep -q "s3cret-not-logged" "$WORK/cred.out"; then fail "the password appears in status output"; fi

# The install steps in each unit's header, followed under a scratch root,
# leave a configuration the relay can read under DynamicUser= (a uid of its
# own, no groups): `outboxd status` as such a uid gets past the file (exit
# 1, the database unreachable), not "cannot read ... Permission denied"
# (exit 2; the steps once installed it 0640 root).
SCRATCH=()
extra_cleanup() { for d in "${SCRATCH[@]}"; do rm -rf "$d"; done; }
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
    DYN_UID=61874
    for unit in outboxd.service outboxd@.service; do
        R=$(mktemp -d /tmp/outboxd-units.XXXXXX)
        SCRATCH+=("$R")
        chmod 755 "$R"
        mkdir -p "$R/src" "$R/creds"
        for f in outboxd.yaml payment.yaml; do cp "$WORK/cred.yaml" "$R/src/$f"; done
        for f in payment-db db-password; do
            printf 's3cret-not-logged\n' >"$R/src/$f"
            cp "$R/src/$f" "$R/creds/$f"
        done
        chown -R "$DYN_UID:$DYN_UID" "$R/creds"
        chmod 700 "$R/creds"
        cp "$UNITS/$unit" "$R/src/"
        install -m 0755 "$OUTBOXD_BIN" "$R/outboxd"
        sed -n 's/^#   \(install .*\)/\1/p' "$UNITS/$unit" | grep -v '/etc/systemd/' |
            sed "s|/etc/|$R/etc/|g" >"$R/steps.sh"
        grep -q "install -m 06.. .*\.yaml $R/etc/outboxd/" "$R/steps.sh" ||
            fail "$unit: no install step for the configuration in its header: $(cat "$R/steps.sh")"
        (cd "$R/src" && umask 022 && bash -e "$R/steps.sh") || fail "$unit: the header's install steps failed"
        conf=$(sed -n 's|^ExecStart=.* -c /etc/\(.*\)$|\1|p' "$UNITS/$unit" | sed 's/%i/payment/')
        [ -f "$R/etc/$conf" ] || fail "$unit: the steps did not install /etc/$conf"
        rc=0
        setpriv --reuid="$DYN_UID" --regid="$DYN_UID" --clear-groups \
            env CREDENTIALS_DIRECTORY="$R/creds" timeout 60 "$R/outboxd" status -c "$R/etc/$conf" \
            >"$WORK/dyn.out" 2>&1 || rc=$?
        [ $rc = 1 ] && grep -q "UNREACHABLE" "$WORK/dyn.out" ||
            fail "$unit: as a dynamic uid, after the header's install steps: exit $rc: $(head -c 400 "$WORK/dyn.out")"
        log "$unit: the header's install steps leave /etc/$conf readable by a DynamicUser uid ($(stat -c %a "$R/etc/$conf"), directory $(stat -c %a "$R/etc/outboxd"))"
    done
else
    log "not root: the DynamicUser read check of the install steps is skipped"
fi
log "PASS"

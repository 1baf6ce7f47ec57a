#!/usr/bin/env bash
# conf/gen-test-certs.sh DIR [--force] - self-signed TLS material for tests and the local stack.
#
# Writes DIR/cert.pem and DIR/key.pem: an EC P-256 key and a self-signed certificate (no CA;
# clients trust the certificate itself, e.g. curl --cacert DIR/cert.pem) for CN=localhost with
# SANs DNS:localhost, DNS:*.modelgate.local (host routes such as digits-production.modelgate.local)
# and IP:127.0.0.1. NOT for production.
#
# Idempotent: when both files exist and the certificate is valid for at least another day, does
# nothing; --force regenerates. Files are written beside the targets and renamed into place, so a
# reader never sees a half-written or mismatched pair. The key is mode 0600.
set -euo pipefail

usage() { echo "usage: $0 DIR [--force]" >&2; exit 2; }
DIR='' FORCE=0
for a in "$@"; do
    case $a in
    --force) FORCE=1 ;;
    -h | --help) usage ;;
    -*) echo "unknown option: $a" >&2; usage ;;
    *) [ -z "$DIR" ] || usage; DIR=$a ;;
    esac
done
[ -n "$DIR" ] || usage
command -v openssl >/dev/null || { echo "$0: openssl not found (scripts/install-deps.sh installs it)" >&2; exit 1; }

mkdir -p "$DIR"
CERT=$DIR/cert.pem KEY=$DIR/key.pem
if [ "$FORCE" = 0 ] && [ -s "$CERT" ] && [ -s "$KEY" ] &&
    openssl x509 -in "$CERT" -noout -checkend 86400 >/dev/null 2>&1; then
    echo "gen-test-certs: $CERT and $KEY exist (use --force to regenerate)"
    exit 0
fi

tmp_cert=$(mktemp "$DIR/.cert.XXXXXX") tmp_key=$(mktemp "$DIR/.key.XXXXXX")
trap 'rm -f "$tmp_cert" "$tmp_key"' EXIT
# 10 years: test material must not expire under a test run that is checked out years later;
# the -checkend above regenerates it if it ever does.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 -sha256 \
    -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,DNS:*.modelgate.local,IP:127.0.0.1" \
    -keyout "$tmp_key" -out "$tmp_cert" 2>/dev/null
chmod 600 "$tmp_key"
chmod 644 "$tmp_cert"
mv -f "$tmp_key" "$KEY"
mv -f "$tmp_cert" "$CERT"
echo "gen-test-certs: wrote $CERT and $KEY"

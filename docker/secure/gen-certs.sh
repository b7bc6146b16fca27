#!/usr/bin/env bash
# Makes the certificates, keys and secrets a secured Strand needs, with openssl:
#   bash docker/secure/gen-certs.sh [OUT_DIR] [EXTRA_HOST...]
# OUT_DIR (default docker/secure/generated) gets:
#   ca.pem, ca.key            a private certificate authority (10 years)
#   broker.pem, broker.key    the server certificate of every Strand listener, valid for
#                             localhost, 127.0.0.1, ::1, strand, strand-saga, strand-bridge and
#                             each EXTRA_HOST (a name or an IP address)
#   admin.pem, admin.key      client certificates (CN=admin, CN=alice, CN=saga): with mutual TLS
#   alice.pem, alice.key      the principal is User:<CN>
#   saga.pem, saga.key
#   untrusted-ca.pem, mallory.pem, mallory.key
#                             a certificate from another CA, which Strand must refuse
#   jwt-rs256.key, jwt-rs256.pem, jwt-es256.key, jwt-es256.pem
#                             key pairs for signing and verifying the HTTP APIs' bearer tokens
#   admin.password, alice.password, saga.password
#                             random SCRAM passwords
# Existing files are kept, so running it twice changes nothing; delete OUT_DIR to start over.
# Every key is written readable by its owner only.
set -euo pipefail

out="${1:-$(dirname "$0")/generated}"
shift || true
mkdir -p "$out"
cd "$out"
umask 077

command -v openssl >/dev/null || { echo "gen-certs: openssl is needed" >&2; exit 2; }

# An EC P-256 key (fast, and every client in the tests reads it) in PKCS#8.
new_key() { [ -f "$1" ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ca() { # name subject
  new_key "$1.key"
  [ -f "$1.pem" ] || openssl req -x509 -new -key "$1.key" -sha256 -days 3650 -subj "$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$1.pem"
}

leaf() { # name ca subject extensions
  new_key "$1.key"
  if [ ! -f "$1.pem" ]; then
    openssl req -new -key "$1.key" -subj "$3" -out "$1.csr"
    printf '%s\n' "$4" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -sha256 \
      -days 825 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  fi
}

ca ca "/CN=Strand test CA"
sans="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:strand,DNS:strand-saga,DNS:strand-bridge"
for host in "$@"; do
  if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then sans+=",IP:$host"; else sans+=",DNS:$host"; fi
done
leaf broker ca "/CN=strand-broker" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$sans"
for user in admin alice saga; do
  leaf "$user" ca "/CN=$user" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
  [ -f "$user.password" ] || openssl rand -hex 16 >"$user.password"
done

ca untrusted-ca "/CN=Somebody else's CA"
leaf mallory untrusted-ca "/CN=admin" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"

[ -f jwt-rs256.key ] || openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out jwt-rs256.key 2>/dev/null
[ -f jwt-rs256.pem ] || openssl pkey -in jwt-rs256.key -pubout -out jwt-rs256.pem
new_key jwt-es256.key
[ -f jwt-es256.pem ] || openssl pkey -in jwt-es256.key -pubout -out jwt-es256.pem

# Certificates are public; the containers' users must read the keys they are given.
chmod 644 ./*.pem
chmod 640 ./*.key ./*.password
echo "gen-certs: wrote $(ls | wc -l) files to $PWD"

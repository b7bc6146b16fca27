"""Security settings for the Python peer scripts, from `PEER_*` environment variables.

- `PEER_SECURITY_PROTOCOL`: PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL.
- `PEER_SASL_MECHANISM`, `PEER_SASL_USERNAME`, `PEER_SASL_PASSWORD`: for SASL_*.
- `PEER_SSL_CA`: the CA bundle that signed the broker's certificate; `PEER_SSL_CERT` and
  `PEER_SSL_KEY`: the client's certificate and key, for mutual TLS.
- `PEER_MODE`: `roundtrip` (default), or `refused` / `denied` to try one produce and report how
  it was refused (a fourth command-line argument sets it too).
"""
import os
import ssl
import sys


def env(name):
    value = os.environ.get(name)
    return value if value else None


def mode():
    return sys.argv[4] if len(sys.argv) > 4 else env("PEER_MODE") or "roundtrip"


def ssl_context():
    if env("PEER_SSL_CA") is None:
        return None
    context = ssl.create_default_context(cafile=env("PEER_SSL_CA"))
    if env("PEER_SSL_CERT"):
        context.load_cert_chain(env("PEER_SSL_CERT"), env("PEER_SSL_KEY"))
    return context


def kafka_python_settings():
    protocol = env("PEER_SECURITY_PROTOCOL") or "PLAINTEXT"
    settings = {"security_protocol": protocol}
    if "SSL" in protocol:
        settings["ssl_context"] = ssl_context()
    if protocol.startswith("SASL"):
        settings["sasl_mechanism"] = env("PEER_SASL_MECHANISM")
        settings["sasl_plain_username"] = env("PEER_SASL_USERNAME")
        settings["sasl_plain_password"] = env("PEER_SASL_PASSWORD")
    return settings


# aiokafka takes the same names.
aiokafka_settings = kafka_python_settings

//! What the linked librdkafka was built with. A change of the `rdkafka` crate's features that
//! drops TLS, SASL or a codec fails here, not at a user's first secured cluster.

use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

/// A self-signed CA certificate (no key is kept): enough for librdkafka to load a trust store.
const TEST_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/test-ca.pem");

#[test]
fn librdkafka_has_tls_sasl_and_every_codec() {
    let features = strand_cluster::librdkafka_features().unwrap();
    for wanted in [
        "ssl",
        "sasl_plain",
        "sasl_scram",
        "gzip",
        "snappy",
        "lz4",
        "zstd",
    ] {
        assert!(
            features.iter().any(|f| f == wanted),
            "librdkafka {} lacks {wanted}; it has {features:?}",
            rdkafka::util::get_rdkafka_version().1
        );
    }
}

fn producer(properties: &[(&str, &str)]) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut config = ClientConfig::new();
    // Nothing listens there: creating a client connects lazily, and this test is about what
    // librdkafka accepts at creation.
    config.set("bootstrap.servers", "127.0.0.1:9");
    for (key, value) in properties {
        config.set(*key, *value);
    }
    config.create()
}

#[test]
fn clients_start_with_tls_and_sasl_scram() {
    let ssl = producer(&[("security.protocol", "SSL"), ("ssl.ca.location", TEST_CA)]);
    assert!(ssl.is_ok(), "SSL with a CA file: {:?}", ssl.err());
    let scram = producer(&[
        ("security.protocol", "SASL_SSL"),
        ("ssl.ca.location", TEST_CA),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "strand"),
        ("sasl.password", "secret"),
    ]);
    assert!(
        scram.is_ok(),
        "SASL_SSL with SCRAM-SHA-512: {:?}",
        scram.err()
    );
    let plain = producer(&[
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "PLAIN"),
        ("sasl.username", "strand"),
        ("sasl.password", "secret"),
    ]);
    assert!(
        plain.is_ok(),
        "SASL_PLAINTEXT with PLAIN: {:?}",
        plain.err()
    );
    let zstd = producer(&[("compression.codec", "zstd")]);
    assert!(zstd.is_ok(), "zstd compression: {:?}", zstd.err());
    // The check is real: a CA file that is not there is refused at creation.
    let missing = producer(&[
        ("security.protocol", "SSL"),
        ("ssl.ca.location", "/nonexistent/ca.pem"),
    ]);
    assert!(missing.is_err(), "a missing CA file was accepted");
}

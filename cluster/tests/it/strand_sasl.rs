//! The cluster client logs in to a Strand broker whose native listener requires SASL, as the
//! bridge and the saga orchestrator do with `sasl` in their cluster settings.

use strand_broker::config::BrokerConfig;
use strand_broker::run::RunningBroker;
use strand_broker::security::SecurityProtocol;
use strand_client::scram::ScramMechanism;
use strand_cluster::{Cluster, ClusterConfig, SideError, StrandSasl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strand_cluster_logs_in_with_sasl_and_is_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let broker = RunningBroker::start(BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        kafka_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        listen_protocol: SecurityProtocol::SaslPlaintext,
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    broker
        .authenticator
        .users
        .upsert_password("bridge", ScramMechanism::Sha512, "bridge-pw", None)
        .unwrap();
    let address = broker.native_addr.to_string();
    let password_file = dir.path().join("bridge.password");
    std::fs::write(&password_file, "bridge-pw\n").unwrap();
    let wrong_file = dir.path().join("wrong.password");
    std::fs::write(&wrong_file, "guess\n").unwrap();
    let config = |file: Option<&std::path::Path>| ClusterConfig::Strand {
        address: address.clone(),
        sasl: file.map(|f| StrandSasl {
            mechanism: "SCRAM-SHA-512".into(),
            username: "bridge".into(),
            password_file: f.to_path_buf(),
        }),
    };

    let cluster = Cluster::connect("s", &config(Some(&password_file)))
        .await
        .unwrap();
    cluster.create_topic("mirrored", 2).await.unwrap();
    assert_eq!(cluster.partitions("mirrored").await.unwrap(), 2);

    for (file, refusal) in [
        (None, "IllegalSaslState"),
        (Some(wrong_file.as_path()), "SaslAuthenticationFailed"),
        (Some(dir.path().join("missing").as_path()), "password file"),
    ] {
        match Cluster::connect("s", &config(file)).await {
            Err(e @ SideError::Strand { .. }) => {
                assert!(e.to_string().contains(refusal), "{e} should say {refusal}")
            }
            other => panic!("not refused: {other:?}"),
        }
    }
    drop(cluster);
    broker.stop().await.unwrap();
}

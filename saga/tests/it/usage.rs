//! `strand-saga`'s settings: a configuration error exits 2 with one clear line, and Kafka
//! properties given in a file or in variables reach librdkafka.

use std::process::{Command, Output};

fn saga(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strand-saga"))
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn configuration_errors_exit_2_and_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--config", missing.to_str().unwrap()], "missing.toml"),
        (
            vec!["--kafka-property", "sasl.password=x"],
            "--kafka-brokers is not",
        ),
        (
            vec![
                "--kafka-brokers",
                "127.0.0.1:9",
                "--kafka-properties-file",
                "/nonexistent/client.properties",
            ],
            "/nonexistent/client.properties",
        ),
    ];
    for (args, says) in cases {
        let output = saga(&args, &[]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(says),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let bad = dir.path().join("bad.properties");
    std::fs::write(&bad, "security.protocol=SASL_SSL\nsasl.password\n").unwrap();
    let output = saga(
        &[
            "--kafka-brokers",
            "127.0.0.1:9",
            "--kafka-properties-file",
            bad.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("line 2"), "{}", stderr(&output));
}

#[test]
fn kafka_properties_from_a_file_and_variables_reach_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client.properties");
    std::fs::write(&file, "# a secret\nsecurity.protocol=from-the-file\n").unwrap();
    let from_file = saga(
        &[
            "--kafka-brokers",
            "127.0.0.1:9",
            "--kafka-properties-file",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(from_file.status.code(), Some(1), "{}", stderr(&from_file));
    assert!(
        stderr(&from_file).contains("from-the-file"),
        "{}",
        stderr(&from_file)
    );
    // A variable wins over the file.
    let from_var = saga(
        &[
            "--kafka-brokers",
            "127.0.0.1:9",
            "--kafka-properties-file",
            file.to_str().unwrap(),
        ],
        &[(
            "STRAND_SAGA_KAFKA_PROPERTY_SECURITY_PROTOCOL",
            "from-a-variable",
        )],
    );
    assert_eq!(from_var.status.code(), Some(1), "{}", stderr(&from_var));
    assert!(
        stderr(&from_var).contains("from-a-variable"),
        "{}",
        stderr(&from_var)
    );
}

//! Brokers in this test process, and the `strand-bridge` binary as a child process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use strand_broker::config::BrokerConfig;
use strand_broker::run::RunningBroker;
use strand_client::{Client, ClientConfig};

/// A broker on port 0 of every listener, with its addresses as strings.
pub(crate) struct Broker {
    pub running: RunningBroker,
    pub addr: String,
    pub kafka_addr: String,
}

pub(crate) async fn start_broker(data_dir: &std::path::Path) -> Broker {
    let config = BrokerConfig {
        data_dir: data_dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        kafka_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        ..BrokerConfig::default()
    };
    let running = RunningBroker::start(config).await.unwrap();
    Broker {
        addr: running.native_addr.to_string(),
        kafka_addr: running.kafka_addr.to_string(),
        running,
    }
}

pub(crate) async fn stop(broker: Broker) {
    broker.running.stop().await.unwrap();
}

pub(crate) async fn client(addr: &str) -> Client {
    Client::connect(addr.to_string(), ClientConfig::default())
        .await
        .unwrap()
}

/// A child process killed when dropped, so a failing test leaves none running.
pub(crate) struct ChildProcess(pub Child);

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` with its log on a pipe and waits (at most a minute) for a line containing
/// `marker`; later warnings and errors are passed on to the test's output.
pub(crate) fn spawn_until(command: &mut Command, marker: &'static str) -> ChildProcess {
    spawn_until_line(command, marker).0
}

/// Like [`spawn_until`], also returning the line with `marker`.
pub(crate) fn spawn_until_line(
    command: &mut Command,
    marker: &'static str,
) -> (ChildProcess, String) {
    let mut child = command
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (started, wait_started) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(" WARN ") || line.contains(" ERROR ") {
                eprintln!("child: {line}");
            }
            if line.contains(marker) {
                let _ = started.send(line);
            }
        }
    });
    let child = ChildProcess(child);
    let line = wait_started
        .recv_timeout(Duration::from_secs(60))
        .expect("the child never logged its start line");
    (child, line)
}

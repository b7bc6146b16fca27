//! Integration tests of the client crate: the `strand` CLI's behaviour without a broker. (The
//! broker crate's tests run the CLI against a real broker; this package's integration tests
//! are also what makes cargo build the `strand` binary for them.)

use std::process::Command;

fn strand(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strand"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn usage_errors_exit_with_2_and_say_what_is_wrong() {
    let out = strand(&["topic", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
    let out = strand(&["produce"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_unreachable_broker_is_one_line_and_exit_1() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let out = strand(&["--broker", "127.0.0.1:1", "topic", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
}

#[test]
fn help_lists_the_commands() {
    let out = strand(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for command in ["topic", "produce", "consume"] {
        assert!(text.contains(command), "{text}");
    }
}

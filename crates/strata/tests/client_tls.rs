//! TLS on the client listener, end to end with real processes and
//! certificates made by `strata certs`: a three-node cluster serves
//! produce, consume and consumer groups over TLS (the group coordinators'
//! own traffic included); a plaintext client on a TLS port, a TLS client
//! on a plaintext port and a client trusting another CA each get an error
//! that says what is wrong; a rotated certificate is used without a
//! restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ClusterPorts, ServerProcess, run_ok, strata};

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

/// A CA in `dir/NAME-ca` and a server certificate for 127.0.0.1 in
/// `dir/NAME` (server.crt, server.key, ca.crt).
fn server_certs(dir: &Path, name: &str) -> PathBuf {
    let ca = dir.join(format!("{name}-ca"));
    let out = dir.join(name);
    run_ok(&["certs", "ca", "--dir", &s(&ca)]);
    run_ok(&["certs", "server", "--host", "127.0.0.1,localhost", "--ca-dir", &s(&ca), "--dir", &s(&out)]);
    out
}

/// `strata ARGS` against `server` with extra flags first; its exit status,
/// stdout and stderr.
fn run(server: &str, flags: &[&str], args: &[&str], stdin: &str) -> (bool, String, String) {
    let all: Vec<&str> = args.iter().chain(flags).copied().collect();
    let out = strata(server, &all, stdin);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn must(what: &str, (ok, out, err): (bool, String, String)) -> String {
    assert!(ok, "{what} failed: {out}{err}");
    out
}

#[test]
fn a_cluster_serves_clients_over_tls_and_says_what_is_wrong_with_a_mismatch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = server_certs(dir.path(), "a");
    let ports = ClusterPorts::new(3);
    let tls_args = |id: u64| -> Vec<String> {
        let mut args = ports.server_args(id);
        args.extend(
            ["--tls-cert", &s(&certs.join("server.crt")), "--tls-key", &s(&certs.join("server.key"))].map(String::from),
        );
        args
    };
    let nodes: Vec<ServerProcess> = (1..=3)
        .map(|id| {
            let args = tls_args(id);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ServerProcess::spawn_with(&args, &dir.path().join(format!("data{id}")), &[])
        })
        .collect();
    let server = ports.bootstrap();
    let ca = s(&certs.join("ca.crt"));
    let tls: &[&str] = &["--tls-ca", &ca];

    must("create", run(&server, tls, &["topic", "create", "orders", "-p", "3", "-r", "3"], ""));
    let lines: String = (0..30).map(|i| format!("order-{i}\n")).collect();
    must("produce", run(&server, tls, &["produce", "orders"], &lines));
    let got = must("consume", run(&server, tls, &["consume", "orders", "--from", "earliest", "-n", "30"], ""));
    assert_eq!(got.lines().count(), 30, "{got}");
    // A consumer group: its coordinator reads and commits through its own
    // node and its peers' cluster listeners, not the TLS client port.
    let got = must(
        "group consume",
        run(&server, tls, &["consume", "orders", "--group", "billing", "--from", "earliest", "-n", "30"], ""),
    );
    assert_eq!(got.lines().count(), 30, "{got}");
    let described = must("group describe", run(&server, tls, &["group", "describe", "billing"], ""));
    assert!(described.contains("orders"), "{described}");

    // Plaintext to the TLS port: told so.
    let (ok, _, err) = run(&server, &[], &["topic", "list"], "");
    assert!(!ok && err.contains("requires TLS"), "plaintext client on a TLS port: {err}");
    // Another CA: the certificate is not trusted, and the error says so.
    let other = server_certs(dir.path(), "b");
    let (ok, _, err) = run(&server, &["--tls-ca", &s(&other.join("ca.crt"))], &["topic", "list"], "");
    assert!(!ok && err.to_lowercase().contains("certificate"), "a client trusting another CA: {err}");
    drop(nodes);

    // TLS to a plaintext port: told that the server is probably plaintext.
    let plain = ServerProcess::start(&dir.path().join("plain"));
    let (ok, _, err) = run(&plain.addr, tls, &["topic", "list"], "");
    assert!(!ok && err.contains("plaintext"), "a TLS client on a plaintext port: {err}");
}

#[test]
fn a_rotated_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = server_certs(dir.path(), "first");
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).expect("mkdir");
    for f in ["server.crt", "server.key"] {
        std::fs::copy(first.join(f), live.join(f)).expect("copy");
    }
    let args = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &s(&live.join("server.crt")),
        "--tls-key",
        &s(&live.join("server.key")),
    ];
    let node = ServerProcess::spawn_with(&args, &dir.path().join("data"), &[]);
    let list = |ca: &Path| run(&node.addr, &["--tls-ca", &s(ca)], &["topic", "list"], "").0;
    assert!(list(&first.join("ca.crt")));

    // A certificate from a new CA replaces the files (key first, as an
    // operator's tooling might), then SIGHUP.
    let second = server_certs(dir.path(), "second");
    for f in ["server.key", "server.crt"] {
        std::fs::copy(second.join(f), live.join(f)).expect("copy");
    }
    let status = Command::new("kill").args(["-HUP", &node.child.id().to_string()]).status().expect("kill -HUP");
    assert!(status.success());
    let deadline = std::time::Instant::now() + common::WAIT;
    while !list(&second.join("ca.crt")) {
        assert!(std::time::Instant::now() < deadline, "the new certificate was not served within {:?}", common::WAIT);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!list(&first.join("ca.crt")), "the old certificate is no longer served");
}

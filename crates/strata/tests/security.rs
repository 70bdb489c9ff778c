//! Authentication and ACLs end to end: a three-node cluster with TLS on
//! its client listeners and `--require-auth`, certificates made by `strata
//! certs`, a bootstrap superuser from `STRATA_BOOTSTRAP_USER`, and users,
//! tokens and ACLs made with the CLI as an operator would.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, ClusterPorts, ServerProcess, WAIT, run_ok};

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

/// Who runs a command: environment variables for its credentials.
#[derive(Clone, Copy)]
enum As<'a> {
    Nobody,
    User(&'a str, &'a str),
    Token(&'a str),
}

struct Cluster {
    server: String,
    ca: String,
    _nodes: Vec<ServerProcess>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("client-ca");
        let srv = dir.path().join("srv");
        run_ok(&["certs", "ca", "--dir", &s(&ca_dir)]);
        run_ok(&["certs", "server", "--host", "127.0.0.1", "--ca-dir", &s(&ca_dir), "--dir", &s(&srv)]);
        let ports = ClusterPorts::new(3);
        let env = [("STRATA_BOOTSTRAP_USER".to_owned(), "admin:admin-pw".to_owned())];
        let nodes = (1..=3)
            .map(|id| {
                let mut args = ports.server_args(id);
                args.extend(
                    [
                        "--tls-cert",
                        &s(&srv.join("server.crt")),
                        "--tls-key",
                        &s(&srv.join("server.key")),
                        "--require-auth",
                    ]
                    .map(String::from),
                );
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                ServerProcess::spawn_with(&args, &dir.path().join(format!("data{id}")), &env)
            })
            .collect();
        Self { server: ports.bootstrap(), ca: s(&srv.join("ca.crt")), _nodes: nodes, _dir: dir }
    }

    /// `strata ARGS` as `who`, with `stdin`: success, stdout, stderr.
    fn run(&self, who: As<'_>, args: &[&str], stdin: &str) -> (bool, String, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("STRATA_SERVER", &self.server)
            .env("STRATA_TLS_CA", &self.ca)
            .env("RUST_LOG", "warn")
            .env_remove("STRATA_USER")
            .env_remove("STRATA_PASSWORD")
            .env_remove("STRATA_TOKEN");
        match who {
            As::Nobody => {}
            As::User(u, p) => {
                cmd.env("STRATA_USER", u).env("STRATA_PASSWORD", p);
            }
            As::Token(t) => {
                cmd.env("STRATA_TOKEN", t);
            }
        }
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn strata");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin");
        let out = child.wait_with_output().expect("output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, who: As<'_>, args: &[&str], stdin: &str) -> String {
        let (ok, out, err) = self.run(who, args, stdin);
        assert!(ok, "strata {args:?} failed: {out}{err}");
        out
    }

    /// The command must fail; its stderr.
    fn refused(&self, who: As<'_>, args: &[&str], stdin: &str) -> String {
        let (ok, out, err) = self.run(who, args, stdin);
        assert!(!ok, "strata {args:?} should have been refused: {out}");
        err
    }
}

const ADMIN: As<'static> = As::User("admin", "admin-pw");
const ALICE: As<'static> = As::User("alice", "alice-pw");
const BOB: As<'static> = As::User("bob", "bob-pw");

/// Polls until `check` holds, at most [`WAIT`].
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn users_tokens_and_acls_decide_who_does_what() {
    let c = Cluster::start();
    // The bootstrap user exists once the controller applied it.
    until("the bootstrap superuser", || c.run(ADMIN, &["whoami"], "").1.contains("User:admin (superuser)"));

    let err = c.refused(As::Nobody, &["topic", "list"], "");
    assert!(err.contains("requires authentication"), "{err}");
    let err = c.refused(As::User("admin", "wrong"), &["topic", "list"], "");
    assert!(err.contains("wrong user name or password"), "{err}");

    for (name, pw) in [("alice", "alice-pw"), ("bob", "bob-pw"), ("mallory", "mallory-pw")] {
        c.ok(ADMIN, &["user", "create", name, "--password", pw], "");
    }
    for topic in ["orders", "payments", "public.news", "public.secret"] {
        c.ok(ADMIN, &["topic", "create", topic, "-p", "2", "-r", "3"], "");
    }
    c.ok(ADMIN, &["acl", "create", "--allow-principal", "User:alice", "--operation", "write", "--topic", "orders"], "");
    c.ok(ADMIN, &["acl", "create", "--allow-principal", "bob", "--operation", "read", "--topic", "orders"], "");
    c.ok(ADMIN, &["acl", "create", "--allow-principal", "bob", "--operation", "read", "--group", "billing"], "");
    c.ok(
        ADMIN,
        &[
            "acl",
            "create",
            "--allow-principal",
            "User:*",
            "--operation",
            "read",
            "--topic",
            "public.",
            "--resource-pattern-type",
            "prefixed",
        ],
        "",
    );
    c.ok(
        ADMIN,
        &["acl", "create", "--deny-principal", "mallory", "--operation", "read", "--topic", "public.secret"],
        "",
    );

    // alice writes, but may not read.
    let lines: String = (0..20).map(|i| format!("order-{i}\n")).collect();
    c.ok(ALICE, &["produce", "orders"], &lines);
    let err = c.refused(ALICE, &["consume", "orders", "--from", "earliest", "-n", "1"], "");
    assert!(err.contains("may not READ topic 'orders'"), "{err}");
    // Listings show only what the caller may describe.
    let listed = c.ok(ALICE, &["topic", "list"], "");
    assert!(listed.contains("orders") && !listed.contains("payments"), "{listed}");
    let listed = c.ok(As::User("mallory", "mallory-pw"), &["topic", "list"], "");
    assert!(listed.contains("public.news") && !listed.contains("orders"), "prefixed describe: {listed}");

    // bob reads in group billing, not in another group.
    let got = c.ok(BOB, &["consume", "orders", "--group", "billing", "--from", "earliest", "-n", "20"], "");
    assert_eq!(got.lines().count(), 20, "{got}");
    let err = c.refused(BOB, &["consume", "orders", "--group", "other", "--from", "earliest", "-n", "1"], "");
    assert!(err.contains("may not READ group 'other'"), "{err}");
    let err = c.refused(BOB, &["consume", "orders", "--share-group", "other", "-n", "1"], "");
    assert!(err.contains("may not READ group 'other'"), "share groups too: {err}");
    let err = c.refused(BOB, &["produce", "orders"], "x\n");
    assert!(err.contains("may not WRITE topic 'orders'"), "{err}");

    // A prefixed allow for everyone; a deny wins over it.
    c.ok(ADMIN, &["produce", "public.secret"], "classified\n");
    let got = c.ok(BOB, &["consume", "public.secret", "--from", "earliest", "-n", "1"], "");
    assert_eq!(got.trim(), "classified");
    let err = c.refused(
        As::User("mallory", "mallory-pw"),
        &["consume", "public.secret", "--from", "earliest", "-n", "1"],
        "",
    );
    assert!(err.contains("may not READ topic 'public.secret'"), "{err}");

    // Users and ACL changes need ALTER on the cluster.
    let err = c.refused(ALICE, &["user", "create", "eve", "--password", "eve-pw"], "");
    assert!(err.contains("may not ALTER the cluster"), "{err}");

    // ACL listing and deletion print what they match.
    let listed = c.ok(ADMIN, &["acl", "list", "--format", "json", "--topic", "orders"], "");
    let json: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(json["acls"].as_array().map(Vec::len), Some(2), "{listed}");
    let deleted = c.ok(ADMIN, &["acl", "delete", "--allow-principal", "User:alice", "--topic", "orders"], "");
    assert!(deleted.contains("deleted 1 binding"), "{deleted}");
    // Without it, alice may not even describe the topic (as in Kafka).
    let err = c.refused(ALICE, &["produce", "orders"], "late\n");
    assert!(err.contains("User:alice may not"), "{err}");
}

#[test]
fn revoked_tokens_deleted_users_and_expired_tokens_lose_access_also_on_open_streams() {
    let c = Cluster::start();
    until("the bootstrap superuser", || c.run(ADMIN, &["whoami"], "").0);
    c.ok(ADMIN, &["user", "create", "svc", "--password", "svc-pw"], "");
    c.ok(ADMIN, &["topic", "create", "events", "-p", "1", "-r", "3"], "");
    c.ok(ADMIN, &["acl", "create", "--allow-principal", "svc", "--operation", "read,write", "--topic", "events"], "");
    let token = c.ok(ADMIN, &["token", "create", "--user", "svc", "--description", "ingest"], "");
    let token = token.trim().to_owned();
    assert!(token.starts_with("stk_"), "{token}");
    let listed = c.ok(ADMIN, &["token", "list", "--format", "json"], "");
    assert!(listed.contains("ingest") && !listed.contains(&token[20..]), "listed without the secret: {listed}");
    c.ok(As::Token(&token), &["produce", "events"], "one\n");

    // A tailing subscription with the token ends when the token is revoked.
    let mut tail = Command::new(BIN)
        .args(["consume", "events", "--from", "earliest"])
        .env("STRATA_SERVER", &c.server)
        .env("STRATA_TLS_CA", &c.ca)
        .env("STRATA_TOKEN", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn consume");
    let first_line = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(tail.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
        line
    };
    assert_eq!(first_line.trim(), "one");
    c.ok(ADMIN, &["token", "revoke", &token], "");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = tail.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < WAIT, "the subscription did not end after the revocation");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(tail.stderr.as_mut().expect("stderr"), &mut stderr).expect("stderr");
    assert!(stderr.contains("revoked"), "{stderr}");
    eprintln!("the open subscription ended {:?} after the revocation", started.elapsed());
    let err = c.refused(As::Token(&token), &["topic", "list"], "");
    assert!(err.contains("unknown or revoked token"), "{err}");

    // An expired token.
    let short = c.ok(ADMIN, &["token", "create", "--user", "svc", "--expires", "1s"], "");
    until("the token to expire", || c.run(As::Token(short.trim()), &["topic", "list"], "").2.contains("expired"));

    // A deleted user's password session ends, and its tokens with it.
    let token2 = c.ok(ADMIN, &["token", "create", "--user", "svc"], "");
    c.ok(As::Token(token2.trim()), &["topic", "list"], "");
    c.ok(ADMIN, &["user", "delete", "svc"], "");
    let err = c.refused(As::Token(token2.trim()), &["topic", "list"], "");
    assert!(err.contains("unknown or revoked token"), "{err}");
    let err = c.refused(As::User("svc", "svc-pw"), &["topic", "list"], "");
    assert!(err.contains("wrong user name or password"), "{err}");
}

#[test]
fn strata_dev_secure_runs_a_cluster_that_requires_tls_and_credentials() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::free_port_run(3);
    // Its cluster listeners, and its metrics listeners 100 ports above them.
    let cluster_base = common::free_port_run(103);
    let data = dir.path().join("dev");
    let child = Command::new(BIN)
        .args(["dev", "--nodes", "3", "--secure", "--base-port", &base.to_string()])
        .args(["--cluster-base-port", &cluster_base.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn strata dev");
    let mut dev = common::Dev(child);
    let mut printed = Vec::new();
    // Kept open to the end: `strata dev` prints when it stops.
    let mut lines = std::io::BufReader::new(dev.0.stdout.take().expect("stdout")).lines();
    for line in lines.by_ref() {
        let line = line.expect("line");
        let done = line.contains("Ctrl-C stops the cluster");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    assert!(text.contains("STRATA_TLS_CA=") && text.contains("admin.password"), "how to connect: {text}");
    let password = std::fs::read_to_string(data.join("admin.password")).expect("the admin password file");
    let c = Cluster {
        server: (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect::<Vec<_>>().join(","),
        ca: s(&data.join("tls/ca.crt")),
        _nodes: Vec::new(),
        _dir: tempfile::tempdir().expect("tempdir"),
    };
    let admin = As::User("admin", password.trim());
    until("the superuser", || c.run(admin, &["whoami"], "").1.contains("User:admin (superuser)"));
    let err = c.refused(As::Nobody, &["topic", "list"], "");
    assert!(err.contains("requires authentication"), "{err}");
    c.ok(admin, &["topic", "create", "demo", "-p", "3", "-r", "3"], "");
    dev.interrupt();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopping")), "{rest:?}");
    assert!(dev.0.wait().expect("wait").success());
}

#[test]
fn client_certificates_authenticate_as_their_mapped_subject_and_passwords_need_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    let srv = dir.path().join("srv");
    run_ok(&["certs", "ca", "--dir", &s(&ca)]);
    run_ok(&["certs", "server", "--host", "127.0.0.1", "--ca-dir", &s(&ca), "--dir", &s(&srv)]);
    run_ok(&["certs", "client", "--name", "carol", "--ca-dir", &s(&ca), "--dir", &s(&srv)]);
    let (cert, key) = (s(&srv.join("client-carol.crt")), s(&srv.join("client-carol.key")));
    let args = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &s(&srv.join("server.crt")),
        "--tls-key",
        &s(&srv.join("server.key")),
        "--tls-client-ca",
        &s(&srv.join("ca.crt")),
        "--require-auth",
    ];
    let env = [
        ("STRATA_BOOTSTRAP_USER".to_owned(), "admin:admin-pw".to_owned()),
        ("STRATA_TLS_PRINCIPAL_RULES".to_owned(), "RULE:^CN=([^,]+),O=Strata$/$1/L,DEFAULT".to_owned()),
    ];
    let node = ServerProcess::spawn_with(&args, &dir.path().join("data"), &env);
    let c = Cluster {
        server: node.addr.clone(),
        ca: s(&srv.join("ca.crt")),
        _nodes: Vec::new(),
        _dir: tempfile::tempdir().expect("tempdir"),
    };
    until("the superuser", || c.run(ADMIN, &["whoami"], "").0);
    let carol = ["--tls-cert", &cert, "--tls-key", &key];
    let who = c.ok(As::Nobody, &[&["whoami"][..], &carol].concat(), "");
    assert_eq!(who.trim(), "User:carol", "the rule maps CN=carol,O=Strata to carol");
    c.ok(ADMIN, &["topic", "create", "t"], "");
    let err = c.refused(As::Nobody, &[&["produce", "t"][..], &carol].concat(), "x\n");
    assert!(err.contains("User:carol may not"), "{err}");
    c.ok(ADMIN, &["acl", "create", "--allow-principal", "User:carol", "--operation", "write", "--topic", "t"], "");
    c.ok(As::Nobody, &[&["produce", "t"][..], &carol].concat(), "x\n");

    // A certificate from a CA the node does not accept: the handshake fails.
    let other = dir.path().join("other");
    run_ok(&["certs", "ca", "--dir", &s(&other)]);
    run_ok(&["certs", "client", "--name", "carol", "--ca-dir", &s(&other), "--dir", &s(&other)]);
    let forged = ["--tls-cert", &s(&other.join("client-carol.crt")), "--tls-key", &s(&other.join("client-carol.key"))];
    let err = c.refused(As::Nobody, &[&["whoami"][..], &forged].concat(), "");
    assert!(!err.is_empty() && !err.contains("User:carol"), "{err}");

    // A node with authentication but no TLS refuses passwords.
    let plain = ServerProcess::spawn_with(
        &["server", "--listen", "127.0.0.1:0", "--require-auth"],
        &dir.path().join("plain"),
        &[("STRATA_BOOTSTRAP_USER".to_owned(), "admin:admin-pw".to_owned())],
    );
    let out = Command::new(BIN)
        .args(["whoami", "--server", &plain.addr, "--user", "admin", "--password", "admin-pw"])
        .env_remove("STRATA_TLS_CA")
        .output()
        .expect("run strata");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("only over TLS"), "{err}");
}

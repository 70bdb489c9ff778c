//! `Type=notify`: a node tells its service manager (`NOTIFY_SOCKET`, a real
//! Unix datagram socket here, as systemd gives one) when it is ready, when a
//! reload (SIGHUP, `systemctl reload`) begins and ends, and when it stops.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::ServerProcess;

/// The next notification, as its `KEY=VALUE` lines.
fn next(sock: &UnixDatagram) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned).collect()
}

#[test]
fn a_node_tells_systemd_when_it_is_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notification socket");
    sock.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    let env = vec![("NOTIFY_SOCKET".to_owned(), path.to_str().expect("utf-8 path").to_owned())];
    let server = ServerProcess::start_with(&dir.path().join("data"), &env);

    let ready = next(&sock);
    assert!(ready.contains(&"READY=1".to_owned()), "{ready:?}");
    assert!(ready.contains(&format!("STATUS=serving clients on {}", server.addr)), "{ready:?}");

    let hup =
        std::process::Command::new("kill").arg("-HUP").arg(server.child.id().to_string()).status().expect("run kill");
    assert!(hup.success());
    let reloading = next(&sock);
    assert!(reloading.contains(&"RELOADING=1".to_owned()), "{reloading:?}");
    assert!(reloading.iter().any(|l| l.starts_with("MONOTONIC_USEC=")), "systemd 253+ needs the time: {reloading:?}");
    let ready = next(&sock);
    assert!(ready.contains(&"READY=1".to_owned()), "the reload ends with READY=1: {ready:?}");

    let (exit, _) = server.terminate(Duration::from_secs(60));
    assert!(exit.success(), "{exit:?}");
    let stopping = next(&sock);
    assert!(stopping.contains(&"STOPPING=1".to_owned()), "{stopping:?}");
}

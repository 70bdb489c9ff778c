//! systemd's service notifications (`Type=notify`): `READY=1` once the node
//! serves, `RELOADING=1` (with the monotonic time systemd 253+ asks for) and
//! `READY=1` again around a SIGHUP reload, `STOPPING=1` when it starts to
//! stop, and `STATUS=` lines saying what it is doing. Without
//! `NOTIFY_SOCKET` in the environment (not started by systemd) nothing is
//! sent.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// The node serves.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload (SIGHUP) begins; [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for the service manager"),
    }
}

/// The node is stopping.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// What the node is doing now.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Whether standard error is connected to the journal: systemd sets
/// `JOURNAL_STREAM` to the device and inode of that stream, which is still
/// ours unless it was redirected since.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| stream.to_string_lossy() == format!("{}:{}", m.dev(), m.ino()))
}

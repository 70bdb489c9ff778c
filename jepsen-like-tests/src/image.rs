//! The project's own Debian image for container hosts, built here from
//! Debian's packages (no image can be pulled): `debootstrap` writes a minimal
//! bookworm root file system with iproute2 (for the blackhole routes), which
//! is imported as [`IMAGE`]. Both are kept, so only the first run pays for
//! them (about a minute): the root file system under
//! `~/.cache/strata/jepsen-rootfs`, the image in Docker.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::net::run;

/// The image every container host runs (the strata binary is mounted in).
pub const IMAGE: &str = "strata-jepsen-base:bookworm";

const MIRROR: &str = "http://deb.debian.org/debian";

fn rootfs_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/strata/jepsen-rootfs")
}

/// Builds [`IMAGE`] unless Docker already has it.
pub fn ensure() -> anyhow::Result<()> {
    let have =
        Command::new("docker").args(["image", "inspect", IMAGE]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if have.is_ok_and(|s| s.success()) {
        return Ok(());
    }
    let rootfs = rootfs_dir();
    let done = rootfs.join(".strata-complete");
    if !done.exists() {
        if Command::new("debootstrap").arg("--version").output().is_err() {
            eprintln!("[image] installing debootstrap (apt-get)");
            run(&["apt-get", "install", "-y", "-qq", "debootstrap"])
                .or_else(|_| {
                    run(&["apt-get", "update", "-qq"])?;
                    run(&["apt-get", "install", "-y", "-qq", "debootstrap"])
                })
                .context("debootstrap is missing and could not be installed: apt-get install debootstrap")?;
        }
        eprintln!("[image] debootstrap bookworm (minbase + iproute2) into {} (about a minute)", rootfs.display());
        let _ = std::fs::remove_dir_all(&rootfs);
        std::fs::create_dir_all(&rootfs)?;
        let root = rootfs.to_string_lossy();
        let status = Command::new("debootstrap")
            .args(["--variant=minbase", "--include=iproute2", "bookworm", &root, MIRROR])
            .stdout(Stdio::null())
            .status()
            .context("cannot run debootstrap")?;
        if !status.success() {
            bail!("debootstrap of bookworm into {root} failed ({status})");
        }
        std::fs::write(&done, b"")?;
    }
    eprintln!("[image] importing {} as {IMAGE}", rootfs.display());
    let tar = Command::new("tar")
        .args(["-C", &rootfs.to_string_lossy(), "--exclude=./.strata-complete", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let stdout = tar.stdout.context("tar has no output")?;
    let status = Command::new("docker").args(["import", "-", IMAGE]).stdin(stdout).stdout(Stdio::null()).status()?;
    if !status.success() {
        bail!("docker import of {} failed ({status})", rootfs.display());
    }
    Ok(())
}

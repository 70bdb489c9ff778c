//! Fuzz harnesses for what Strata reads from disk or from peers: one
//! function per target, each taking arbitrary bytes. A harness returns
//! whether the input was accepted (decoded, recovered, installed) and
//! panics only when Strata breaks a promise: a panic inside Strata's code,
//! or a checked property that does not hold (see each target's module).
//!
//! Two drivers run them (see `fuzz/README.md`):
//! - `strata-fuzz` (stable Rust, no extra tooling): replays the seed corpus
//!   in `fuzz/corpus/<target>/`, then mutates it for a bounded time from a
//!   printed seed. `scripts/test.sh` runs it.
//! - `strata-fuzz-afl` (`cargo afl build --features afl`): coverage-guided
//!   long runs with AFL++.

pub mod controller;
pub mod env;
pub mod groups;
pub mod mutate;
pub mod record;
pub mod seeds;
pub mod segment;
pub mod snapshot;

/// A fuzz target: its name (and corpus folder) and its harness.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    /// Runs one input; `true` when it was accepted.
    pub run: fn(&[u8]) -> bool,
    /// Inputs larger than this are cut before they are run (keeps one
    /// execution short; AFL++ is told the same with `-G`).
    pub max_len: usize,
}

/// Every target, in the order the runner goes through them.
pub const TARGETS: &[Target] = &[
    Target { name: "record", run: record::run, max_len: 64 * 1024 },
    Target { name: "segment", run: segment::run, max_len: 256 * 1024 },
    Target { name: "snapshot", run: snapshot::run, max_len: 64 * 1024 },
    Target { name: "controller", run: controller::run, max_len: 64 * 1024 },
    Target { name: "groups", run: groups::run, max_len: 64 * 1024 },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Where the seed corpus of `target` lives in the source tree.
pub fn corpus_dir(target: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

/// A batch whose length field and checksum are made to fit its bytes, so
/// that mutated batches get past the checksum to the code behind it
/// (decompression, record parsing, command decoding). `None` when `data`
/// is shorter than a batch header.
pub fn fix_batch(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < strata_record::HEADER_LEN {
        return None;
    }
    let mut out = data.to_vec();
    let len = u32::try_from(out.len() - 4).ok()?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_batch_is_the_batch_the_codec_builds() {
        let batch = strata_record::encode(&[strata_record::Record::default()], strata_record::Compression::None);
        assert_eq!(fix_batch(&batch).as_deref(), Some(&batch[..]));
    }

    /// Every seed named `valid-*` is accepted by its target: the corpus
    /// stays made of real inputs as the formats evolve.
    #[test]
    fn valid_seeds_are_accepted() {
        for t in TARGETS {
            let dir = corpus_dir(t.name);
            let mut seen = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.expect("corpus entry").path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                let data = std::fs::read(&path).expect("read seed");
                let accepted = (t.run)(&data);
                if name.starts_with("valid-") {
                    assert!(accepted, "{}: seed {name} is rejected", t.name);
                    seen += 1;
                }
            }
            assert!(seen >= 2, "{}: only {seen} valid seeds", t.name);
        }
        // The only test that uses the shared environment: its folder goes.
        env::get().remove();
    }
}

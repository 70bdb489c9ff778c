//! The AFL++ driver (persistent mode): `strata-fuzz-afl TARGET` runs the
//! inputs AFL++ gives it through that target's harness. Built with
//! `cargo afl build -p strata-fuzz --features afl --bin strata-fuzz-afl`;
//! see fuzz/README.md.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = strata_fuzz::target(&name) else {
        let names: Vec<&str> = strata_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!("usage: strata-fuzz-afl TARGET (one of: {})", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        let data = &data[..data.len().min(target.max_len)];
        (target.run)(data);
    });
}

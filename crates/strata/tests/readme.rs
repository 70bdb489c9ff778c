//! The README's quick start, as written: every `strata ...` line of the code
//! block after "Then, in another shell" runs, in order, through `sh`, against
//! a real single-node server on an ephemeral port, and must exit with status
//! 0. The README is read when the test runs, so an edited README is tested
//! as it is. Only the server address is supplied (`STRATA_SERVER`), and a
//! `strata bench ... --duration D` is shortened to 2 s (the README's 30 s
//! would only make the test slow). A `strata consume` without `-n` tails, as
//! it would in a newcomer's shell: it must print a record, and then end with
//! status 0 on Ctrl-C (SIGINT to its process group, as a terminal sends it).
//!
//! The README's three-node example ("Running a cluster") runs as one shell
//! script, as written, but for its ports (free ones instead of 7101-7103 and
//! 7201-7203): certificates made with `strata certs`, three servers, a
//! replicated topic described from another node.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{BIN, ServerProcess};

/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(120);
/// What a bench line's `--duration` becomes.
const BENCH_DURATION: &str = "2s";

/// The `strata` command lines of the quick start's second code block.
fn quick_start_lines(readme: &str) -> Vec<String> {
    let (_, after) =
        readme.split_once("Then, in another shell").expect("the README has a quick start 'Then, in another shell'");
    let (_, fence) = after.split_once("```").expect("a code block after 'Then, in another shell'");
    // The rest of the fence's line is its language (`sh`).
    let (_, body) = fence.split_once('\n').expect("a code block with lines");
    let (block, _) = body.split_once("```").expect("the code block ends");
    block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("strata ") || l.contains("| strata "))
        .map(str::to_owned)
        .collect()
}

/// `--duration X` of a bench line becomes [`BENCH_DURATION`].
fn shortened(line: &str) -> String {
    if !line.starts_with("strata bench ") {
        return line.to_owned();
    }
    let mut words: Vec<&str> = line.split(' ').collect();
    if let Some(i) = words.iter().position(|w| *w == "--duration")
        && i + 1 < words.len()
    {
        words[i + 1] = BENCH_DURATION;
    }
    words.join(" ")
}

/// A consume that reads until interrupted.
fn tails(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().take_while(|w| !w.starts_with('#')).collect();
    words.get(1) == Some(&"consume")
        && !words.iter().any(|w| *w == "-n" || w.starts_with("-n=") || w.starts_with("--max-messages"))
}

/// Sends `signal` to the process group `pgid`.
fn signal_group(pgid: u32, signal: &str) {
    let status =
        Command::new("kill").args([&format!("-{signal}"), "--", &format!("-{pgid}")]).status().expect("run kill");
    assert!(status.success(), "kill -{signal} -- -{pgid}");
}

/// Waits up to [`WAIT`] for `child` to exit; kills its group past that.
fn wait_exit(child: Child, what: &str) -> ExitStatus {
    let pgid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut child = child;
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(WAIT) {
        Ok(status) => status.expect("wait"),
        Err(_) => {
            signal_group(pgid, "KILL");
            panic!("`{what}` still running after {WAIT:?}");
        }
    }
}

/// Runs one README line; panics, with its output, unless it exits 0.
fn run(line: &str, server: &str, bin_dir: &Path, work: &Path) {
    let line = shortened(line);
    let tailing = tails(&line);
    // `exec`: a command of its own gets SIGINT itself, not through `sh`.
    let script = if line.contains('|') { line.clone() } else { format!("exec {line}") };
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .current_dir(work)
        .env("PATH", path)
        .env("STRATA_SERVER", server)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn sh");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (line_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(l);
        }
    });
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let pgid = child.id();
    let mut printed = Vec::new();
    if tailing {
        match lines.recv_timeout(WAIT) {
            Ok(first) => {
                printed.push(first);
                signal_group(pgid, "INT");
            }
            // Ended (or never printed): its status and stderr tell why.
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => signal_group(pgid, "KILL"),
        }
    }
    let status = wait_exit(child, &line);
    reader.join().expect("stdout reader");
    printed.extend(lines.try_iter());
    let stderr = errors.join().expect("stderr reader");
    eprintln!("$ {line}\n{}\n{stderr}", printed.join("\n"));
    assert!(
        status.success(),
        "README line `{line}` failed ({status}):\nstdout:\n{}\nstderr:\n{stderr}",
        printed.join("\n")
    );
    if tailing {
        assert!(!printed.is_empty(), "`{line}` printed nothing before Ctrl-C");
    }
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
    let lines = quick_start_lines(&readme);
    assert!(lines.len() >= 3, "found only {lines:?} in the README's quick start");
    eprintln!("README quick start: {lines:#?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&dir.path().join("data"));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    for line in &lines {
        run(line, &server.addr, bin_dir, &work);
    }
}

#[test]
fn quick_start_lines_are_found_and_adapted() {
    let readme = "x\nThen, in another shell (`b`):\n\n```sh\nstrata topic create t   # a comment\n\
                  printf 'a\\n' | strata produce t\nls\nstrata consume t --from -15m        # tails\n\
                  strata consume t -n 3\nstrata bench produce --duration 30s --batch 4\n```\nstrata not-this\n";
    let lines = quick_start_lines(readme);
    assert_eq!(
        lines,
        [
            "strata topic create t   # a comment",
            "printf 'a\\n' | strata produce t",
            "strata consume t --from -15m        # tails",
            "strata consume t -n 3",
            "strata bench produce --duration 30s --batch 4",
        ]
    );
    assert_eq!(shortened(&lines[4]), "strata bench produce --duration 2s --batch 4");
    assert_eq!(lines.iter().map(|l| tails(l)).collect::<Vec<_>>(), [false, false, true, false, false]);
}

/// The code block after `marker` in the README.
fn example_after(readme: &str, marker: &str) -> String {
    let (_, after) = readme.split_once(marker).unwrap_or_else(|| panic!("the README has {marker:?}"));
    let (_, fence) = after.split_once("```").expect("a code block after the example's text");
    let (_, body) = fence.split_once('\n').expect("a code block with lines");
    let (block, _) = body.split_once("```").expect("the code block ends");
    block.to_owned()
}

/// The code block of the README's three-node example.
fn cluster_example(readme: &str) -> String {
    example_after(readme, "nodes on one machine:")
}

/// Runs a README example with `sh -e` in a new directory, the servers it
/// starts in the background stopped when it ends; its exit status, output
/// and directory.
fn run_example(what: &str, script: &str) -> (ExitStatus, String, tempfile::TempDir) {
    eprintln!("{what}, on free ports:\n{script}");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let log = dir.path().join("out.log");
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new("sh")
        .args(["-e", "-c", script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .env_remove("STRATA_SERVER")
        .env_remove("STRATA_TLS_CA")
        .env_remove("STRATA_USER")
        .env_remove("STRATA_PASSWORD")
        .env_remove("STRATA_TOKEN")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .process_group(0)
        .spawn()
        .expect("spawn sh");
    // The script ends after its last line; the servers it started in the
    // background run on in its process group until stopped here.
    let pgid = child.id();
    let status = wait_exit(child, what);
    signal_group(pgid, "TERM");
    let output = std::fs::read_to_string(&log).expect("read the log");
    eprintln!("{output}");
    (status, output, dir)
}

#[test]
fn the_readme_secure_cluster_example_runs_as_written() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
    let mut script = example_after(&readme, "By hand, on one machine:");
    let ports = common::free_ports(6);
    for i in 0..3 {
        for (fixed, free) in [(7301 + i, ports[i]), (7311 + i, ports[3 + i])] {
            assert!(script.contains(&fixed.to_string()), "the example uses port {fixed}");
            script = script.replace(&fixed.to_string(), &free.to_string());
        }
    }
    // `730$i` in the loop: the three client ports must follow each other.
    let script = script.replace("127.0.0.1:730$i", "127.0.0.1:$(eval echo \\$CLIENT_PORT_$i)");
    let exports: String = (0..3).map(|i| format!("CLIENT_PORT_{}={}\n", i + 1, ports[i])).collect::<Vec<_>>().join("");
    let script = format!("{exports}{script}");
    let (status, output, _dir) = run_example("the README's secure cluster example", &script);
    assert!(status.success(), "the README's secure cluster example failed ({status}):\n{output}");
    assert!(output.lines().any(|l| l.trim() == "order 1"), "bob read alice's record:\n{output}");
    assert!(output.contains("User:bob"), "the ACL listing:\n{output}");
}

#[test]
fn the_readme_client_tls_example_runs_as_written() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
    let script = example_after(&readme, "clients trust the\nCA that issued it:");
    assert!(script.contains("7443"), "the example uses port 7443");
    let script = script.replace("7443", &common::free_ports(1)[0].to_string());
    let (status, output, _dir) = run_example("the README's client TLS example", &script);
    assert!(status.success(), "the README's client TLS example failed ({status}):\n{output}");
    assert!(output.lines().any(|l| l.trim() == "paid"), "the record came back over TLS:\n{output}");
}

#[test]
fn the_readme_observability_example_runs_as_written() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
    let mut script = example_after(&readme, "how\nlong and how it ended:");
    let ports = common::free_ports(2);
    for (fixed, free) in [(7450, ports[0]), (7451, ports[1])] {
        assert!(script.contains(&fixed.to_string()), "the example uses port {fixed}");
        script = script.replace(&fixed.to_string(), &free.to_string());
    }
    let (status, output, _dir) = run_example("the README's observability example", &script);
    assert!(status.success(), "the README's observability example failed ({status}):\n{output}");
    assert!(output.contains(r#"strata_produce_records_total{topic="clicks"} 1"#), "the metric:\n{output}");
    assert!(output.contains(r#""topic":"clicks""#), "the request log's line:\n{output}");
}

#[test]
fn the_readme_cluster_example_runs_as_written() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
    let mut script = cluster_example(&readme);
    let ports = common::free_ports(6);
    for i in 0..3 {
        for (fixed, free) in [(7101 + i, ports[i]), (7201 + i, ports[3 + i])] {
            assert!(script.contains(&fixed.to_string()), "the example uses port {fixed}");
            script = script.replace(&fixed.to_string(), &free.to_string());
        }
    }
    let (status, output, dir) = run_example("the README's cluster example", &script);
    assert!(status.success(), "the README's cluster example failed ({status}):\n{output}");
    assert!(output.contains("orders"), "topic describe printed the topic:\n{output}");
    for id in 1..=3 {
        assert!(dir.path().join(format!("tls/node-{id}.crt")).exists(), "node {id}'s certificate");
    }
}

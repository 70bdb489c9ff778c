//! Text generated from the command-line definition: shell completions
//! (`strata completions bash|zsh|fish`) and man pages (`strata man-pages
//! --dir DIR`, which the Debian package installs).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

/// Prints `shell`'s completion script for `C` to standard output.
pub fn completions<C: CommandFactory>(shell: Shell) -> anyhow::Result<()> {
    let mut command = C::command();
    let name = command.get_name().to_owned();
    // Into memory first: clap_complete panics when its writer fails (a
    // closed pipe, `strata completions bash | head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, &script).context("cannot write the completion script")?;
    std::io::Write::flush(&mut out).context("cannot write the completion script")?;
    Ok(())
}

/// Writes one man page per command into `dir`: strata.1, strata-server.1,
/// strata-topic.1, strata-topic-create.1 and so on. Returns how many.
pub fn man_pages<C: CommandFactory>(dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut command = C::command();
    command.build();
    let mut written = 0;
    write_pages(&command, &mut Vec::new(), dir, &mut written)?;
    Ok(written)
}

fn write_pages(command: &clap::Command, path: &mut Vec<String>, dir: &Path, written: &mut usize) -> anyhow::Result<()> {
    if command.is_hide_set() {
        return Ok(());
    }
    path.push(command.get_name().to_owned());
    let name = path.join("-");
    // The page's own name (strata-topic-create), so its title and NAME
    // section say which command it describes.
    let page = command.clone().name(name.clone());
    let file = dir.join(format!("{name}.1"));
    let mut text = Vec::new();
    clap_mangen::Man::new(page).render(&mut text).context("cannot render a man page")?;
    std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    *written += 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, path, dir, written)?;
    }
    path.pop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    #[command(name = "tool", version, about = "A tool")]
    struct Tool {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        /// Does one thing.
        One {
            /// A flag.
            #[arg(long)]
            flag: bool,
        },
        #[command(hide = true)]
        Secret,
    }

    #[test]
    fn a_page_per_visible_command_naming_its_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let n = man_pages::<Tool>(dir.path()).expect("pages");
        assert_eq!(n, 2, "tool and tool-one; the hidden command has none");
        let one = std::fs::read_to_string(dir.path().join("tool-one.1")).expect("tool-one.1");
        assert!(one.contains("tool\\-one") && one.contains("\\-\\-flag"), "{one}");
        assert!(!dir.path().join("tool-secret.1").exists());
    }
}

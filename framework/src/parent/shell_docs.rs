//! Shell completions and man pages generated from a binary's clap definitions. Every binary
//! has a hidden `generate-docs --out DIR` subcommand ([`GenerateDocs`]) that writes:
//!
//! ```text
//! DIR/man/man1/NAME.1, NAME-SUBCOMMAND.1, …   (clap_mangen; one page per visible command)
//! DIR/completions/bash/NAME.bash
//! DIR/completions/zsh/_NAME
//! DIR/completions/fish/NAME.fish
//! ```
//!
//! `contrib/generate-docs` runs it for every binary into `target/share/`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::Args;
use clap_complete::Shell;

/// Writing completions or man pages failed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .path.display())]
pub struct ShellDocsError {
    /// The file or directory being written.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: io::Error,
}

/// The hidden `generate-docs` subcommand's arguments.
#[derive(Args, Debug, Clone)]
pub struct GenerateDocs {
    /// Output directory (man/man1/ and completions/{bash,zsh,fish}/ are made under it).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

impl GenerateDocs {
    /// Writes `cmd`'s completions and man pages under `--out`, prints what was written and
    /// returns the exit code.
    pub fn run(&self, cmd: clap::Command) -> i32 {
        match write_shell_docs(cmd, &self.out) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                0
            }
            Err(e) => {
                eprintln!("generate-docs: {e}");
                1
            }
        }
    }
}

/// The shells completions are written for.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes the man pages (one per visible command and subcommand) and the bash, zsh and fish
/// completions of `cmd` under `out`; returns the files written.
pub fn write_shell_docs(cmd: clap::Command, out: &Path) -> Result<Vec<PathBuf>, ShellDocsError> {
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ShellDocsError { path, source }
    };
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();

    let man = out.join("man").join("man1");
    fs::create_dir_all(&man).map_err(at(&man))?;
    clap_mangen::generate_to(cmd.clone(), &man).map_err(at(&man))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)
        .map_err(at(&man))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&name) && n.ends_with(".1"))
        })
        .collect();
    pages.sort();
    written.extend(pages);

    for shell in SHELLS {
        let dir = out.join("completions").join(shell.to_string());
        fs::create_dir_all(&dir).map_err(at(&dir))?;
        let mut cmd = cmd.clone();
        let file = clap_complete::generate_to(shell, &mut cmd, &name, &dir).map_err(at(&dir))?;
        written.push(file);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    /// A tiny CLI.
    #[derive(Parser)]
    #[command(name = "toy")]
    struct Toy {
        #[command(subcommand)]
        cmd: ToyCmd,
    }

    #[derive(Subcommand)]
    enum ToyCmd {
        /// Make a thing.
        Define {
            /// Mark it automatic.
            #[arg(long)]
            auto: bool,
        },
        /// Hidden.
        #[command(hide = true)]
        GenerateDocs(GenerateDocs),
    }

    #[test]
    fn pages_and_completions_name_the_subcommands() {
        let out = std::env::temp_dir().join(format!("mdev-docs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&out);
        let files = write_shell_docs(Toy::command(), &out).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(&out).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "man/man1/toy-define.1",
                "man/man1/toy.1",
                "completions/bash/toy.bash",
                "completions/zsh/_toy",
                "completions/fish/toy.fish"
            ]
        );
        for f in &files {
            let text = fs::read_to_string(f).unwrap();
            assert!(text.contains("define"), "{} names define", f.display());
            if !f.ends_with("toy.1") {
                assert!(
                    text.contains("auto"),
                    "{} names define's --auto",
                    f.display()
                );
            }
        }
        let page = fs::read_to_string(out.join("man/man1/toy.1")).unwrap();
        assert!(
            !page.contains("generate-docs"),
            "the man page leaves it out"
        );
        let _ = fs::remove_dir_all(&out);
    }
}

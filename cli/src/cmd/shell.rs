//! `completions` and `man`: the command line describing itself, generated
//! from the same clap definitions that parse it, so they cannot drift.

use std::io::Write as _;
use std::path::PathBuf;

use crate::exit::{Failure, Outcome};

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// Write one page per command (stackpin.1, stackpin-publish.1, ...)
    /// into this folder instead of printing stackpin.1.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

/// Prints the completion script for a shell, e.g.
/// `stackpin completions bash > /etc/bash_completion.d/stackpin`.
pub fn completions(args: &CompletionsArgs) -> Outcome {
    let mut command = crate::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "stackpin", &mut script);
    crate::view::stdout_bytes(&script);
    Ok(())
}

/// Prints the man page, or writes every command's page into a folder.
pub fn man(args: &ManArgs) -> Outcome {
    let command = crate::command();
    let Some(dir) = &args.out_dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .map_err(|e| Failure::invalid(format!("rendering the man page: {e}")))?;
        crate::view::stdout_bytes(&page);
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::invalid(format!("creating {}: {e}", dir.display())))?;
    // Built, so that every page lists the global options too.
    let mut command = command;
    command.build();
    let version = env!("CARGO_PKG_VERSION");
    let page = |c: &clap::Command, name: &str| c.clone().name(name.to_owned()).version(version);
    let mut pages = vec![("stackpin".to_owned(), command.clone())];
    let listed = |c: &&clap::Command| c.get_name() != "help";
    for sub in command.get_subcommands().filter(listed) {
        let name = format!("stackpin-{}", sub.get_name());
        pages.push((name.clone(), page(sub, &name)));
        for nested in sub.get_subcommands().filter(listed) {
            let name = format!("stackpin-{}-{}", sub.get_name(), nested.get_name());
            pages.push((name.clone(), page(nested, &name)));
        }
    }
    for (name, page) in &pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page.clone())
            .render(&mut out)
            .map_err(|e| Failure::invalid(format!("rendering {name}: {e}")))?;
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&out))
            .map_err(|e| Failure::invalid(format!("writing {}: {e}", path.display())))?;
    }
    eprintln!("wrote {} man pages to {}", pages.len(), dir.display());
    Ok(())
}

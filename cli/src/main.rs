//! The `stackpin` binary: everything is in the library.

fn main() -> std::process::ExitCode {
    stackpin_cli::main()
}

//! The `coffer` command: parses arguments and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = coffer::cli::Cli::parse();
    coffer::cli::run(cli)
}

//! The `axp` command line: parses arguments, dispatches, prints. No domain logic lives here.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("axp: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

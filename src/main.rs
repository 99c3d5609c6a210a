//! The `axp` command line: parses arguments, dispatches, prints. No domain logic lives here.

mod cli;

use std::process::ExitCode;

use clap::Parser;

// The node allocates many short-lived buffers per request (JSON, sled node copies); glibc's
// allocator spent about a fifth of the node's CPU time on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

//! `axp registry ...`: operator commands for the shared registry.

use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum RegistryCommand {}

pub fn run(command: RegistryCommand) -> anyhow::Result<ExitCode> {
    match command {}
}

//! The `postmaster` binary: a thin shell over the library (see lib.rs).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = postmaster::cli::Cli::parse();
    let code = postmaster::cli::run(cli);
    std::process::ExitCode::from(code as u8)
}

//! The `tether` binary: a thin shell over [`tether::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    tether::cli::main()
}

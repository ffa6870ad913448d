//! `retro info`: what this build and machine can do.
use std::process::ExitCode;

pub fn run() -> ExitCode {
    let (report, ok) = retro::commands::info::report();
    print!("{report}");
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("retro info: a kernel check failed (see above)");
        ExitCode::FAILURE
    }
}

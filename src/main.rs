use std::process::ExitCode;

fn main() -> ExitCode {
    pollhook::cli::main()
}

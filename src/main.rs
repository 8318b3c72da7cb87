use std::process::ExitCode;

use clap::Parser;

use scopegate::cli::{Cli, Command};
use scopegate::settings::LogFormat;

// mimalloc: hyper and the gateway allocate small, short-lived buffers on every request, from
// every worker thread; mimalloc's thread-local free lists serve those several times faster than
// glibc's malloc and return memory to the OS as readily.
#[global_allocator]
static GLOBAL: scopegate::allocator::Allocator = scopegate::allocator::Allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scopegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run(args) => {
            let settings = match args.settings() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("scopegate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let format = cli.log_format.unwrap_or(settings.log_format);
            let _log = scopegate::telemetry::init(cli.log_level.as_deref(), format);
            match runtime.block_on(scopegate::run(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "scopegate stopped");
                    eprintln!("scopegate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => scopegate::explain::check(&args),
        Command::Explain(args) => scopegate::explain::explain(&args),
        Command::Suggest(args) => scopegate::suggest::run(&args),
        Command::Demo(args) => {
            let _log = scopegate::telemetry::init(
                Some(cli.log_level.as_deref().unwrap_or("warn")),
                cli.log_format.unwrap_or(LogFormat::Human),
            );
            runtime.block_on(scopegate::demo::run(&args))
        }
    }
}

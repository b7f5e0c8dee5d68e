use std::process::ExitCode;

use clap::Parser;
use launcher::cli::LogFormat;
use launcher::cli::{Cli, Command, DhcpCommand, NetworkCommand};
use launcher::error::{exit_kind_of, ExitKind};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version exit 0; every usage error exits 2.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let log_format = launcher::logging::init(cli.global.log_format, cli.global.verbose);
    let g = &cli.global;
    let result = match &cli.command {
        Command::Validate(a) => launcher::spec::cmd_validate(g, a),
        Command::Render(a) => launcher::domain::cmd_render(g, a),
        Command::Network(NetworkCommand::Setup(a)) => launcher::net::cmd_setup(g, a),
        Command::Network(NetworkCommand::Teardown) => launcher::net::cmd_teardown(g),
        Command::Network(NetworkCommand::Show) => launcher::net::cmd_show(g),
        Command::Run(a) => launcher::supervise::cmd_run(g, a),
        Command::Status => launcher::supervise::cmd_status(g),
        Command::Console => launcher::supervise::cmd_console(g),
        Command::Dhcp(DhcpCommand::Serve(a)) => launcher::dhcp::cmd_serve(g, a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let kind = exit_kind_of(&err);
            if kind == ExitKind::InvalidSpec && log_format == LogFormat::Text {
                // A validation report is multi-line and meant for a person at a terminal.
                eprintln!("{err:#}");
            } else {
                // `{:#}` prints the whole context chain on one line: operation, object, cause.
                tracing::error!(exit_code = kind.code(), kind = %kind, "{err:#}");
            }
            ExitCode::from(kind.code())
        }
    }
}

//! The command-line contract. Other tools and tests depend on these words: keep them stable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0      done (including guest poweroff and a graceful SIGTERM)
  1      internal error
  2      invalid spec or usage (the field path is named)
  3      a missing precondition (no eth0, no /dev/kvm with --accel kvm, a missing tool; named)
  4      hypervisor failure (qemu crashed, libvirt error)
  128+n  killed by signal n";

#[derive(Debug, Parser)]
#[command(
    name = "launcher",
    version,
    about = "Turns a kubevirt.io/v1 VirtualMachineInstance into a running, networked VM inside a launcher pod",
    after_help = EXIT_CODES_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The VMI (or VirtualMachine) manifest, YAML or JSON; `-` reads standard input.
    #[arg(long, global = true, env = "LAUNCHER_VMI", value_name = "FILE|-")]
    pub vmi: Option<PathBuf>,

    /// Private state of this launcher: recorded pod state, status.json, sockets, NVRAM.
    #[arg(
        long,
        global = true,
        default_value = "/var/run/kubevirt-private",
        value_name = "DIR"
    )]
    pub run_dir: PathBuf,

    /// Where container disks and kernel-boot artifacts are mounted.
    #[arg(
        long,
        global = true,
        default_value = "/var/run/kubevirt/container-disks",
        value_name = "DIR"
    )]
    pub container_disk_dir: PathBuf,

    /// Accelerator: kvm, tcg (software emulation), or auto (kvm when /dev/kvm opens).
    #[arg(long, global = true, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,

    /// With --accel auto, fall back to software emulation when /dev/kvm is missing.
    #[arg(long, global = true)]
    pub allow_emulation: bool,

    /// Directory whose templates override the built-in domxml-templates/ of the same name.
    #[arg(long, global = true, value_name = "DIR")]
    pub template_dir: Option<PathBuf>,

    /// Multus network-status JSON (the downward-API file of the
    /// k8s.v1.cni.cncf.io/network-status annotation).
    #[arg(long, global = true, value_name = "FILE")]
    pub network_status: Option<PathBuf>,

    /// Owner of the tap devices: `root` or the qemu user's name.
    #[arg(long, global = true, default_value = "root", value_name = "USER")]
    pub tap_owner: String,

    /// Log format; JSON when stderr is not a TTY.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate, plumb the pod network, serve DHCP, start libvirt and the VM, and supervise it.
    Run(RunArgs),
    /// Print the libvirt domain XML for the VMI (a dry run: needs no pod).
    Render(RenderArgs),
    /// Plumb, undo or show the pod network for the VMI.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Check the VMI: defaults applied, every problem reported with its field path.
    Validate(ValidateArgs),
    /// Print <run-dir>/status.json; exit 0 only while the domain is running.
    Status,
    /// Attach the terminal to the VM's serial console (detach with Ctrl-]).
    Console,
    /// Developer tools: run the embedded DHCP server alone (tests and benchmarks).
    #[command(subcommand, hide = true)]
    Dhcp(DhcpCommand),
}

#[derive(Debug, Subcommand)]
pub enum DhcpCommand {
    /// Serve DHCPv4 from a JSON `V4Config` file (a list of them) until SIGTERM/SIGINT.
    Serve(DhcpServeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DhcpServeArgs {
    /// JSON file holding a list of `V4Config` objects.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Use an existing libvirt daemon instead of starting one (e.g. qemu:///system). Only local
    /// URIs: qemu:///system, qemu:///session, qemu+unix:///system?socket=PATH.
    #[arg(long, value_name = "URI", value_parser = parse_libvirt_uri)]
    pub libvirt_uri: Option<String>,

    /// Where the final reason is written (Kubernetes' terminationMessagePath).
    #[arg(long, default_value = "/dev/termination-log", value_name = "PATH")]
    pub termination_log: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RenderArgs {}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Also list fields this launcher does not know (they are otherwise ignored).
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Plumb the pod network for the VMI's interfaces.
    Setup(NetworkSetupArgs),
    /// Undo the plumbing from the state recorded in <run-dir>.
    Teardown,
    /// Print the network plan as JSON (needs the pod's interfaces, changes nothing).
    Show,
}

#[derive(Debug, Clone, Args)]
pub struct NetworkSetupArgs {
    /// Stay in the foreground serving DHCP until SIGTERM/SIGINT, then tear down and exit 0.
    #[arg(long)]
    pub serve: bool,
}

/// Refuses, as a usage error before anything is touched, a URI the launcher's own libvirt client
/// cannot reach (a remote transport, another driver).
fn parse_libvirt_uri(s: &str) -> Result<String, String> {
    crate::supervise::rpc::resolve_uri(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn an_unreachable_libvirt_uri_is_a_usage_error() {
        let parse = |uri: &str| Cli::try_parse_from(["launcher", "run", "--libvirt-uri", uri]);
        for bad in [
            "qemu+tcp://host/system",
            "qemu+ssh://host/system",
            "xen:///system",
            "qemu",
        ] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad}: {e}"
            );
            assert!(e.to_string().contains("built-in libvirt client"), "{e}");
        }
        for good in [
            "qemu:///system",
            "qemu+unix:///system?socket=/x/libvirt-sock",
        ] {
            parse(good).expect(good);
        }
    }

    #[test]
    fn global_options_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "launcher", "network", "setup", "--vmi", "x.yaml", "--serve", "--accel", "tcg",
        ])
        .unwrap();
        assert_eq!(cli.global.accel, Accel::Tcg);
        assert_eq!(
            cli.global.vmi.as_deref(),
            Some(std::path::Path::new("x.yaml"))
        );
        assert!(matches!(
            cli.command,
            Command::Network(NetworkCommand::Setup(NetworkSetupArgs { serve: true }))
        ));
    }
}

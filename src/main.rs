use clap::Parser;

/// mimalloc instead of glibc malloc: watch events are allocated on the apply thread and
/// freed on stream threads, a pattern that fragments glibc's per-thread arenas until RSS
/// drifts far above the live heap. mimalloc returns freed pages to the system promptly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cairn::config::{normalize_args, Config, Flags, CLUSTER_VERSION, ETCD_VERSION};
use cairn::failstop::FailStop;

fn print_version() {
    println!("cairn Version: {}", env!("CARGO_PKG_VERSION"));
    println!("etcd Version: {ETCD_VERSION}");
    println!("API Version: {CLUSTER_VERSION}");
    println!("OS/Arch: {}/{}", std::env::consts::OS, std::env::consts::ARCH);
}

fn main() -> std::process::ExitCode {
    // `cairn bench ...` is the load generator; everything else is the server and its flags.
    if cairn::bench::is_invocation(std::env::args_os()) {
        return cairn::bench::main(std::env::args_os().skip(1));
    }
    let flags = match Flags::try_parse_from(normalize_args(std::env::args())) {
        Ok(flags) => flags,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::SUCCESS
            };
        }
    };
    if flags.version {
        print_version();
        return std::process::ExitCode::SUCCESS;
    }
    let config = match Config::from_flags(flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cairn: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    cairn::logging::init(config.log_level, config.log_to_stdout);
    // Failpoints named in $FAILPOINTS (fault-injection builds only; see `failstop`).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let failstop = FailStop::new();
    install_panic_hook(failstop.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cairn::server::run(
        config,
        async {
            shutdown_signal().await;
        },
        failstop,
    ));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cairn stopped on an error");
            eprintln!("cairn: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A panic anywhere is fatal, as in etcd (Go's unrecovered panic ends the process): tokio
/// would otherwise catch it inside one task and leave a member serving without it.
fn install_panic_hook(failstop: FailStop) {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        failstop.trip(format!("panic: {info}"));
    }));
}

/// SIGINT or SIGTERM, as etcd stops on either.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

//! The `pgsplit` binary: command line, runtime, signals; nothing else.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use pgsplit::config::{Config, LogFormat};
use pgsplit::proxy::Proxy;

#[derive(Parser)]
#[command(
    name = "pgsplit",
    version,
    about = "PostgreSQL proxy and connection pooler that follows the leader and splits reads from writes"
)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, env = "PGSPLIT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy (the default).
    Run,
    /// Validate the config and print it with secrets masked.
    Check,
    /// Start a throw-away local leader + 2 replicas with pgsplit in front.
    Demo,
}

fn load(path: Option<PathBuf>) -> Result<Config, String> {
    let path = path.ok_or("no config file: pass --config FILE or set PGSPLIT_CONFIG")?;
    Config::load(&path).map_err(|e| e.to_string())
}

/// Logs to stdout as text or JSON lines; `RUST_LOG` wins over `level`.
/// Text is coloured only on a terminal (and not under `NO_COLOR`): a log
/// collected from a pipe, as Kubernetes collects it, stays plain text.
fn init_logging(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Cmd::Run);
    if let Cmd::Check = command {
        return match load(cli.config) {
            Ok(config) => {
                print!("{}", config.masked_toml());
                eprintln!("config OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgsplit: invalid config: {e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match command {
        Cmd::Demo => None,
        _ => match load(cli.config) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("pgsplit: invalid config: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match &config {
        Some(c) => init_logging(c.proxy.log_format, &c.proxy.log_level),
        None => init_logging(LogFormat::Text, "info"),
    }
    // The demo, which has no config file, keeps the multi-thread runtime.
    let threads = config.as_ref().map_or(0, |c| c.proxy.worker_threads);
    let yields = config.as_ref().is_some_and(|c| c.proxy.yield_before_sleep);
    let before_sleep = yields.then_some(yield_unless_clients_wait as fn());
    let runtime = match build_runtime(threads, before_sleep) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgsplit: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match config {
        None => runtime
            .block_on(pgsplit::demo::run())
            .map_err(|e| e.to_string()),
        Some(config) => runtime.block_on(serve(config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsplit: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `yield_before_sleep`: the event loop about to sleep yields its CPU,
/// unless clients wait for servers (then moving answers, which frees
/// servers, must not wait behind anything).
fn yield_unless_clients_wait() {
    if !pgsplit::pool::pools::clients_waiting() {
        pgsplit::syscall::yield_cpu();
    }
}

/// The runtime for `worker_threads`: one thread runs a single event loop
/// (tokio's current-thread scheduler: no work stealing, no cross-thread
/// wake-ups; up to 18% less CPU per pooled transaction in A/B runs here);
/// more use the multi-thread scheduler, 0 with one worker per CPU core.
/// `before_sleep` runs each time a worker is about to sleep
/// (`yield_before_sleep`).
fn build_runtime(
    threads: u32,
    before_sleep: Option<fn()>,
) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n as usize);
            b
        }
    };
    if let Some(hook) = before_sleep {
        builder.on_thread_park(hook);
    }
    builder.enable_all().build()
}

async fn serve(config: Config) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: a signal that arrives while starting is not lost.
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let proxy = Proxy::start(config).await.map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                if let Err(e) = proxy.reload().await {
                    tracing::error!(error = %e, "reload failed");
                }
            }
        }
    }
    tracing::info!("signal received: graceful shutdown (a second signal stops at once)");
    let second = async {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("second signal: stopping now");
    };
    let left = proxy.shutdown(second).await;
    tracing::info!(clients_left = left, "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::build_runtime;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn worker_threads_pick_the_scheduler() {
        let flavor = |n| build_runtime(n, None).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(0), RuntimeFlavor::MultiThread);
        let three = build_runtime(3, None).unwrap();
        assert_eq!(three.metrics().num_workers(), 3);
    }

    static SLEEPS: AtomicUsize = AtomicUsize::new(0);

    fn count_sleep() {
        SLEEPS.fetch_add(1, Ordering::Relaxed);
    }

    /// The hook runs each time the one event loop is about to sleep
    /// (here: waiting for a timer), and not without the setting.
    #[test]
    fn before_sleep_runs_when_the_event_loop_sleeps() {
        let nap = || tokio::time::sleep(std::time::Duration::from_millis(2));
        build_runtime(1, None)
            .unwrap()
            .block_on(async { nap().await });
        assert_eq!(SLEEPS.load(Ordering::Relaxed), 0);
        build_runtime(1, Some(count_sleep))
            .unwrap()
            .block_on(async {
                for _ in 0..3 {
                    nap().await;
                }
            });
        assert!(
            SLEEPS.load(Ordering::Relaxed) >= 3,
            "hook not run before sleeping"
        );
    }
}

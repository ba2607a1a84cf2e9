//! The service: a fleet pass every interval until SIGTERM or SIGINT, with the
//! metrics server beside it. Its log lines are under this module's target,
//! `rotate_host::gateway`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::fleet::{Fleet, FleetError, PassReport};
use crate::metrics::Metrics;

/// `rotate-host gateway`: a pass every `interval` until SIGTERM or SIGINT.
/// A signal stops new rotations; those running finish, and it exits 0.
pub async fn gateway(
    mut fleet: Fleet,
    mut interval: Duration,
    metrics: Option<(SocketAddr, Arc<Metrics>)>,
    reload: Reload,
) -> Result<(), FleetError> {
    let wake = Arc::new(Notify::new());
    let hangup = Arc::new(AtomicBool::new(false));
    watch_signals(fleet.clone(), wake.clone(), hangup.clone())?;
    let metrics = match metrics {
        Some((addr, m)) => {
            crate::metrics::serve(addr, m.clone())
                .await
                .map_err(FleetError::Usage)?;
            Some(m)
        }
        None => None,
    };
    loop {
        match fleet.pass().await {
            Ok(report) => {
                if let Some(m) = &metrics {
                    m.record_pass(&report);
                }
                log_pass(&report);
            }
            // A bad or locked vault now may be fixed by the next pass.
            Err(e) => tracing::error!(
                "the pass did not run: {}",
                crate::text::printable(&e.to_string())
            ),
        }
        if fleet.stopping() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
        }
        if fleet.stopping() {
            return Ok(());
        }
        if hangup.swap(false, Ordering::SeqCst) {
            let reload = reload.clone();
            let reloaded = tokio::task::spawn_blocking(move || reload()).await;
            // A SIGTERM that came while the plugin compiled: no pass starts.
            if fleet.stopping() {
                return Ok(());
            }
            match reloaded {
                Ok(Ok((fresh, every))) => {
                    fleet = fresh.sharing_stop(&fleet);
                    interval = every;
                    tracing::info!(
                        "SIGHUP: settings and plugin read again; the next pass uses them"
                    );
                }
                Ok(Err(e)) => tracing::error!(
                    "SIGHUP: could not read the settings again ({}); the gateway keeps the ones it runs with",
                    crate::text::printable(&e)
                ),
                Err(_) => tracing::error!(
                    "SIGHUP: reading the settings again panicked; the gateway keeps the ones it runs with"
                ),
            }
        }
    }
}

/// Builds the fleet and the interval again from the command line and its
/// config file (SIGHUP).
pub type Reload = Arc<dyn Fn() -> Result<(Fleet, Duration), String> + Send + Sync>;

/// The first SIGTERM or SIGINT stops new rotations and wakes the loop; a
/// second exits at once (crash safety covers a rotation cut short). SIGHUP
/// asks for a reload between passes.
fn watch_signals(
    fleet: Fleet,
    wake: Arc<Notify>,
    hangup: Arc<AtomicBool>,
) -> Result<(), FleetError> {
    use tokio::signal::unix::{SignalKind, signal};
    let watch = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| FleetError::Usage(format!("could not watch for {name}: {e}")))
    };
    let mut term = watch(SignalKind::terminate(), "SIGTERM")?;
    let mut int = watch(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = watch(SignalKind::hangup(), "SIGHUP")?;
    let woken = wake.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(
                "SIGHUP received: reading the settings and the plugin again after this pass"
            );
            hangup.store(true, Ordering::SeqCst);
            woken.notify_one();
        }
    });
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received: starting no new rotation, finishing those running");
        fleet.stop();
        wake.notify_one();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal received: exiting at once");
        std::process::exit(crate::exit::Exit::Interrupted.code());
    });
    Ok(())
}

/// A pass where nothing is due writes only its summary at INFO; a not-due
/// record with something to say (an old key in use) stays at INFO.
fn log_pass(report: &PassReport) {
    let lines = report.lines();
    let (summary, records) = lines.split_last().expect("a summary line");
    let first_not_due = records.len() - report.not_due.len();
    for (i, line) in records.iter().enumerate() {
        let quiet = i
            .checked_sub(first_not_due)
            .is_some_and(|n| report.not_due[n].notes.is_empty());
        if quiet {
            tracing::debug!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }
    tracing::info!("{summary}");
}

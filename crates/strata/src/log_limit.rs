//! Rate limiting of warnings and errors: a client that fails every request
//! the same way must not flood the node's log. Each call site may log
//! [`BURST`] warnings or errors per [`WINDOW`]; the rest are dropped and
//! counted (`strata_log_events_suppressed_total`). Other levels pass.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::Metadata;
use tracing::callsite::Identifier;

/// Warnings and errors one call site may log per window.
pub const BURST: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(10);

/// Per call site: when its window began, and events logged in it.
static SITES: Mutex<Option<HashMap<Identifier, (Instant, u32)>>> = Mutex::new(None);

/// The filter: `false` drops the event.
pub fn allow(metadata: &Metadata<'_>) -> bool {
    if !metadata.is_event() || *metadata.level() > tracing::Level::WARN {
        return true;
    }
    allow_at(metadata.callsite(), Instant::now())
}

fn allow_at(site: Identifier, now: Instant) -> bool {
    let Ok(mut sites) = SITES.lock() else { return true };
    let (start, count) = sites.get_or_insert_with(HashMap::new).entry(site).or_insert((now, 0));
    if now.duration_since(*start) >= WINDOW {
        (*start, *count) = (now, 0);
    }
    if *count >= BURST {
        strata_server::metrics::LOG_EVENTS_SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    *count += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Site;
    impl tracing::callsite::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unimplemented!("not read by the limiter")
        }
    }
    static SITE: Site = Site;

    #[test]
    fn a_call_site_logs_a_burst_per_window_and_the_rest_is_counted() {
        let t0 = Instant::now();
        let site = || Identifier(&SITE);
        let before = strata_server::metrics::LOG_EVENTS_SUPPRESSED.load(Ordering::Relaxed);
        let allowed = (0..BURST + 15).filter(|_| allow_at(site(), t0)).count();
        assert_eq!(allowed, BURST as usize);
        assert!(strata_server::metrics::LOG_EVENTS_SUPPRESSED.load(Ordering::Relaxed) >= before + 15);
        assert!(allow_at(site(), t0 + WINDOW), "a new window lets it log again");
    }
}

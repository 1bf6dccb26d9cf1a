//! Profiling on the admin port (connectsrv serves Go's pprof on its own port): a CPU profile of
//! the whole process sampled at 99 Hz for `seconds` (1-60, default 10), returned as a pprof
//! protobuf (`GET /debug/pprof/profile`, readable by `go tool pprof` and
//! <https://pprof.me>) or as a flame graph SVG (`GET /debug/pprof/flamegraph`); and the
//! allocator's statistics (`GET /debug/heap`: glibc `mallinfo2`, plus VmRSS). Off unless
//! `admin.profiling = true`; behind the admin token like the rest of the API.

use std::time::Duration;

use hyper::StatusCode;
use pprof::protos::Message as _;

use super::{HttpResponse, error, json, response};

/// Sampling frequency, Hz (99, not 100, so samples do not beat with 10 ms timers).
const FREQUENCY_HZ: i32 = 99;
/// Longest profile one request may ask for, seconds.
const MAX_SECONDS: u64 = 60;
/// The flame graph of a profile without samples (the process used no CPU).
const EMPTY_SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\">\
    <text x=\"10\" y=\"25\">no samples: the process used no CPU while profiled</text></svg>";
/// Only one profile at a time: the sampler is process-wide (SIGPROF).
static BUSY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What to return.
#[derive(Clone, Copy)]
pub(super) enum Output {
    Pprof,
    FlameGraph,
}

/// `seconds` from the query string: 1-60, default 10. Errors: not a number or out of range.
fn seconds(query: Option<&str>) -> Result<u64, String> {
    let value =
        form_urlencoded::parse(query.unwrap_or("").as_bytes()).find(|(k, _)| k == "seconds").map(|(_, v)| v);
    match value {
        None => Ok(10),
        Some(v) => match v.parse::<u64>() {
            Ok(s) if (1..=MAX_SECONDS).contains(&s) => Ok(s),
            _ => Err(format!("seconds must be 1-{MAX_SECONDS}, got `{v}`")),
        },
    }
}

/// Samples the process for the requested time and answers with the profile. 400 on a bad
/// `seconds`, 409 while another profile runs, 500 if the sampler cannot start.
pub(super) async fn cpu(query: Option<&str>, output: Output) -> HttpResponse {
    let seconds = match seconds(query) {
        Ok(s) => s,
        Err(why) => return error(StatusCode::BAD_REQUEST, "bad_request", why),
    };
    let Ok(_only_one) = BUSY.try_lock() else {
        return error(StatusCode::CONFLICT, "busy", "another profile is being recorded");
    };
    let guard = match pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
    {
        Ok(guard) => guard,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "profiler", e),
    };
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // Symbolising takes a while for a large profile: off the runtime's worker threads.
    let rendered = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let report = guard.report().build().map_err(|e| e.to_string());
        // Stops the sampler and frees its sample table (~65 MiB; third_party/pprof/PATCHED.md)
        // before the memory is given back below.
        drop(guard);
        let report = report?;
        let mut out = Vec::new();
        match output {
            Output::Pprof => {
                let profile = report.pprof().map_err(|e| e.to_string())?;
                profile.encode(&mut out).map_err(|e| e.to_string())?;
            }
            // inferno writes nothing for an empty profile: say why in the picture.
            Output::FlameGraph if report.data.is_empty() => out.extend_from_slice(EMPTY_SVG.as_bytes()),
            Output::FlameGraph => report.flamegraph(&mut out).map_err(|e| e.to_string())?,
        }
        drop(report);
        // Symbolising parsed the binary's debug info (~160 MB for the release build) into
        // the `backtrace` crate's global cache, kept for the next lookup:
        // a profile is rare, so free it and give the pages back.
        backtrace::clear_symbol_cache();
        crate::memory::give_back_memory();
        Ok(out)
    })
    .await;
    match (rendered, output) {
        (Ok(Ok(bytes)), Output::Pprof) => response(StatusCode::OK, "application/octet-stream", bytes),
        (Ok(Ok(bytes)), Output::FlameGraph) => response(StatusCode::OK, "image/svg+xml", bytes),
        (Ok(Err(why)), _) => error(StatusCode::INTERNAL_SERVER_ERROR, "profiler", why),
        (Err(e), _) => error(StatusCode::INTERNAL_SERVER_ERROR, "profiler", e),
    }
}

/// glibc's allocator statistics (`mallinfo2`, bytes) and the process's resident set; with
/// another allocator (`--features jemalloc` / `mimalloc`) only its name and the resident set.
pub(super) fn heap() -> HttpResponse {
    let rss_bytes = crate::memory::rss_bytes();
    #[cfg(target_env = "gnu")]
    if crate::memory::GLIBC {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let info = unsafe { libc::mallinfo2() };
        return json(
            StatusCode::OK,
            serde_json::json!({
                "allocator": "glibc malloc",
                "arena_bytes": info.arena,
                "mmap_bytes": info.hblkhd,
                "in_use_bytes": info.uordblks,
                "free_bytes": info.fordblks,
                "releasable_bytes": info.keepcost,
                "rss_bytes": rss_bytes,
            }),
        );
    }
    let allocator = if cfg!(feature = "mimalloc") {
        "mimalloc"
    } else if cfg!(feature = "jemalloc") {
        "jemalloc"
    } else {
        "system"
    };
    json(StatusCode::OK, serde_json::json!({ "allocator": allocator, "rss_bytes": rss_bytes }))
}

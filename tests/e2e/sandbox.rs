//! Hostile scripts: a trap, an endless loop, a memory bomb and runaway recursion each cost
//! one error frame for that message; the instance is rebuilt and everyone else keeps working.

use std::time::{Duration, Instant};

use wasmgate_tests::{HOSTILE_ROUTER, Harness, PROMPT, error_of, metric, metric_sum};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_looping_and_greedy_scripts_fail_one_message_only() {
    let h = Harness::start_with(|c| {
        c.scripts.router.path = Some(HOSTILE_ROUTER.into());
        c.scripts.deadline_ms = 100;
        c.scripts.memory_bytes = 16 << 20;
    })
    .await;
    let mut victim = h.logged_in_ws("victim").await;
    let mut bystander = h.logged_in_ws("bystander").await;

    for (msg_id, what) in
        [(900, "panic"), (901, "endless loop"), (902, "memory bomb"), (903, "deep recursion")]
    {
        let started = Instant::now();
        let seq = victim.send(msg_id, b"").await.unwrap();
        let (error, _) = victim.recv_reply(4, seq, PROMPT).await.unwrap();
        assert_eq!(error_of(&error.body).0, "script_error", "{what}");
        assert!(started.elapsed() < Duration::from_secs(5), "{what} took {:?}", started.elapsed());
        // The same session and another one are still routed by the rebuilt instances.
        for c in [&mut victim, &mut bystander] {
            let seq = c.send(100, what.as_bytes()).await.unwrap();
            let (reply, _) = c.recv_reply(100, seq, PROMPT).await.unwrap();
            assert_eq!(&reply.body[..], what.as_bytes());
        }
    }
    // A dropped packet gets no answer and is counted; the next one is answered.
    victim.send(904, b"into the void").await.unwrap();
    let seq = victim.send(100, b"after the drop").await.unwrap();
    let (_, before) = victim.recv_reply(100, seq, PROMPT).await.unwrap();
    assert!(before.is_empty(), "a dropped packet was answered: {before:?}");
    let (_, metrics) = h.admin_get("/metrics").await;
    assert_eq!(metric(&metrics, "wasmgate_script_dropped_total"), 1.0);
    let calls = |outcome: &str| {
        metric_sum(
            &metrics,
            "wasmgate_script_calls_total",
            &["script=\"router\"", &format!("outcome=\"{outcome}\"")],
        )
    };
    // The loop ends at the deadline; the others trap (on a CPU-starved machine one of them may
    // run past the 100 ms deadline first, so only the total is exact).
    assert!(calls("deadline") >= 1.0, "{metrics}");
    assert_eq!(calls("trap") + calls("deadline"), 4.0);
    assert_eq!(h.gateway.sessions(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_is_not_a_router_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    wasmgate_tests::write_dest_map(&dir, &[]);
    wasmgate_tests::write_message_map(&dir, &[]);
    let mut config = wasmgate_tests::test_config(&dir);
    // The hostile router as the auth script: wrong world.
    config.scripts.auth.path = Some(HOSTILE_ROUTER.into());
    let err = wasmgate::RunningGateway::start(config).await.err().expect("must refuse");
    assert!(format!("{err:#}").contains("does not fit its world"), "{err:#}");

    let mut config = wasmgate_tests::test_config(&dir);
    std::fs::write(dir.path().join("junk.wasm"), b"not wasm").unwrap();
    config.scripts.router.path = Some(dir.path().join("junk.wasm"));
    let err = wasmgate::RunningGateway::start(config).await.err().expect("must refuse");
    assert!(format!("{err:#}").contains("cannot be loaded"), "{err:#}");

    let mut config = wasmgate_tests::test_config(&dir);
    config.scripts.auth.config = toml::Table::new();
    let err = wasmgate::RunningGateway::start(config).await.err().expect("must refuse");
    assert!(format!("{err:#}").contains("secret"), "{err:#}");
}

/// Runaway calls share the long-call lanes (`scripts.long_calls`): four endless loops at once
/// take turns on one lane (the others wait, counted), each still ends at its deadline, and a
/// bystander's messages are routed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_calls_take_turns_on_the_long_call_lane() {
    let h = Harness::start_with(|c| {
        c.scripts.router.path = Some(HOSTILE_ROUTER.into());
        c.scripts.deadline_ms = 300;
        c.scripts.long_calls = 1;
    })
    .await;
    let mut loopers = Vec::new();
    for i in 0..4 {
        let mut client = h.logged_in_ws(&format!("looper-{i}")).await;
        loopers.push(tokio::spawn(async move {
            let seq = client.send(901, b"").await.unwrap(); // an endless loop
            let (error, _) = client.recv_reply(4, seq, PROMPT).await.unwrap();
            error_of(&error.body).0
        }));
    }
    let mut bystander = h.logged_in_ws("bystander").await;
    for i in 0..5 {
        let body = format!("meanwhile {i}");
        let seq = bystander.send(100, body.as_bytes()).await.unwrap();
        let (reply, _) = bystander.recv_reply(100, seq, PROMPT).await.unwrap();
        assert_eq!(reply.body, body.as_bytes());
    }
    for looper in loopers {
        assert_eq!(looper.await.unwrap(), "script_error");
    }
    assert!(h.metric("wasmgate_script_lane_waits_total") >= 1.0, "the loops waited for the lane");
    let (_, metrics) = h.admin_get("/metrics").await;
    let deadlines =
        metric_sum(&metrics, "wasmgate_script_calls_total", &["script=\"router\"", "outcome=\"deadline\""]);
    assert_eq!(deadlines, 4.0, "{metrics}");
}

/// A runaway call gives its place in the script's pool back while it waits for a lane: with as
/// many endless loops in flight as the router has instances, another session's messages are
/// still routed at once, on instances built beside the loops (before, they waited for an
/// instance until a loop ended at its deadline, 3 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_on_every_instance_leave_room_for_short_calls() {
    const INSTANCES: usize = 4;
    let h = Harness::start_with(|c| {
        c.scripts.router.path = Some(HOSTILE_ROUTER.into());
        c.scripts.deadline_ms = 3_000;
        c.scripts.long_calls = 1;
        c.scripts.instances = INSTANCES;
    })
    .await;
    let mut loopers = Vec::new();
    for i in 0..INSTANCES {
        let mut client = h.logged_in_ws(&format!("looper-{i}")).await;
        loopers.push(tokio::spawn(async move {
            let seq = client.send(901, b"").await.unwrap(); // an endless loop
            let (error, _) = client.recv_reply(4, seq, PROMPT).await.unwrap();
            error_of(&error.body).0
        }));
    }
    // Every loop is long (has used its tick of CPU) before the bystander sends.
    let until = Instant::now() + Duration::from_secs(2);
    while h.metric("wasmgate_script_long_calls_total") < INSTANCES as f64 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.metric("wasmgate_script_long_calls_total"), INSTANCES as f64, "every loop is long");
    let mut bystander = h.logged_in_ws("bystander").await;
    for i in 0..5 {
        let body = format!("meanwhile {i}");
        let started = Instant::now();
        let seq = bystander.send(100, body.as_bytes()).await.unwrap();
        let (reply, _) = bystander.recv_reply(100, seq, PROMPT).await.unwrap();
        assert_eq!(reply.body, body.as_bytes());
        assert!(started.elapsed() < Duration::from_secs(1), "message {i} waited {:?}", started.elapsed());
    }
    for looper in loopers {
        assert_eq!(looper.await.unwrap(), "script_error");
    }
    assert_eq!(h.metric("wasmgate_script_long_calls_released_total"), INSTANCES as f64);
}

/// Whether a call is long (needs a lane) is judged by the CPU it used, not by wall time: calls
/// of ~0.3 ms of CPU, on worker threads that share one core with busy threads (so that some
/// are descheduled mid-call for several ticks), never take a lane, while a loop still does.
#[test]
fn a_descheduled_short_call_takes_no_lane() {
    // Everything this test starts (runtime workers, busy threads) runs on the first CPU this
    // thread may use; the affinity is inherited by threads created from here, and this
    // thread's is given back at the end.
    // SAFETY: plain C calls on zeroed `cpu_set_t`s owned here.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe {
        assert_eq!(libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut allowed), 0);
        let cpu = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &allowed)).unwrap();
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one), 0);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(60)
                {
                    std::hint::black_box(started.elapsed());
                }
            })
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (long_calls, descheduled) = runtime.block_on(async {
        let h = Harness::start_with(|c| {
            c.scripts.router.path = Some(HOSTILE_ROUTER.into());
            c.scripts.deadline_ms = 2_000;
            c.scripts.long_calls = 1;
            c.timeouts.heartbeat_ms = 600_000;
        })
        .await;
        let mut client = h.logged_in_ws("short").await;
        // ~0.2-0.4 ms of CPU per call (~1-2 ns per iteration); a call that sits behind the
        // busy threads takes several ms of wall time.
        let mut descheduled = 0;
        for _ in 0..300 {
            let started = Instant::now();
            let seq = client.send(906, b"200000").await.unwrap();
            let (reply, _) = client.recv_reply(906, seq, PROMPT).await.unwrap();
            assert_eq!(reply.body.len(), 8);
            if started.elapsed() > Duration::from_millis(3) {
                descheduled += 1;
            }
        }
        assert_eq!(h.metric("wasmgate_script_lane_waits_total"), 0.0);
        let short = h.metric("wasmgate_script_long_calls_total");
        // A loop is still long.
        let seq = client.send(906, b"100000000000").await.unwrap();
        let (error, _) = client.recv_reply(4, seq, PROMPT).await.unwrap();
        assert_eq!(error_of(&error.body).0, "script_error");
        assert!(h.metric("wasmgate_script_long_calls_total") > short);
        (short, descheduled)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.into_iter().for_each(|t| t.join().unwrap());
    drop(runtime);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &allowed) }, 0);
    eprintln!("{descheduled} of 300 calls took over 3 ms of wall time");
    assert!(descheduled > 0, "nothing was descheduled: the test proves nothing");
    assert_eq!(long_calls, 0.0, "short calls took a lane ({descheduled} were descheduled)");
}

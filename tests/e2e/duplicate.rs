//! Duplicate logins: the auth script's policy (`kick-older`, `refuse-new`) on one node and
//! across two nodes of a cluster (real redis-server and etcd), racing logins, and the
//! account-lost callback (seed 004) counted by the default auth script.

use std::time::Duration;

use serde_json::json;
use wasmgate_tests::servers::{EtcdServer, RedisServer};
use wasmgate_tests::{
    ADMIN_TOKEN, Client, Harness, PROMPT, Received, error_of, expect_error_then_close, metric, token,
    wait_until, with_admin_token,
};

const PUSH: u32 = 9;
const LOGIN: u32 = 1;

/// A gateway whose auth script applies `policy`, in the cluster of `redis` and `etcd` if given.
async fn gateway(policy: &str, cluster: Option<(&RedisServer, &EtcdServer)>) -> Harness {
    let policy = policy.to_string();
    let cluster = cluster.map(|(r, e)| (r.url(), e.endpoint()));
    Harness::start_with(move |c| {
        with_admin_token(c);
        c.scripts.auth.config.insert("duplicate_login".into(), toml::Value::String(policy));
        if let Some((redis, etcd)) = cluster {
            c.node.id = 1;
            c.cluster.redis_url = Some(redis);
            c.cluster.etcd_endpoints = vec![etcd];
            c.cluster.ttl_s = 2;
            c.cluster.location_ttl_s = 3;
        }
    })
    .await
}

async fn push_to(h: &Harness, user: &str, data: &str) -> serde_json::Value {
    let body = json!({ "user_id": user, "data": data }).to_string();
    let (status, answer) = h.admin("POST", "/push/user", &body, false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn expect_push(client: &mut Client, data: &str) {
    loop {
        let packet = client.recv_within(PROMPT).await.expect("a push").packet().expect("a packet");
        if packet.msg_id == PUSH {
            return assert_eq!(packet.body, data.as_bytes());
        }
    }
}

fn script_counter(text: &str, name: &str) -> f64 {
    metric(text, &format!("wasmgate_script_events_total{{script=\"auth\",name=\"{name}\"}}"))
}

async fn wait_counter(h: &Harness, name: &str, value: f64) {
    wait_until(&format!("auth counter {name} = {value}"), || async {
        let (_, text) = h.admin_get("/metrics").await;
        script_counter(&text, name) == value
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_older_closes_the_older_session_with_4006_and_the_script_hears_it_lost() {
    let h = gateway("kick-older", None).await;
    let mut first = h.logged_in_ws("alice").await;
    let mut second = h.logged_in_ws("alice").await;
    expect_error_then_close(&mut first, "replaced", Some(4006)).await;
    assert_eq!(push_to(&h, "alice", "to the newer").await, json!({"delivered": 1}));
    expect_push(&mut second, "to the newer").await;
    wait_counter(&h, "account_lost_replaced", 1.0).await;

    second.close().await.expect("close");
    wait_counter(&h, "account_lost_normal", 1.0).await;
    // A session that never logged in is no lost account.
    let mut anonymous = h.ws(false).await;
    anonymous.close().await.expect("close");
    let (_, text) = h.admin_get("/metrics").await;
    assert_eq!(script_counter(&text, "account_lost_normal"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_new_keeps_the_first_session_until_it_ends() {
    let h = gateway("refuse-new", None).await;
    let mut first = h.logged_in_ws("bob").await;
    let mut second = h.ws(false).await;
    second.send(LOGIN, token("bob").as_bytes()).await.expect("send");
    expect_error_then_close(&mut second, "duplicate_login", Some(4003)).await;
    assert_eq!(push_to(&h, "bob", "still here").await, json!({"delivered": 1}));
    expect_push(&mut first, "still here").await;
    let (_, text) = h.admin_get("/metrics").await;
    assert_eq!(metric(&text, "wasmgate_logins_total{reason=\"duplicate_refused\"}"), 1.0);

    first.close().await.expect("close");
    wait_counter(&h, "account_lost_normal", 1.0).await;
    let mut third = h.logged_in_ws("bob").await;
    assert_eq!(push_to(&h, "bob", "third").await, json!({"delivered": 1}));
    expect_push(&mut third, "third").await;
}

/// What became of one racing login: whether its login was answered, and its close code if it
/// was closed within the quiet period.
struct Outcome {
    logged_in: bool,
    closed: Option<(Option<u16>, String)>,
}

/// Logs `user` in on a fresh WebSocket of `h`, then watches it until it closes or is quiet for
/// `quiet`.
async fn racing_login(h: &Harness, user: &str, quiet: Duration) -> (Client, Outcome) {
    let mut client = h.ws(false).await;
    client.send(LOGIN, token(user).as_bytes()).await.expect("send");
    let mut outcome = Outcome { logged_in: false, closed: None };
    let mut error = String::new();
    loop {
        match client.recv_within(quiet).await {
            Ok(Received::Closed { code, .. }) => {
                outcome.closed = Some((code, error));
                break;
            }
            Ok(received) => {
                let packet = received.packet().expect("a packet");
                match packet.msg_id {
                    LOGIN => outcome.logged_in = true,
                    4 => error = error_of(&packet.body).0,
                    _ => {}
                }
            }
            Err(_) => break,
        }
    }
    (client, outcome)
}

/// Eight logins of `user` at once, alternating between nodes `a` and `b`.
async fn race(a: &Harness, b: &Harness, user: &str, quiet: Duration) -> Vec<(Client, Outcome)> {
    let logins = (0..8).map(|i| racing_login(if i % 2 == 0 { a } else { b }, user, quiet));
    futures_util::future::join_all(logins).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_two_nodes_kick_older_closes_the_session_on_the_other_node_and_races_leave_one() {
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let (a, b) = tokio::join!(
        gateway("kick-older", Some((&redis, &etcd))),
        gateway("kick-older", Some((&redis, &etcd)))
    );
    let mut on_a = a.logged_in_ws("carol").await;
    let mut on_b = b.logged_in_ws("carol").await;
    expect_error_then_close(&mut on_a, "replaced", Some(4006)).await;
    let location: String = redis.query(redis::cmd("GET").arg("wasmgate:user:carol")).await;
    assert!(location.starts_with(&format!("{}:", b.gateway.node_id())), "{location}");
    push_to(&a, "carol", "via a").await;
    expect_push(&mut on_b, "via a").await;
    wait_counter(&a, "account_lost_replaced", 1.0).await;

    // Eight logins of one user at once, four per node: exactly one session stays.
    let outcomes = race(&a, &b, "dave", Duration::from_millis(1500)).await;
    let survivors: Vec<usize> = (0..8).filter(|&i| outcomes[i].1.closed.is_none()).collect();
    assert_eq!(survivors.len(), 1, "exactly one session stays");
    let survivor = survivors[0];
    assert!(outcomes[survivor].1.logged_in);
    for (i, (_, outcome)) in outcomes.iter().enumerate().filter(|&(i, _)| i != survivor) {
        let (code, error) = outcome.closed.clone().expect("closed");
        assert_eq!((code, error.as_str()), (Some(4006), "replaced"), "login {i}");
    }
    let mut outcomes = outcomes;
    let data = "to the one left";
    let answer = push_to(&a, "dave", data).await;
    assert!(answer["delivered"] == 1 || answer["relayed"] == true, "{answer}");
    expect_push(&mut outcomes[survivor].0, data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_two_nodes_refuse_new_admits_one_login_and_frees_the_user_on_close() {
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let (a, b) = tokio::join!(
        gateway("refuse-new", Some((&redis, &etcd))),
        gateway("refuse-new", Some((&redis, &etcd)))
    );
    wait_until("both nodes discover each other", || async {
        a.gateway.nodes().len() == 2 && b.gateway.nodes().len() == 2
    })
    .await;
    let mut on_a = a.logged_in_ws("erin").await;
    let mut on_b = b.ws(false).await;
    on_b.send(LOGIN, token("erin").as_bytes()).await.expect("send");
    expect_error_then_close(&mut on_b, "duplicate_login", Some(4003)).await;
    push_to(&b, "erin", "kept").await;
    expect_push(&mut on_a, "kept").await;

    // Her session ends; once its location is gone a login on b succeeds.
    on_a.close().await.expect("close");
    wait_until("erin's location is removed", || async {
        let location: Option<String> = redis.query(redis::cmd("GET").arg("wasmgate:user:erin")).await;
        location.is_none()
    })
    .await;
    let _on_b = b.logged_in_ws("erin").await;

    // Eight logins of one user at once, four per node: exactly one is admitted.
    let outcomes = race(&a, &b, "frank", Duration::from_millis(1000)).await;
    let admitted: Vec<usize> = (0..8).filter(|&i| outcomes[i].1.logged_in).collect();
    assert_eq!(admitted.len(), 1, "exactly one login admitted");
    for (i, (_, outcome)) in outcomes.iter().enumerate().filter(|&(i, _)| i != admitted[0]) {
        let (code, error) = outcome.closed.clone().expect("refused logins are closed");
        assert_eq!((code, error.as_str()), (Some(4003), "duplicate_login"), "login {i}");
    }
    assert!(outcomes[admitted[0]].1.closed.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_new_takes_over_a_location_left_by_a_node_that_is_gone() {
    let (redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
    let a = gateway("refuse-new", Some((&redis, &etcd))).await;
    // A location naming node 77, which is not registered (it crashed and its lease expired).
    let _: () =
        redis.query(redis::cmd("SET").arg("wasmgate:user:gina").arg("77:12345").arg("PX").arg(60_000)).await;
    wait_until("the node discovers itself", || async { a.gateway.nodes().len() == 1 }).await;
    let _gina = a.logged_in_ws("gina").await;
    let location: String = redis.query(redis::cmd("GET").arg("wasmgate:user:gina")).await;
    assert!(location.starts_with(&format!("{}:", a.gateway.node_id())), "{location}");
}

/// Two nodes with `policy`, ids and leases of 10 s (longer than the outage below: no fencing),
/// locations refreshed only every 200 s (so what happens is the reconnect's doing).
async fn partition_pair(policy: &str, redis: &RedisServer, etcd: &EtcdServer) -> (Harness, Harness) {
    let start = || {
        let policy = policy.to_string();
        let (redis, etcd) = (redis.url(), etcd.endpoint());
        Harness::start_with(move |c| {
            with_admin_token(c);
            c.scripts.auth.config.insert("duplicate_login".into(), toml::Value::String(policy));
            c.node.id = 1;
            c.cluster.redis_url = Some(redis);
            c.cluster.etcd_endpoints = vec![etcd];
            c.cluster.ttl_s = 10;
            c.cluster.location_ttl_s = 600;
        })
    };
    tokio::join!(start(), start())
}

/// Two sessions of one user admitted while Redis was down (each node then decides alone) are
/// reconciled when Redis is back: `kick-older` keeps the newer (the older closes with 4006),
/// `refuse-new` the older (the newer closes with 4004).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_admitted_during_a_redis_outage_are_reconciled_by_policy() {
    for (policy, older_closed) in [("kick-older", true), ("refuse-new", false)] {
        let (mut redis, etcd) = (RedisServer::start().await, EtcdServer::start().await);
        let (a, b) = partition_pair(policy, &redis, &etcd).await;
        wait_until("the nodes see each other", || async { a.gateway.nodes().len() == 2 }).await;
        redis.stop();
        // Each login waits 1 s for Redis, then goes ahead on what its node knows.
        let older = a.logged_in_ws("zoe").await;
        let newer = b.logged_in_ws("zoe").await;
        redis.restart().await;
        let (mut closed, mut kept) = if older_closed { (older, newer) } else { (newer, older) };
        let (code, close) = if older_closed { ("replaced", 4006) } else { ("kicked", 4004) };
        expect_error_then_close(&mut closed, code, Some(close)).await;
        // The other one lives on.
        let seq = kept.send(2, b"").await.expect("send a heartbeat");
        let (answer, _) = kept.recv_reply(2, seq, PROMPT).await.expect("the kept session answers");
        assert_eq!(answer.msg_id, 2, "{policy}");
    }
}

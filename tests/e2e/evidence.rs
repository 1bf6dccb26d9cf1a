//! Deploy with evidence (docs/evidence.md): shadow candidates on live traffic, promotion,
//! recordings and offline replays.

use serde_json::{Value, json};
use wasmgate::script::evidence::{Call, record, replay};
use wasmgate_tests::{
    ADMIN_TOKEN, Client, HOSTILE_ROUTER, Harness, PROMPT, error_of, metric, with_admin_token,
};

/// The hostile test router tagged `v0` (905 answers `v0:<body>`; ids 100-199 go to dest 101,
/// whose example backend echoes). The abuse limits are off (tested on their own).
async fn tagged_gateway() -> Harness {
    wasmgate_tests::tagged_router_gateway().await
}

fn hostile() -> Vec<u8> {
    std::fs::read(HOSTILE_ROUTER).expect("hostile router")
}

/// Sends `msg_id` with `body`; returns the answer's (msg id, body).
async fn ask(client: &mut Client, msg_id: u32, body: &str) -> (u32, Vec<u8>) {
    let seq = client.send(msg_id, body.as_bytes()).await.expect("send");
    let packet = client.recv_within(PROMPT).await.expect("an answer").packet().expect("a packet");
    assert_eq!(packet.seq, seq, "answers come in order");
    (packet.msg_id, packet.body.to_vec())
}

async fn shadow_report(h: &Harness) -> (u16, Value) {
    h.admin("GET", "/scripts/router/shadow", "", false, Some(ADMIN_TOKEN)).await
}

/// Waits until the shadow has compared every event it was offered.
async fn settled(h: &Harness, offered: u64) -> Value {
    wasmgate_tests::wait_until("the shadow compared every event", || async {
        let (_, report) = shadow_report(h).await;
        report["events"]["compared"].as_u64() == Some(offered)
    })
    .await;
    shadow_report(h).await.1
}

#[tokio::test]
async fn a_shadow_router_reports_exactly_the_differing_events_then_promotes_without_loss() {
    const ROUNDS: usize = 20;
    let h = tagged_gateway().await;
    let mut clients = vec![h.logged_in_ws("alice").await, h.logged_in_ws("bob").await];
    // The candidate differs only for message 905 (its tag).
    let (status, started) = h.deploy("router/shadow", &hostile(), Some(json!({"tag": "v1"}))).await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["events"]["offered"], 0);
    for client in &mut clients {
        for round in 0..ROUNDS {
            let body = format!("r{round}");
            assert_eq!(ask(client, 100, &body).await, (100, body.clone().into_bytes()), "echoed by dest 101");
            assert_eq!(
                ask(client, 905, &body).await,
                (905, format!("v0:{body}").into_bytes()),
                "live answers"
            );
            assert_eq!(ask(client, 107, &body).await, (107, body.clone().into_bytes()));
        }
    }
    let events = (clients.len() * ROUNDS * 3) as u64;
    let differing = (clients.len() * ROUNDS) as u64;
    let report = settled(&h, events).await;
    assert_eq!(report["events"]["same"], events - differing, "{report}");
    assert_eq!(report["events"]["different"], differing, "{report}");
    assert_eq!(report["events"]["dropped"], 0);
    assert_eq!(report["differences"]["content"], differing, "a different reply body: {report}");
    assert_eq!(report["differences"]["dest"], 0);
    let recent = report["recent"].as_array().expect("recent differences");
    assert_eq!(recent.len(), 50.min(differing as usize));
    let last = recent.last().expect("one");
    assert_eq!((last["function"].as_str(), last["kind"].as_str()), (Some("route"), Some("content")));
    assert_eq!(last["call"]["route"]["packet"]["msg_id"], 905, "{last}");
    assert!(last["live"].to_string().contains(&format!("v0:r{}", ROUNDS - 1)), "{last}");
    assert!(last["candidate"].to_string().contains(&format!("v1:r{}", ROUNDS - 1)), "{last}");
    let metrics = h.gateway.metrics().render();
    let kind = "wasmgate_shadow_differences_total{script=\"router\",kind=\"content\"}";
    assert_eq!(metric(&metrics, kind), differing as f64, "{metrics}");

    // Promote while both clients keep sending: every message is answered exactly once, 905
    // goes from v0 to v1 and never back.
    let load: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut tags = Vec::new();
                for i in 0..150 {
                    let (msg, body) = ask(&mut client, 905, &format!("p{i}")).await;
                    assert_eq!(msg, 905);
                    let text = String::from_utf8(body).expect("utf-8");
                    assert!(text.ends_with(&format!(":p{i}")), "{text}");
                    tags.push(text[1..2].parse::<u32>().expect("v0 or v1"));
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                (tags, client)
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (status, promoted) = h.admin("POST", "/scripts/router/promote", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{promoted}");
    let mut clients = Vec::new();
    for task in load {
        let (tags, mut client) = task.await.expect("load");
        assert_eq!(tags.len(), 150, "every message answered");
        assert!(tags.windows(2).all(|w| w[0] <= w[1]), "never back to v0: {tags:?}");
        assert_eq!(tags.last(), Some(&1), "v1 is live");
        assert_eq!(ask(&mut client, 905, "after").await.1, b"v1:after");
        clients.push(client);
    }
    assert_eq!(h.gateway.sessions(), 2, "no session dropped");
    let (status, gone) = shadow_report(&h).await;
    assert_eq!((status, gone["error"].as_str()), (404, Some("no_shadow")), "promote ends the shadow");
}

#[tokio::test]
async fn a_trapping_candidate_is_reported_and_never_reaches_clients() {
    let h = Harness::start_with(with_admin_token).await;
    let mut client = h.logged_in_ws("alice").await;
    // Live: the default router (900 is not in message_map). Candidate: 900 traps.
    let (status, started) = h.deploy("router/shadow", &hostile(), None).await;
    assert_eq!(status, 200, "{started}");
    for i in 0..5 {
        let (msg, body) = ask(&mut client, 900, "boom").await;
        assert_eq!((msg, error_of(&body).0.as_str()), (4, "unknown_message"), "the live answer");
        assert_eq!(ask(&mut client, 100, &format!("m{i}")).await.1, format!("m{i}").into_bytes());
    }
    let report = settled(&h, 10).await;
    assert_eq!(report["differences"]["candidate_failed"], 5, "{report}");
    assert_eq!(report["events"]["same"], 5, "{report}");
    assert!(report["recent"][0]["candidate"].to_string().contains("trap"), "{report}");
    assert_eq!(h.gateway.sessions(), 1);
    let (status, last) = h.admin("DELETE", "/scripts/router/shadow", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, &last["events"]["compared"]), (200, &json!(10)), "{last}");
    assert_eq!(shadow_report(&h).await.0, 404);
    let (status, _) = h.admin("POST", "/scripts/router/promote", "", false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "nothing to promote");
    // A candidate the pipeline refuses is refused like a deploy.
    let (status, refused) = h.deploy("router/shadow", b"not wasm", None).await;
    assert_eq!((status, refused["error"].as_str()), (422, Some("rejected")), "{refused}");
}

/// `POST /scripts/{name}/record` while `clients` send `ids` in turn until it answers.
async fn record_while_sending(
    h: &Harness,
    name: &str,
    query: &str,
    clients: &mut [Client],
    ids: &[u32],
) -> String {
    let to = wasmgate::http_client::Endpoint::plain(h.gateway.admin_addr().expect("admin"));
    let path = format!("/scripts/{name}/record?{query}");
    let request = tokio::spawn(async move {
        wasmgate::http_client::request(&to, Some(ADMIN_TOKEN), "POST", &path, vec![]).await.expect("record")
    });
    let mut sent = 0usize;
    while !request.is_finished() {
        assert!(sent < 5000, "the recording ended by its bound");
        let client = &mut clients[sent % clients.len()];
        ask(client, ids[sent % ids.len()], &format!("e{sent}")).await;
        sent += 1;
    }
    let (status, text) = request.await.expect("record task");
    assert_eq!(status, 200, "{text}");
    text
}

#[tokio::test]
async fn a_recording_replays_identically_and_counts_a_changed_router_exactly() {
    let h = tagged_gateway().await;
    let mut bob = h.tcp().await;
    bob.login(h.config.routes.login, &wasmgate_tests::token("bob")).await.expect("login");
    let mut clients = vec![h.logged_in_ws("alice").await, bob];
    let text =
        record_while_sending(&h, "router", "seconds=60&max_events=1000", &mut clients, &[100, 905, 107])
            .await;
    let (header, entries) = record::parse(&text).expect("a recording");
    assert_eq!((header.events, header.ended_by.as_str(), header.world.as_str()), (1000, "events", "router"));
    assert_eq!(entries.len(), 1000);
    assert!(header.message_map.as_ref().is_some_and(|m| !m.is_empty()), "the map is recorded");
    let tagged = entries
        .iter()
        .filter(|e| matches!(&e.call, Call::Route { packet, .. } if packet.msg_id == 905))
        .count() as u64;
    assert!(tagged > 100, "{tagged}");

    let limits = wasmgate::script::check::offline_limits(&wasmgate::Config::default());
    let same = replay::replay(&text, hostile(), None, limits.clone()).await.expect("replay");
    assert_eq!((same.events, same.different), (1000, 0), "{same}");
    let again = replay::replay(&text, hostile(), None, limits.clone()).await.expect("replay");
    assert_eq!((again.same, &again.differences, &again.listed), (same.same, &same.differences, &same.listed));
    let changed = replay::replay(&text, hostile(), Some(r#"{"tag":"v9"}"#.into()), limits.clone())
        .await
        .expect("replay");
    assert_eq!(changed.different, tagged, "{changed}");
    assert_eq!(changed.differences["content"], tagged);
    assert_eq!(changed.listed[0]["function"], "route");
    // Twice the same on the changed candidate as well.
    let changed_again =
        replay::replay(&text, hostile(), Some(r#"{"tag":"v9"}"#.into()), limits).await.expect("replay");
    assert_eq!(changed_again.listed, changed.listed);
    // One recording at a time per script.
    let (status, busy) = {
        let pending = record_while_sending(&h, "router", "seconds=1", &mut clients[..1], &[100]);
        let busy = async {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            h.admin("POST", "/scripts/router/record?seconds=1", "", false, Some(ADMIN_TOKEN)).await
        };
        let (_, busy) = tokio::join!(pending, busy);
        busy
    };
    assert_eq!((status, busy["error"].as_str()), (409, Some("recording")), "{busy}");

    // A client that goes away ends its recording: the next one is not refused.
    let to = wasmgate::http_client::Endpoint::plain(h.gateway.admin_addr().expect("admin"));
    let abandoned = wasmgate::http_client::request(
        &to,
        Some(ADMIN_TOKEN),
        "POST",
        "/scripts/router/record?seconds=60",
        vec![],
    );
    assert!(tokio::time::timeout(std::time::Duration::from_millis(300), abandoned).await.is_err());
    wasmgate_tests::wait_until("the abandoned recording is dropped", || async {
        h.admin("POST", "/scripts/router/record?seconds=1", "", false, Some(ADMIN_TOKEN)).await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn logins_are_recorded_and_replayed_against_another_auth_version() {
    let h = Harness::start_with(with_admin_token).await;
    let to = wasmgate::http_client::Endpoint::plain(h.gateway.admin_addr().expect("admin"));
    let request = wasmgate::http_client::request(
        &to,
        Some(ADMIN_TOKEN),
        "POST",
        "/scripts/auth/record?max_events=5&seconds=60",
        vec![],
    );
    let logins = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut clients = Vec::new();
        for i in 0..5 {
            clients.push(h.logged_in_ws(&format!("user-{i}")).await);
        }
        clients
    };
    let (answer, _clients) = tokio::join!(request, logins);
    let (status, text) = answer.expect("record");
    assert_eq!(status, 200, "{text}");
    let (header, entries) = record::parse(&text).expect("a recording");
    assert_eq!((header.world.as_str(), entries.len()), ("auth", 5));
    assert!(matches!(&entries[0].call, Call::Authenticate { .. }));
    let limits = wasmgate::script::check::offline_limits(&wasmgate::Config::default());
    let auth = wasmgate::embedded::DEFAULT_AUTH.to_vec();
    let same = replay::replay(&text, auth.clone(), None, limits.clone()).await.expect("replay");
    assert_eq!((same.events, same.different), (5, 0), "{same}");
    // Another secret: every login is refused by the candidate.
    let rotated = Some(r#"{"secret":"rotated"}"#.to_string());
    let changed = replay::replay(&text, auth, rotated, limits).await.expect("replay");
    assert_eq!((changed.different, changed.differences["kind"]), (5, 5), "{changed}");
    assert!(
        changed.listed[0]["call"]["authenticate"]["token"].as_str().is_some_and(|t| t.ends_with("bytes>"))
    );
}

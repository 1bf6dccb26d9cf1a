//! The push API: `POST /push/{session,user,room,all}` (docs/api.md).
//!
//! JSON bodies: `{"session_id" | "user_id" | "room": .., "msg_id": u32, "data": <any>}`
//! (`data_b64` instead of `data` for bytes; `msg_id` defaults to `routes.push`;
//! `exclude_session` for rooms). go-push's form bodies also work: `/push/room` with
//! `room=..&msg=<json>` and `/push/all` with `msg=<json>`.
//!
//! In a cluster with Redis a push reaches other nodes over the bus (docs/cluster.md): a
//! session of another node (its id names the node; answered 202), the node of a user's latest
//! session, and every node for rooms and push-to-all. Remote delivery is not confirmed.

use base64::Engine as _;
use bytes::Bytes;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::AdminCtx;
use super::{HttpResponse, error, json};
use crate::cluster::Cluster;
use crate::delivery::{Delivery, FannedOut, Reached, Scope};
use crate::metrics::TargetLabel;
use crate::protocol::client::data_body;

/// A session id as a JSON number or string (ids above 2^53 do not survive JavaScript numbers,
/// so the login answer gives them as strings).
#[derive(Deserialize)]
#[serde(untagged)]
enum SessionId {
    Number(u64),
    Text(String),
}

impl SessionId {
    fn value(&self) -> Option<u64> {
        match self {
            Self::Number(n) => Some(*n),
            Self::Text(s) => s.parse().ok(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest<'a> {
    session_id: Option<SessionId>,
    user_id: Option<String>,
    room: Option<String>,
    exclude_session: Option<SessionId>,
    msg_id: Option<u32>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    data_b64: Option<String>,
}

/// What to send, parsed from either body form.
struct Push {
    session_id: Option<u64>,
    user_id: Option<String>,
    room: Option<String>,
    exclude: Option<u64>,
    msg_id: u32,
    body: Bytes,
}

fn parse_json(ctx: &AdminCtx, body: &[u8]) -> Result<Push, String> {
    let request: PushRequest<'_> = serde_json::from_slice(body).map_err(|e| format!("JSON body: {e}"))?;
    let body = match (request.data, &request.data_b64) {
        (Some(_), Some(_)) => return Err("give `data` or `data_b64`, not both".into()),
        (_, Some(b64)) => Bytes::from(
            base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("data_b64: {e}"))?,
        ),
        (data, None) => data_body(data).map_err(|e| format!("data: {e}"))?,
    };
    let id = |field: &Option<SessionId>, name: &str| match field {
        None => Ok(None),
        Some(id) => id.value().map(Some).ok_or(format!("{name} is not a session id")),
    };
    Ok(Push {
        session_id: id(&request.session_id, "session_id")?,
        exclude: id(&request.exclude_session, "exclude_session")?,
        user_id: request.user_id,
        room: request.room,
        msg_id: request.msg_id.unwrap_or(ctx.config.routes.push),
        body,
    })
}

/// go-push's form: `room`, `msg` (the pushed JSON, sent as is), optional `msg_id`.
fn parse_form(ctx: &AdminCtx, body: &[u8]) -> Result<Push, String> {
    let mut push = Push {
        session_id: None,
        user_id: None,
        room: None,
        exclude: None,
        msg_id: ctx.config.routes.push,
        body: Bytes::new(),
    };
    for (key, value) in form_urlencoded::parse(body) {
        match &*key {
            "room" => push.room = Some(value.into_owned()),
            "msg" => push.body = Bytes::from(value.into_owned()),
            "user_id" => push.user_id = Some(value.into_owned()),
            "session_id" => push.session_id = Some(value.parse().map_err(|_| "session_id is not a number")?),
            "msg_id" => push.msg_id = value.parse().map_err(|_| "msg_id is not a u32")?,
            other => return Err(format!("unknown form field `{other}`")),
        }
    }
    Ok(push)
}

/// The other nodes' half of a push to `user`, `delivered` to sessions here already: the
/// user's location in Redis names the node of their latest session; the push goes there over
/// the bus unless that is this node or the location names an earlier incarnation of a node
/// id. The answer (docs/api.md):
/// `delivered`, `location` (`{"node", "session"}` or `null`), `node_live` (`null` without
/// etcd), `relayed`, and `location_error` when Redis did not answer within 1 s (then nothing is
/// relayed).
async fn push_user_remote(
    cluster: &Cluster,
    delivery: &Delivery,
    user: &str,
    (msg_id, body): (u32, Bytes),
    delivered: u32,
) -> serde_json::Value {
    let location = match cluster.locate(user).await {
        Ok(location) => location,
        Err(e) => {
            return serde_json::json!({
                "delivered": delivered, "location": null, "relayed": false, "location_error": format!("{e:#}"),
            });
        }
    };
    let Some(location) = location else {
        return serde_json::json!({ "delivered": delivered, "location": null, "relayed": false });
    };
    let here = location.node == cluster.node_id;
    let live = cluster.node_live(location.node, location.incarnation);
    // Not to a node registered under another incarnation: the session there is gone. A node
    // missing from discovery may just not be seen yet: the push goes, the answer says so.
    let earlier_incarnation = live == Some(false) && cluster.nodes.has(location.node);
    let relayed = !(here || earlier_incarnation) && delivery.to_user_on(location.node, user, msg_id, body);
    serde_json::json!({
        "delivered": delivered,
        "location": { "node": location.node, "session": location.session.to_string() },
        "node_live": live,
        "relayed": relayed,
    })
}

/// Handles `POST /push/<target>`.
pub(super) async fn handle(ctx: &AdminCtx, target: &str, form: bool, body: &[u8]) -> HttpResponse {
    let push = match if form { parse_form(ctx, body) } else { parse_json(ctx, body) } {
        Ok(push) => push,
        Err(reason) => return error(StatusCode::BAD_REQUEST, "bad_request", reason),
    };
    if push.body.len() > ctx.config.limits.max_msg_len {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the pushed body is over limits.max_msg_len ({} bytes)", ctx.config.limits.max_msg_len),
        );
    }
    let missing =
        |field: &str| error(StatusCode::BAD_REQUEST, "bad_request", format!("`{field}` is required"));
    let counted = |target: &'static str| ctx.metrics.pushes.get_or_create(&TargetLabel { target }).inc();
    let delivery = &ctx.delivery;
    match target {
        "session" => {
            let Some(id) = push.session_id else { return missing("session_id") };
            counted("session");
            match delivery.to_session(id, (push.msg_id, 0), push.body, Scope::Cluster) {
                Reached::Here => json(StatusCode::OK, serde_json::json!({ "delivered": 1 })),
                Reached::Closing => {
                    error(StatusCode::CONFLICT, "session_closing", format!("session {id} is closing"))
                }
                // Another node's session: handed to the bus (at most once, not confirmed); the
                // answer says whether its node is in discovery (a node just started may not be
                // seen yet, so the push goes anyway).
                Reached::Relayed { node } => {
                    let live = ctx.cluster.as_ref().and_then(|c| c.node_live(node, 0));
                    json(
                        StatusCode::ACCEPTED,
                        serde_json::json!({ "relayed_to_node": node, "node_live": live }),
                    )
                }
                Reached::Nowhere => {
                    error(StatusCode::NOT_FOUND, "not_found", format!("no session {id} on this node"))
                }
            }
        }
        "user" => {
            let Some(user) = push.user_id else { return missing("user_id") };
            counted("user");
            // The other nodes' half needs the user's location for the answer, so it is sent
            // here rather than through the bus's own lookup.
            let delivered = delivery.to_user_here(&user, push.msg_id, push.body.clone());
            if let Some(cluster) = ctx.cluster.as_ref().filter(|_| delivery.remote().is_some()) {
                return json(
                    StatusCode::OK,
                    push_user_remote(cluster, delivery, &user, (push.msg_id, push.body), delivered).await,
                );
            }
            if delivered == 0 && ctx.registry.of_user(&user).is_empty() {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("user `{user}` has no session on this node"),
                );
            }
            json(StatusCode::OK, serde_json::json!({ "delivered": delivered }))
        }
        "room" => {
            let Some(room) = push.room else { return missing("room") };
            counted("room");
            match delivery.to_room(&room, push.exclude, push.msg_id, push.body, Scope::Cluster).await {
                FannedOut { here: Some(members), relayed: false } => {
                    json(StatusCode::OK, serde_json::json!({ "room": room, "members": members }))
                }
                FannedOut { here: Some(members), relayed: true } => json(
                    StatusCode::OK,
                    serde_json::json!({ "room": room, "members": members, "relayed": true }),
                ),
                // Members may be on other nodes: the push went to them.
                FannedOut { here: None, relayed: true } => {
                    json(StatusCode::OK, serde_json::json!({ "room": room, "members": 0, "relayed": true }))
                }
                FannedOut { here: None, relayed: false } => {
                    error(StatusCode::NOT_FOUND, "not_found", format!("no room `{room}` on this node"))
                }
            }
        }
        "all" => {
            counted("all");
            let sessions = delivery.to_all(push.msg_id, push.body, Scope::Cluster).await.here.unwrap_or(0);
            json(StatusCode::OK, serde_json::json!({ "sessions": sessions }))
        }
        other => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no push target `{other}`: use session, user, room or all"),
        ),
    }
}

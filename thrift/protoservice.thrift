// Seed 001's RPC ("FkServer"): what a Thrift dest of wasmgate serves (docs/protocol.md,
// "Thrift upstreams"). The gateway calls `call` (or the dest's `thrift.method`) once per
// client message routed to the dest; the service name is not on the wire, so any name works.

namespace go protoservice
namespace py protoservice
namespace rs protoservice

struct ProtoRequest {
  // The client message's id (the u32 msg id, as the same 32 bits).
  1: i32 type,
  // The message body, untouched.
  2: binary content,
  // The session id, or the user id (`thrift.shardingId`).
  3: i64 sharding_id,
}

struct ProtoReply {
  // 0: deliver `content` to the session as message `type`; anything else: the client gets an
  // `upstream_error` frame carrying this value.
  1: i64 result,
  2: i32 type,
  3: binary content,
}

service ProtoService {
  ProtoReply call(1: ProtoRequest request),
}

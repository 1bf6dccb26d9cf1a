// wasmgate router template (C, wit-bindgen + wasi-libc).
//
// Forwards each message id of `message_map` to its dest, answers message 150 itself
// (`router:c:<body>`), and rejects any other id with `unknown_message`. Config keys:
// `default_dest` (optional integer): where unmapped ids go instead.
//
// Bindings: build/router/router_script.h (generated from wit/world.wit by `wit-bindgen c`).
// Ownership, as wit-bindgen's C generator defines it: the arguments of an exported function
// belong to it (free them with the `*_free` helpers), and what it returns is freed by the
// generated post-return code, so return memory from malloc (e.g. `router_script_string_dup`).

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "router_script.h"

typedef exports_wasmgate_gateway_router_message_route_t route_t;

#define REPLY_MSG_ID 150
static const char REPLY_PREFIX[] = "router:c:";

// The message map, sorted by msg_id for bsearch.
static route_t *routes = NULL;
static size_t route_count = 0;
static int64_t default_dest = -1; // -1: none

static int by_msg_id(const void *a, const void *b) {
    uint32_t x = ((const route_t *)a)->msg_id, y = ((const route_t *)b)->msg_id;
    return (x > y) - (x < y);
}

// Reads `default_dest` from the JSON config: a deliberately small scan (finds the key, reads
// the integer after its colon) so the template needs no JSON library; use one (cJSON, say)
// for configs with more than flat integers. Returns false on a malformed value.
static bool read_default_dest(const router_script_string_t *config, int64_t *out) {
    *out = -1;
    char *text = malloc(config->len + 1);
    if (text == NULL) return false;
    memcpy(text, config->ptr, config->len);
    text[config->len] = '\0';
    bool ok = true;
    const char *key = strstr(text, "\"default_dest\"");
    if (key != NULL) {
        const char *p = strchr(key + strlen("\"default_dest\""), ':');
        char *end = NULL;
        long long value = p ? strtoll(p + 1, &end, 10) : -1;
        ok = p != NULL && end != p + 1 && value >= 0 && value <= UINT32_MAX;
        if (ok) *out = value;
    }
    free(text);
    return ok;
}

bool exports_wasmgate_gateway_router_init(router_script_string_t *config,
                                          exports_wasmgate_gateway_router_list_message_route_t *message_map,
                                          router_script_string_t *err) {
    int64_t dest;
    bool ok = read_default_dest(config, &dest);
    router_script_string_free(config);
    if (!ok) {
        exports_wasmgate_gateway_router_list_message_route_free(message_map);
        router_script_string_dup(err, "config: default_dest must be a dest id (an integer)");
        return false;
    }
    // Keep the map's array (it is ours now), sorted for lookups.
    free(routes);
    routes = message_map->ptr;
    route_count = message_map->len;
    qsort(routes, route_count, sizeof(route_t), by_msg_id);
    default_dest = dest;
    return true;
}

void exports_wasmgate_gateway_router_route(exports_wasmgate_gateway_router_session_t *session,
                                           exports_wasmgate_gateway_router_packet_t *packet,
                                           exports_wasmgate_gateway_router_decision_t *ret) {
    exports_wasmgate_gateway_router_session_free(session);
    if (packet->msg_id == REPLY_MSG_ID) {
        size_t prefix = sizeof(REPLY_PREFIX) - 1, len = prefix + packet->body.len;
        uint8_t *body = malloc(len);
        if (body == NULL) abort(); // out of memory: trap, the host answers script_error
        memcpy(body, REPLY_PREFIX, prefix);
        memcpy(body + prefix, packet->body.ptr, packet->body.len);
        ret->tag = EXPORTS_WASMGATE_GATEWAY_ROUTER_DECISION_REPLY;
        ret->val.reply.msg_id = packet->msg_id;
        ret->val.reply.body.ptr = body;
        ret->val.reply.body.len = len;
        exports_wasmgate_gateway_router_packet_free(packet);
        return;
    }
    route_t key = {.msg_id = packet->msg_id};
    const route_t *found = bsearch(&key, routes, route_count, sizeof(route_t), by_msg_id);
    exports_wasmgate_gateway_router_packet_free(packet);
    if (found != NULL || default_dest >= 0) {
        ret->tag = EXPORTS_WASMGATE_GATEWAY_ROUTER_DECISION_FORWARD;
        ret->val.forward = found ? found->dest_id : (uint32_t)default_dest;
    } else {
        ret->tag = EXPORTS_WASMGATE_GATEWAY_ROUTER_DECISION_REJECT;
        ret->val.reject.tag = EXPORTS_WASMGATE_GATEWAY_ROUTER_ROUTE_ERROR_UNKNOWN_MESSAGE;
    }
}

// wasmgate handler template (C, wit-bindgen + wasi-libc): a stateful counter.
//
// Answers each packet with `c:<count>:<body>`, where count is how many packets this handler
// has handled, across swaps: `snapshot` gives the count as decimal ASCII and `restore` reads
// it back, the same format as the other languages' templates, so the state survives a swap
// from one language to another. Mark it `stateful = true` in the manifest.
//
// Bindings: build/handler/handler_script.h (`wit-bindgen c`); ownership as in router.c.

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handler_script.h"

static uint64_t count = 0;

bool exports_wasmgate_gateway_handler_init(handler_script_string_t *config, handler_script_string_t *err) {
    (void)err;
    handler_script_string_free(config);
    return true;
}

void exports_wasmgate_gateway_handler_handle(exports_wasmgate_gateway_handler_session_t *session,
                                             exports_wasmgate_gateway_handler_packet_t *packet,
                                             exports_wasmgate_gateway_handler_outcome_t *ret) {
    exports_wasmgate_gateway_handler_session_free(session);
    count++;
    char prefix[32];
    int prefix_len = snprintf(prefix, sizeof prefix, "c:%" PRIu64 ":", count);
    size_t len = (size_t)prefix_len + packet->body.len;
    uint8_t *body = malloc(len);
    if (body == NULL) abort(); // out of memory: trap, the host answers script_error
    memcpy(body, prefix, (size_t)prefix_len);
    memcpy(body + prefix_len, packet->body.ptr, packet->body.len);
    ret->tag = EXPORTS_WASMGATE_GATEWAY_HANDLER_OUTCOME_REPLY;
    ret->val.reply.msg_id = packet->msg_id;
    ret->val.reply.body.ptr = body;
    ret->val.reply.body.len = len;
    exports_wasmgate_gateway_handler_packet_free(packet);
}

bool exports_wasmgate_gateway_handler_snapshot(handler_script_list_u8_t *ret, handler_script_string_t *err) {
    (void)err;
    char text[24];
    int len = snprintf(text, sizeof text, "%" PRIu64, count);
    ret->ptr = malloc((size_t)len);
    if (ret->ptr == NULL) abort();
    memcpy(ret->ptr, text, (size_t)len);
    ret->len = (size_t)len;
    return true;
}

bool exports_wasmgate_gateway_handler_restore(handler_script_list_u8_t *state, handler_script_string_t *err) {
    char text[24];
    bool ok = state->len < sizeof text;
    uint64_t value = 0;
    if (ok && state->len > 0) {
        memcpy(text, state->ptr, state->len);
        text[state->len] = '\0';
        char *end = NULL;
        errno = 0;
        value = strtoull(text, &end, 10);
        ok = errno == 0 && *end == '\0' && text[0] >= '0' && text[0] <= '9';
    }
    handler_script_list_u8_free(state);
    if (!ok) {
        handler_script_string_dup(err, "state is not a decimal count");
        return false;
    }
    count = value;
    return true;
}

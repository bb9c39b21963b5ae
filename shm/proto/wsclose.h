/*
 * The WebSocket close codes tether sends (the contract's list, RFC 6455
 * section 7.4 plus the two private ones), named once: the worker closes with
 * them, and the janitor and the workers ask each other for them over the
 * control channel (TH_HO_CLOSE's code).
 */
#ifndef TETHER_SHM_PROTO_WSCLOSE_H
#define TETHER_SHM_PROTO_WSCLOSE_H

enum th_ws_close_code {
    TH_WS_NORMAL = 1000,
    TH_WS_GOING_AWAY = 1001, /* shutting down (drain) */
    TH_WS_PROTOCOL_ERROR = 1002,
    TH_WS_NO_STATUS = 1005, /* never sent on the wire: a close frame without a code */
    TH_WS_INVALID_UTF8 = 1007,
    TH_WS_POLICY = 1008, /* token expired */
    TH_WS_TOO_BIG = 1009,
    TH_WS_INTERNAL = 1011,
    TH_WS_STALE = 4000,    /* evicted as stale by the janitor */
    TH_WS_REPLACED = 4001, /* replaced by a newer device connection of the same user */
};

#endif
